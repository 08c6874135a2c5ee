"""Optimizers from `config.optim`, shared by every method.

`make_optimizer` builds what torch users expect from the papers' recipes:
Adam/SGD with *coupled* weight decay (`wd * param` added to the gradient
before the moment estimates, as `torch.optim.Adam(weight_decay=...)` does),
AdamW with decoupled decay, a step/cosine/constant learning-rate schedule in
steps, optional warmup and global-norm clipping, frozen parameter groups
(zero updates, no decay) and per-group learning-rate multipliers.

Parameter paths are tuples of strings, e.g. ("backbone", "layer4", "conv1",
"kernel"). `config.model.frozen_stages` freezes every parameter under
("backbone", stage).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Path = tuple[str, ...]

FROZEN = "frozen"
DEFAULT = "default"


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_path(key_path) -> Path:
  """A `jax.tree_util` key path -> tuple of strings."""
  return tuple(_key_name(k) for k in key_path)


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """step -> learning rate, from `config.optim` (and `config.train` for cosine).

  "constant": lr. "step": lr * decay_factor ** floor(step / (decay_every_epochs
  * steps_per_epoch)) (torch StepLR stepped once per epoch). "cosine": cosine
  decay to 0 over the run after warmup. Warmup (all kinds) multiplies by a
  linear ramp (step + 1) / warmup_steps over the first warmup_steps steps.
  """
  optim = config.optim
  lr = float(optim.lr)
  steps_per_epoch = max(1, int(steps_per_epoch))
  warmup = int(optim.get("warmup_steps", 0))
  kind = optim.get("schedule", "constant")
  if kind == "constant":
    base = lambda step: jnp.full((), lr, jnp.float32)
  elif kind == "step":
    period = max(1, int(optim.decay_every_epochs) * steps_per_epoch)
    factor = float(optim.get("decay_factor", 0.1))
    base = lambda step: lr * factor ** jnp.floor_divide(step, period).astype(
        jnp.float32)
  elif kind == "cosine":
    train = config.train
    total = int(train.steps) if int(train.get("steps", 0)) > 0 else (
        int(train.epochs) * steps_per_epoch)
    span = max(1, total - warmup)
    def base(step):
      progress = jnp.clip((step - warmup) / span, 0.0, 1.0)
      return lr * 0.5 * (1.0 + jnp.cos(math.pi * progress))
  else:
    raise ValueError(f"config.optim.schedule={kind!r} is not one of "
                     "'constant', 'step', 'cosine'.")
  if warmup <= 0:
    return base
  return lambda step: base(step) * jnp.minimum(1.0, (step + 1) / warmup)


def _base_transform(config) -> optax.GradientTransformation:
  """The update direction before the learning rate (no sign flip yet)."""
  optim = config.optim
  name = optim.get("name", "adam")
  wd = float(optim.get("weight_decay", 0.0))
  decay = [optax.add_decayed_weights(wd)] if wd > 0 else []
  if name == "adam":     # torch Adam: coupled decay enters the moments
    return optax.chain(*decay, optax.scale_by_adam())
  if name == "adamw":    # decoupled: decay added after the Adam direction
    return optax.chain(optax.scale_by_adam(), *decay)
  if name == "sgd":      # torch SGD: momentum buffer of (grad + wd * param)
    momentum = float(optim.get("momentum", 0.0))
    trace = [optax.trace(decay=momentum)] if momentum > 0 else []
    return optax.chain(*decay, *trace) if decay or trace else optax.identity()
  raise ValueError(f"config.optim.name={name!r} is not one of "
                   "'adam', 'adamw', 'sgd'.")


def make_optimizer(
    config,
    steps_per_epoch: int,
    extra_frozen: Callable[[Path], bool] | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
  """The optimizer a run uses, from `config.optim` and `config.model`.

  Args:
    config: run config (`optim.*`, `model.frozen_stages`, `train.*`).
    steps_per_epoch: optimizer steps per epoch (schedules are in epochs).
    extra_frozen: path -> True for further parameters to freeze.
    lr_multipliers: top-level parameter name -> learning-rate factor
      (per-group learning rates; a factor of 0 freezes the group).

  Frozen parameters get exactly zero updates and no weight decay, and are
  left out of the global-norm clip.
  """
  frozen_stages = tuple(config.model.get("frozen_stages", ()))
  multipliers = dict(lr_multipliers or {})
  schedule = learning_rate_schedule(config, steps_per_epoch)

  def label(key_path, _):
    path = param_path(key_path)
    if len(path) >= 2 and path[0] == "backbone" and path[1] in frozen_stages:
      return FROZEN
    if extra_frozen is not None and extra_frozen(path):
      return FROZEN
    if path and path[0] in multipliers:
      return FROZEN if multipliers[path[0]] == 0 else f"lr:{path[0]}"
    return DEFAULT

  def labels(params):
    return jax.tree_util.tree_map_with_path(label, params)

  def group(factor: float) -> optax.GradientTransformation:
    return optax.chain(
        _base_transform(config),
        optax.scale_by_learning_rate(lambda step: schedule(step) * factor))

  groups: dict[str, optax.GradientTransformation] = {
      FROZEN: optax.set_to_zero(), DEFAULT: group(1.0)}
  for name, factor in multipliers.items():
    if factor != 0:
      groups[f"lr:{name}"] = group(float(factor))

  parts = []
  clip = float(config.optim.get("grad_clip", 0.0))
  if clip > 0:
    # Zero frozen gradients first so they do not count in the global norm.
    parts.append(optax.multi_transform(
        {FROZEN: optax.set_to_zero(), DEFAULT: optax.identity(),
         **{k: optax.identity() for k in groups if k.startswith("lr:")}},
        labels))
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.multi_transform(groups, labels))
  return optax.chain(*parts)
