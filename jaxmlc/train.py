"""The trainer: one loop for every method.

A device mesh with one "data" axis spans every device of every process.
Parameters are replicated and the batch is sharded on its leading axis;
`jax.jit` with explicit shardings and a donated state is today's form of
pmap and runs unchanged on a multi-host pod. The step is a pure function of
(state, batch); its randomness is `fold_in(rng, step)` and the data at step k
is a function of (seed, k), so a resumed run replays an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmlc import checkpoint as ckpt_lib
from jaxmlc import evaluate as eval_lib
from jaxmlc import logging as log_lib
from jaxmlc.data import info as data_info
from jaxmlc.data import partial, pipeline
from jaxmlc.methods import base

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------
# Devices, sharding, batches.

def initialize_distributed(config) -> None:
  """Joins the other processes of a multi-host run (no-op for one process)."""
  if not config.get("multihost", False):
    return
  kwargs = {}
  dist = config.get("distributed", None)
  if dist is not None:
    if dist.get("coordinator_address"):
      kwargs = dict(coordinator_address=dist.coordinator_address,
                    num_processes=int(dist.num_processes),
                    process_id=int(dist.process_id))
  # Must not touch the backend before initialize(); this option only
  # matters to CPU devices (tests, CPU clusters) and is harmless elsewhere.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def make_mesh() -> jax.sharding.Mesh:
  """One "data" axis over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(global_batch: int, name: str = "train.global_batch_size"):
  n = jax.device_count()
  if global_batch % n:
    lower = global_batch - global_batch % n
    raise ValueError(
        f"config.{name}={global_batch} does not divide across the {n} devices "
        f"of this run ({jax.process_count()} process(es)). Use a multiple of "
        f"{n}, e.g. --config.{name}={max(lower, n)} or {lower + n}.")


def to_global(tree, sharding: NamedSharding):
  """Host-local numpy batch -> global jax.Array sharded on the leading axis."""
  def one(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------
# The train state and step.

def _select(ok, new, old):
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def phases_of(method: base.Method, config) -> tuple[base.Phase, ...]:
  """The method's stages, or one stage of config.train.epochs."""
  if method.phases:
    return tuple(method.phases)
  return (base.Phase("train", config.train.epochs, method.optimizer),)


def phase_at(phases, steps_per_epoch: int, step: int) -> int:
  """Index of the phase that step `step` (0-based) belongs to."""
  ends = np.cumsum([p.epochs * steps_per_epoch for p in phases])
  return int(min(np.searchsorted(ends, step, side="right"), len(phases) - 1))


def make_train_step(method: base.Method, phases, phase_index: int,
                    nan_policy: str):
  """(state, batch) -> (state, metrics) for one phase; jitted by the caller.

  A non-finite loss or gradient never reaches the parameters: the update is
  dropped. With nan_policy="stop" the state also freezes at that step
  (`halted`) so the host can stop at its next check without a per-step sync
  and the state still equals the last good one.
  """
  phase = phases[phase_index]
  extra = {"phase": phase.name} if method.phases else {}

  def train_step(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(state["rng"], step)

    def loss_of(params):
      variables = {"params": params, **state["collections"]}
      loss, aux, new_collections = method.loss_fn(variables, batch, rng, step,
                                                  **extra)
      return loss, (aux, new_collections)

    (loss, (aux, new_collections)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state["params"])
    old_opt = state["opt_state"][phase_index]
    updates, opt = phase.optimizer.update(grads, old_opt, state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = finite & ~state["halted"]
    opt_state = list(state["opt_state"])
    opt_state[phase_index] = _select(ok, opt, old_opt)
    collections = {**state["collections"], **new_collections}
    new_state = dict(
        step=step + 1,
        params=_select(ok, params, state["params"]),
        opt_state=tuple(opt_state),
        collections=_select(ok, collections, state["collections"]),
        rng=state["rng"],
        halted=state["halted"] | (~finite & (nan_policy == "stop")),
        bad_step=jnp.where(~finite & (state["bad_step"] < 0), step,
                           state["bad_step"]),
        skipped=state["skipped"] + (~finite).astype(jnp.int32),
    )
    metrics = dict(loss=loss, grad_norm=grad_norm, **aux)
    return new_state, metrics

  return train_step


def initial_state(method, phases, rng, sample_batch):
  """The whole train state; one optimizer state per phase keeps its tree fixed."""
  variables = method.init(rng, sample_batch)
  params = variables["params"]
  return dict(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tuple(p.optimizer.init(params) for p in phases),
      collections={k: v for k, v in variables.items() if k != "params"},
      rng=jax.random.fold_in(rng, 1),
      halted=jnp.zeros((), bool),
      bad_step=-jnp.ones((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32),
  )


def variables_of(state):
  return {"params": state["params"], **state["collections"]}


# ----------------------------------------------------------------------------
# What epoch hooks see.

@dataclasses.dataclass
class HookEnv:
  """Given to `Method.epoch_hooks`: passes over the train split on device.

  train_batches(): one pass over the whole train split in index order with
    the eval transform; host numpy batches {"labeled": {..., "valid"}}; the
    "label_mask" there is the known-label mask.
  to_global(batch): host batch -> sharded global arrays.
  gather(x): sharded global array -> host numpy on every process.
  """
  config: Any
  mesh: jax.sharding.Mesh
  rng: jax.Array
  train_batches: Callable[[], Iterator[dict]]
  to_global: Callable[[Any], Any]
  gather: Callable[[Any], np.ndarray]
  log: Callable[[str], None]


# ----------------------------------------------------------------------------
# The loop.

def _flatten(tree, prefix=""):
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, sub in tree.items()
          for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def check_same_config(config, workdir: str):
  """Raises unless `workdir`'s config.json (if any) is `config`'s.

  For tools that reuse a finished run's results.json (sweeps, tables):
  results of another config (e.g. another seed) must not be reported.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flatten(json.load(f))
  wanted = _flatten(json.loads(config.to_json_best_effort()))
  diff = sorted(k for k in saved.keys() | wanted.keys()
                if saved.get(k) != wanted.get(k))
  if diff:
    shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now"
                      for k in diff[:5])
    raise ValueError(
        f"{workdir} holds a finished run of another config ({shown}"
        f"{', ...' if len(diff) > 5 else ''}); pass another --workdir or "
        "delete that directory.")


def _known_mask(config, info) -> np.ndarray:
  proportion = config.data.known_label_proportion
  mask = partial.known_label_mask(info.train_labels.shape, proportion,
                                  seed=config.data.mask_seed)
  return (mask * info.train_label_mask).astype(np.uint8)


def _meta_expect(config) -> dict:
  return dict(method=config.method, backbone=config.model.get("backbone", ""),
              dataset=config.data.name,
              known_label_proportion=float(config.data.known_label_proportion))


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the first step."""
  config: Any
  source: Any
  info: Any
  method: base.Method
  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch_sharding: NamedSharding
  state_sharding: Any
  abstract_item: Any          # {"train": state, "known_mask": ...} shapes
  checkpointer: ckpt_lib.Checkpointer
  known_mask: np.ndarray
  steps_per_epoch: int
  total_steps: int
  rng: jax.Array
  phases: tuple = ()
  probe: Any = None             # the first batch: shapes for init

  def batches_from(self, start_step: int, known_mask=None):
    it = pipeline.train_batches(
        self.config, self.source,
        self.known_mask if known_mask is None else known_mask,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    return (to_global(b, self.batch_sharding) for b in it)

  def init_fn(self, rng, batch):
    return initial_state(self.method, self.phases, rng, batch)


_CHOICES = {
    "train.nan_policy": ("stop", "skip"),
    "train.precision": ("float32", "bfloat16"),
    "data.on_bad_example": ("fail", "skip"),
    "data.normalize": ("imagenet", "none"),
}
# Backbones that downsample by 32 need at least one pixel at the last stage.
_MIN_IMAGE_SIZE = 32


def validate(config) -> None:
  """Config errors people make, caught before any data is read or compiled."""
  base.check_name(config.method)
  proportion = config.data.known_label_proportion
  if not 0.0 < proportion <= 1.0:
    raise ValueError(
        f"config.data.known_label_proportion={proportion} is outside (0, 1]: "
        "it is the fraction of training labels kept as known (1.0 = all). "
        "Use e.g. --config.data.known_label_proportion=0.3.")
  for key, allowed in _CHOICES.items():
    section, name = key.split(".")
    value = config[section].get(name)
    if value not in allowed:
      raise ValueError(f"config.{key}={value!r}: expected one of "
                       f"{', '.join(map(repr, allowed))}.")
  for key in ("train.global_batch_size", "train.log_every"):
    section, name = key.split(".")
    if int(config[section][name]) <= 0:
      raise ValueError(f"config.{key}={config[section][name]} must be > 0.")
  backbone = config.model.get("backbone", "")
  size = config.data.image_size
  if backbone.startswith(("resnet", "vgg")) and size < _MIN_IMAGE_SIZE:
    raise ValueError(
        f"config.data.image_size={size} is too small for backbone "
        f"{backbone!r}, which downsamples by 32; use at least "
        f"{_MIN_IMAGE_SIZE} (e.g. --config.data.image_size=64).")
  scales = tuple(config.data.get("crop_scales", ()))
  if not all(0.0 < float(x) <= 1.0 for x in scales):
    raise ValueError(
        f"config.data.crop_scales={scales}: crop sides are fractions of the "
        "resized image, each in (0, 1] (e.g. (1.0, 0.875, 0.75) for 512, "
        "448, 384 px crops of a 512 px resize).")
  check_batch_size(config.train.global_batch_size)
  if config.data.unlabeled_batch_size:
    check_batch_size(config.data.unlabeled_batch_size,
                     "data.unlabeled_batch_size")


def check_splits(config, info) -> None:
  """The splits a run reads are not empty (e.g. every example skipped by
  on_bad_example="skip"): refused now rather than at the first step or,
  worse, at the evaluation after training."""
  used = {"train_split": config.data.train_split,
          "test_split": config.data.test_split}
  if config.data.unlabeled_batch_size:
    used["unlabeled"] = "unlabeled"
  for key, split in used.items():
    if info.num_examples.get(split, None) == 0:
      where = (f"config.data.{key}={split!r}" if key != "unlabeled"
               else "the 'unlabeled' split")
      raise TrainingError(
          f"{info.name}: {where} has no examples (with "
          f"config.data.on_bad_example='skip' they may all have been skipped "
          f"as bad: see the warnings above). Fix the data under "
          f"config.data.dir={config.data.dir!r}, or choose another split.")


def setup(config, workdir: str) -> Setup:
  """Validates the config against the devices and data, builds the method."""
  validate(config)
  source = data_info.load(config.data)
  info = source.info
  check_splits(config, info)
  steps_per_epoch = pipeline.steps_per_epoch(config, info)
  method = base.build(config, info)
  phases = phases_of(method, config)
  total_steps = config.train.steps or (
      sum(p.epochs for p in phases) * steps_per_epoch)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=config.train.keep_checkpoints,
      async_save=config.train.get("async_checkpoint", False))
  rng = jax.random.PRNGKey(config.seed)
  known_mask = _known_mask(config, info)
  s = Setup(config, source, info, method, mesh, replicated, batch_sharding,
            None, None, checkpointer, known_mask, steps_per_epoch,
            total_steps, rng, phases)
  probe = next(s.batches_from(0))
  abstract = jax.eval_shape(s.init_fn, rng, probe)
  s.state_sharding = jax.tree.map(lambda _: replicated, abstract)
  abstract = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      abstract, s.state_sharding)
  s.abstract_item = {
      "train": abstract,
      "known_mask": jax.ShapeDtypeStruct(known_mask.shape, known_mask.dtype)}
  s.probe = probe
  return s


def restore_for_inference(config, workdir: str, best: bool = False):
  """(setup, variables, meta) from the workdir's latest (or best) checkpoint."""
  s = setup(config, workdir)
  restored, meta = s.checkpointer.restore(s.abstract_item,
                                          _meta_expect(config), best=best)
  if restored is None:
    raise TrainingError(
        f"No checkpoint under {s.checkpointer.root}. Train first with "
        f"--mode=train --workdir={workdir}, or point --workdir at a run.")
  return s, variables_of(restored["train"]), meta


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.method`, resuming from `workdir` when it has checkpoints.

  Returns the final test metrics (also written to WORKDIR/results.json).
  """
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  s = setup(config, workdir)
  method, info, source = s.method, s.info, s.source
  steps_per_epoch, total_steps = s.steps_per_epoch, s.total_steps
  checkpointer, rng, mesh = s.checkpointer, s.rng, s.mesh
  state_sharding, batch_sharding = s.state_sharding, s.batch_sharding
  global_batch = config.train.global_batch_size
  expect = _meta_expect(config)

  restored, meta = checkpointer.restore(s.abstract_item, expect)
  if is_main:   # before this run's first save; restore logged them
    checkpointer.discard_interrupted_saves()
  if restored is not None:
    state = restored["train"]
    known_mask = np.asarray(restored["known_mask"])
    start_step = int(meta["step"])
    log.info("Resumed from %s at step %d.", checkpointer.root, start_step)
  else:
    state = jax.jit(s.init_fn, out_shardings=state_sharding)(rng, s.probe)
    if config.model.get("pretrained", ""):
      state = _load_pretrained(state, config, state_sharding)
    known_mask = s.known_mask
    start_step = 0
  s.probe = None
  # Read the test split now: a bad file there stops the run before
  # training, not at the evaluation after it.
  next(pipeline.eval_batches(config, source, config.data.test_split,
                             process_index=jax.process_index(),
                             process_count=jax.process_count()), None)

  compiled_steps = {}

  def train_step(state, batch, step):
    """The jitted step of the phase that `step` belongs to."""
    i = phase_at(s.phases, steps_per_epoch, step)
    if i not in compiled_steps:
      if compiled_steps:
        log.info("Phase %r starts at step %d.", s.phases[i].name, step)
      compiled_steps[i] = jax.jit(
          make_train_step(method, s.phases, i, config.train.nan_policy),
          in_shardings=(state_sharding, batch_sharding),
          out_shardings=(state_sharding, s.replicated), donate_argnums=0)
    return compiled_steps[i](state, batch)
  predict_step = jax.jit(method.predict_fn, out_shardings=batch_sharding)

  writer = log_lib.MetricWriter(workdir, enabled=is_main)
  progress = log_lib.Progress(total_steps, start_step,
                              enabled=is_main and config.train.progress)
  gather = eval_lib.gather_to_host

  def run_eval(state, step):
    return eval_lib.evaluate_split(
        config, source, config.data.test_split, predict_step,
        variables_of(state), lambda b: to_global(b, batch_sharding), gather)

  def save(state, step, last_eval=None):
    meta = dict(expect, step=step, epoch=step // steps_per_epoch,
                steps_per_epoch=steps_per_epoch,
                phase=s.phases[phase_at(s.phases, steps_per_epoch,
                                        max(step - 1, 0))].name)
    item = {"train": state, "known_mask": known_mask}
    checkpointer.save(step, item, meta)
    if last_eval is not None:
      checkpointer.save_best(step, item, meta, last_eval["mAP"])

  def hook_env():
    def train_pass():
      return pipeline.eval_batches(
          config, source, config.data.train_split, known_mask=known_mask,
          process_index=jax.process_index(),
          process_count=jax.process_count())
    return HookEnv(config=config, mesh=mesh,
                   rng=jax.random.fold_in(rng, 2), train_batches=train_pass,
                   to_global=lambda b: to_global(b, batch_sharding),
                   gather=gather, log=lambda m: log.info("%s", m))

  pending: list[dict] = []
  t_last, s_last = time.perf_counter(), start_step
  last_eval = None
  step = start_step
  batches = s.batches_from(start_step, known_mask)
  while step < total_steps:
    batch = next(batches)
    with jax.transfer_guard("disallow"):
      state, metrics = train_step(state, batch, step)
    step += 1
    pending.append(metrics)

    at_log = step % config.train.log_every == 0 or step == total_steps
    at_ckpt = (config.train.checkpoint_every
               and step % config.train.checkpoint_every == 0)
    at_epoch_end = step % steps_per_epoch == 0
    if at_log or at_ckpt or at_epoch_end or step == total_steps:
      _check_finite(state, checkpointer, config)
    if at_log:
      host = jax.device_get(pending)
      pending = []
      avg = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      now = time.perf_counter()
      avg["examples_per_sec"] = (step - s_last) * global_batch / (now - t_last)
      avg["epoch"] = step / steps_per_epoch
      t_last, s_last = now, step
      writer.write(step, avg)
      progress.update(step, step // steps_per_epoch, avg["loss"],
                      avg["examples_per_sec"])
    if at_epoch_end and method.epoch_hooks:
      variables = variables_of(state)
      for hook in method.epoch_hooks:
        variables = hook(variables, step // steps_per_epoch - 1, hook_env())
      state = dict(state, params=variables["params"],
                   collections={k: v for k, v in variables.items()
                                if k != "params"})
      state = jax.device_put(state, state_sharding)
    at_eval = (config.train.eval_every
               and step % config.train.eval_every == 0 and step < total_steps)
    if at_eval:
      last_eval, _ = run_eval(state, step)
      writer.write(step, {"test": _scalars(last_eval)})
    if at_ckpt:
      save(state, step, last_eval if at_eval else None)
      t_last = time.perf_counter()

  # The end: final eval, checkpoint, results and plots.
  results, per_class = run_eval(state, step)
  writer.write(step, {"test": _scalars(results)})
  if config.train.checkpoint_every or step > start_step:
    if step not in checkpointer.steps():
      save(state, step, results)
  checkpointer.wait()
  writer.close()
  out = {"step": step, "test": results}
  if is_main:   # written whole or not at all: "results.json exists" = done
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    eval_lib.write_plots(per_class, info.class_names,
                         os.path.join(workdir, "plots"))
  return out


def _scalars(results: dict) -> dict:
  return {k: v for k, v in results.items() if not isinstance(v, (list,))}


def _check_finite(state, checkpointer, config) -> None:
  halted, bad_step, skipped = jax.device_get(
      (state["halted"], state["bad_step"], state["skipped"]))
  if bool(halted):
    checkpointer.wait()
    last = checkpointer.latest_step()
    where = (f"the last good checkpoint is step {last} in {checkpointer.root}"
             if last is not None else "no checkpoint was written yet")
    raise TrainingError(
        f"The loss or its gradient became NaN/Inf at step {int(bad_step)}; "
        f"training stopped ({where}). Lower config.optim.lr, check the data, "
        f"or set --config.train.nan_policy=skip to drop such batches. "
        f"Rerunning in the same workdir resumes from that checkpoint.")
  if int(skipped):
    log.warning("%d batch(es) with a non-finite loss were skipped so far "
                "(first at step %d).", int(skipped), int(bad_step))


def _load_pretrained(state, config, sharding):
  from jaxmlc.models import pretrained
  variables = jax.device_get(variables_of(state))
  variables = pretrained.load_into(variables, config.model.pretrained,
                                   prefix=("backbone",))
  state = dict(state, params=variables["params"],
               collections={k: v for k, v in variables.items()
                            if k != "params"})
  return jax.device_put(state, sharding)
