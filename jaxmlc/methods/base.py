"""The method interface and the name -> method registry.

A method is a frozen dataclass of pure functions built from the config and
the training split's label statistics (`DatasetInfo`). The trainer
(`jaxmlc/train.py`) runs any method; a method file reads top to bottom as
its paper's method section.

Variables are a flat dict of collections, as Flax uses them:
  {"params": ..., "batch_stats": ..., "state": ...}
`params` are trained by the optimizer; every other collection is carried
as-is and replaced by the `new_state` that `loss_fn` returns (batch_stats,
HST prototypes and thresholds in use, DMACN phase, ...).

Batches are dicts of numpy/jax arrays:
  {"labeled":   {"image": f32 [B, H, W, 3] (normalised) | "features": f32 [B, D]
                 | "frames": f32 [B, T, D], optional "modality2": f32 [B, D2],
                 "labels": f32 [B, C] in {0, 1},
                 "label_mask": f32 [B, C] in {0, 1} (1 = known),
                 "index": i32 [B] (position in the split)},
   "unlabeled": {"image": ..., "index": ...}}       (only when the method asks)
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping, Sequence

import optax

Variables = Mapping[str, Any]
Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Phase:
  """A training stage with its own optimizer and loss switches (DMACN)."""
  name: str
  epochs: int
  optimizer: optax.GradientTransformation
  switches: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Method:
  """What the trainer needs from a method.

  init(rng, batch) -> variables
  loss_fn(variables, batch, rng, step) -> (loss scalar, aux {name: scalar},
      new_state {collection: tree} for every non-"params" collection)
  predict_fn(variables, examples) -> scores f32 [B, C] in [0, 1];
      `examples` is one stream's dict (batch["labeled"]).
  optimizer: optax transformation over params (frozen parts get
      `optax.set_to_zero` through `optax.multi_transform`).
  epoch_hooks: host functions run after each epoch,
      hook(variables, epoch, env) -> variables, where `env` is a
      `train.HookEnv` (jitted passes over the whole train split).
  phases: optional ordered stages; when given they replace `optimizer` and
      `config.train.epochs` (the trainer runs them in order and records
      the current phase in checkpoints).
  uses_unlabeled: whether the pipeline must zip an unlabeled stream in.
  """
  name: str
  init: Callable[..., Any]
  loss_fn: Callable[..., Any]
  predict_fn: Callable[..., Any]
  optimizer: optax.GradientTransformation
  epoch_hooks: Sequence[Callable[..., Any]] = ()
  phases: Sequence[Phase] = ()
  uses_unlabeled: bool = False


# name -> builder(config, dataset_info) -> Method. Filled by `register`.
_REGISTRY: dict[str, Callable[..., Method]] = {}


def register(name: str):
  def wrap(builder):
    _REGISTRY[name] = builder
    return builder
  return wrap


def check_name(name: str) -> None:
  """A clear error, with the closest known name, for an unknown method."""
  import jaxmlc.methods  # noqa: F401  (registers every method module)
  if name not in _REGISTRY:
    known = sorted(n for n in _REGISTRY if not n.startswith("_"))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"config.method={name!r} is not a known method.{hint} "
        f"Known methods: {', '.join(known)}.")


def build(config, dataset_info) -> Method:
  """Builds `config.method` for a dataset; a clear error for unknown names."""
  check_name(config.method)
  return _REGISTRY[config.method](config, dataset_info)


def available() -> list[str]:
  import jaxmlc.methods  # noqa: F401
  return sorted(_REGISTRY)


def section_config(config, section: str, defaults: Mapping[str, Any]):
  """`config.<section>` over `defaults` as a ConfigDict; an unknown key is an
  error naming the closest known one (a typo must not silently train the
  default)."""
  import ml_collections
  given = dict(config.get(section, None) or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    def hint(key):
      close = difflib.get_close_matches(key, list(defaults), 1)
      return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
    raise ValueError(f"config.{section} has unknown key(s) "
                     f"{', '.join(map(hint, unknown))}. Known keys: "
                     f"{', '.join(sorted(defaults))}.")
  return ml_collections.ConfigDict({**defaults, **given})
