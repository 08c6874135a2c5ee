"""Orbax checkpoints of the whole training state, refused rather than half-loaded.

Layout under `WORKDIR/checkpoints/`:
  latest/<step>/  the last `keep` periodic checkpoints (resume reads these)
  best/<step>/    the best by eval mAP
Each step directory holds the state pytree ("state") and a JSON record
("meta": step, epoch, phase, method, backbone, data position, the tree's
shapes). Orbax writes a step into `<step>.orbax-checkpoint-tmp-<time>/`,
writes its commit marker (`commit_success.txt`, and the commit time in
`_CHECKPOINT_METADATA`) and only then renames it to `<step>/`, so a save
killed half way is never listed as a step: `restore` says so in the log
and uses the newest committed step, and the trainer deletes such leftovers
(`discard_interrupted_saves`). A step directory without a commit marker (a
copy cut short, a filesystem without atomic renames) and a committed
checkpoint that fails to restore (truncated file) are skipped with a log
line in favour of the previous one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint that does not fit the run; nothing was loaded."""


# What orbax names a step directory while it is being written, and the files
# it writes just before renaming it (orbax 0.12: atomicity.py).
_TMP_MARK = ".orbax-checkpoint-tmp"
_COMMIT_FILE = "commit_success.txt"
_STEP_METADATA = "_CHECKPOINT_METADATA"


def is_committed(step_dir: str) -> bool:
  """Whether orbax finished `step_dir`: its commit file is there, or (older
  orbax) its metadata records a commit time."""
  if os.path.isfile(os.path.join(step_dir, _COMMIT_FILE)):
    return True
  try:
    with open(os.path.join(step_dir, _STEP_METADATA)) as f:
      return bool(json.load(f).get("commit_timestamp_nsecs"))
  except (OSError, ValueError, AttributeError):
    return False


def interrupted_saves(directory: str) -> list[tuple[int | None, str]]:
  """(step, path) of each save under `directory` that never committed."""
  out = []
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
    if _TMP_MARK in name:
      head = name.split(".", 1)[0]
      out.append((int(head) if head.isdigit() else None,
                  os.path.join(directory, name)))
  return out


def tree_signature(tree) -> dict[str, str]:
  """{"params/backbone/stem/conv/kernel": "float32[7,7,3,64]", ...}."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(_key_name(k) for k in path)
    shape = ",".join(str(d) for d in np.shape(leaf))
    out[name] = f"{np.dtype(leaf.dtype).name}[{shape}]"
  return out


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def describe_mismatch(expected: Mapping[str, str], found: Mapping[str, str],
                      limit: int = 5) -> str:
  """A short human list of the first differences between two signatures."""
  lines = []
  for name in sorted(set(expected) - set(found))[:limit]:
    lines.append(f"missing in checkpoint: {name} (model has {expected[name]})")
  for name in sorted(set(found) - set(expected))[:limit]:
    lines.append(f"not in model: {name} (checkpoint has {found[name]})")
  for name in sorted(set(expected) & set(found)):
    if expected[name] != found[name] and len(lines) < 3 * limit:
      lines.append(f"{name}: model {expected[name]}, checkpoint {found[name]}")
  return "; ".join(lines[:3 * limit])


class Checkpointer:
  """Periodic (keep last k) and best-by-mAP checkpoints of one run."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = False):
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.root = root
    handlers = dict(state=ocp.StandardCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler())
    self._latest = ocp.CheckpointManager(
        os.path.join(root, "latest"),
        item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save))
    self._best = ocp.CheckpointManager(
        os.path.join(root, "best"),
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           meta=ocp.JsonCheckpointHandler()),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["mAP"],
            best_mode="max", enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    return sorted(self._latest.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, meta: Mapping[str, Any]) -> None:
    meta = dict(meta, signature=tree_signature(state))
    self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, state, meta: Mapping[str, Any],
                mAP: float) -> None:
    meta = dict(meta, signature=tree_signature(state))
    self._best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    metrics={"mAP": float(mAP)})

  def interrupted_saves(self) -> list[tuple[int | None, str]]:
    """(step, path) of the saves of both managers that never committed."""
    return [x for manager in (self._latest, self._best)
            for x in interrupted_saves(str(manager.directory))]

  def discard_interrupted_saves(self) -> None:
    """Deletes what killed saves left (a full state copy each). Only the
    run that writes this workdir may call it, before its first save."""
    for step, path in self.interrupted_saves():
      log.warning("Deleting %s: the save of step %s was interrupted before "
                  "it committed.", path, step)
      shutil.rmtree(path, ignore_errors=True)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def read_meta(self, step: int, best: bool = False) -> dict:
    manager = self._best if best else self._latest
    return dict(manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, abstract_state, expect: Mapping[str, Any],
              step: int | None = None, best: bool = False):
    """Restores the newest good checkpoint (or `step`) into `abstract_state`.

    expect: meta fields that must match (method, backbone, ...); a mismatch
      or a tree of other shapes raises CheckpointError naming it.
    Returns (state, meta), or (None, None) when there is no checkpoint.
    A checkpoint that fails to read is skipped (logged) in favour of the
    one before it; when none is readable CheckpointError is raised.
    """
    manager = self._best if best else self._latest
    candidates = [step] if step is not None else sorted(manager.all_steps(),
                                                        reverse=True)
    for killed, path in interrupted_saves(str(manager.directory)):
      log.warning("Ignoring the save of step %s at %s: it was interrupted "
                  "before it committed (the run was killed while saving). "
                  "The newest committed checkpoint is used instead.",
                  killed, path)
    if not candidates:
      return None, None
    want_sig = tree_signature(abstract_state)
    errors = []
    for s in candidates:
      if not is_committed(os.path.join(str(manager.directory), str(s))):
        errors.append(f"step {s}: no commit marker")
        log.warning("Checkpoint at step %d has no commit marker (%s): it was "
                    "not completely written; trying the previous one.", s,
                    _COMMIT_FILE)
        continue
      try:
        meta = self.read_meta(s, best=best)
      except Exception as e:  # unreadable JSON: a damaged step directory
        errors.append(f"step {s}: metadata unreadable ({type(e).__name__}: {e})")
        log.warning("Checkpoint at step %d is unreadable (%s); trying the "
                    "previous one.", s, e)
        continue
      _check_compatible(meta, expect, want_sig, os.path.join(
          manager.directory, str(s)))
      try:
        restored = manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # truncated array files and the like
        errors.append(f"step {s}: {type(e).__name__}: {e}")
        log.warning("Checkpoint at step %d failed to restore (%s); trying "
                    "the previous one.", s, e)
        continue
      if s != candidates[0]:
        log.warning("Resumed from step %d because newer checkpoints were "
                    "damaged or incomplete.", s)
      return restored["state"], meta
    raise CheckpointError(
        f"No checkpoint under {manager.directory} could be restored: "
        + " | ".join(errors) + ". Remove the damaged step directories or "
        "start in a new --workdir.")


def _check_compatible(meta, expect, want_sig, where) -> None:
  for key, value in expect.items():
    if key in meta and meta[key] != value:
      raise CheckpointError(
          f"The checkpoint at {where} was written with {key}={meta[key]!r}, "
          f"but this run has {key}={value!r}. Use the workdir of a run with "
          f"the same {key}, or start in a new --workdir.")
  found = meta.get("signature")
  if found is not None and dict(found) != want_sig:
    raise CheckpointError(
        f"The checkpoint at {where} does not match this model: "
        f"{describe_mismatch(want_sig, found)}. It was written by a "
        f"different model configuration; start in a new --workdir or "
        f"restore the matching config.")
