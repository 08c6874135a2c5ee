"""Preemption: a training process SIGKILLed at seeded random points (during
a checkpoint save included) and restarted in the same workdir ends with the
bitwise parameters and results of an uninterrupted run, resuming each time
from exactly the newest committed checkpoint.

Each run is a subprocess running `CHILD` (tiny config, 2 fake CPU devices).
The child kills itself with SIGKILL when the loop asks for the batch of a
chosen step (a deterministic point: no timing), or stalls inside orbax's
commit of a chosen checkpoint -- after the step's files are written into
their temporary directory, before the rename that commits them -- and
tells the parent, which then sends SIGKILL. Every run shares one
compilation cache, so only the first one compiles.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmlc import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import asyncio, json, logging, os, signal, sys
args = json.loads(sys.argv[1])
sys.path[:0] = [os.path.join(args["repo"], "tests"), args["repo"]]
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
log = logging.getLogger("jaxmlc")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
from orbax.checkpoint._src.path import atomicity
from _configs import tiny_config
from jaxmlc import evaluate, train

def die(why):
  print(f"CHILD KILLS ITSELF {why}", file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)

reached = [-1]                                # the last step asked for
batches_from = train.Setup.batches_from
def watched_batches(self, start_step, known_mask=None):
  it = batches_from(self, start_step, known_mask)
  for step, batch in enumerate(it, start_step):
    if step == args.get("kill_at"):            # before step `kill_at` runs
      die(f"at step {step}")
    reached[0] = step
    yield batch
train.Setup.batches_from = watched_batches

if args.get("kill_in_final_eval"):           # all steps run, results not out
  evaluate_split = evaluate.evaluate_split
  def killing_eval(*a, **k):
    if reached[0] == args["train"]["steps"] - 1:
      die("in the final evaluation")
    return evaluate_split(*a, **k)
  evaluate.evaluate_split = killing_eval

if args.get("stall_save") is not None:       # files written, not committed
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def stalled_finalize(self, *a, **k):
    final = self.get_final()
    if (final.name == str(args["stall_save"])
        and final.parent.name == args["stall_in"]):
      with open(args["flag"] + ".part", "w") as f:
        f.write(str(self.get()))
      os.replace(args["flag"] + ".part", args["flag"])
      await asyncio.sleep(3600)
    return await finalize(self, *a, **k)
  atomicity.AtomicRenameTemporaryPath.finalize = stalled_finalize

config = tiny_config(args["data_dir"], **args["train"])
train.train_and_evaluate(config, args["workdir"])
"""

_RESUMED = re.compile(r"Resumed from \S+ at step (\d+)\.")


def _env(cache_dir):
  return dict(
      os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
      JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


class Runner:
  """Starts the child on one workdir with one train config."""

  def __init__(self, data_dir, cache_dir, workdir, train):
    self.data_dir, self.cache_dir = data_dir, cache_dir
    self.workdir, self.train = workdir, train

  def start(self, **fault):
    args = dict(repo=REPO, data_dir=self.data_dir, workdir=self.workdir,
                train=self.train, **fault)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        env=_env(self.cache_dir), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)

  def run(self, **fault):
    """Runs to the end (or to a self-kill); -> (returncode, stderr)."""
    proc = self.start(**fault)
    _, err = proc.communicate(timeout=500)
    return proc.returncode, err


def _resumed_step(err: str) -> int:
  """The step a run started from (0 without a checkpoint)."""
  found = _RESUMED.findall(err)
  assert len(found) <= 1, err[-3000:]
  return int(found[0]) if found else 0


def _committed_steps(workdir, manager="latest"):
  """Committed step directories on disk, read without orbax."""
  directory = os.path.join(workdir, "checkpoints", manager)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()
                and ckpt_lib.is_committed(os.path.join(directory, n)))


def _final_params(workdir, step):
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["train"]["params"]


def _records(workdir):
  """metrics.jsonl: every line must parse (a kill never leaves half a line)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}


def _check_same_as_reference(reference, workdir, steps):
  import jax
  assert _committed_steps(workdir)[-1] == steps
  jax.tree.map(np.testing.assert_array_equal,
               _final_params(reference, steps), _final_params(workdir, steps))
  results = [json.load(open(os.path.join(d, "results.json")))
             for d in (reference, workdir)]
  assert results[0] == results[1]
  assert _losses(workdir) == _losses(reference)


def _kill_during_save(runner, step, manager, tmp_path):
  """Runs until the save of `step` has written its files, then SIGKILLs."""
  flag = str(tmp_path / f"stalled-{manager}-{step}")
  proc = runner.start(stall_save=step, stall_in=manager, flag=flag)
  deadline = time.time() + 500
  try:
    while not os.path.exists(flag):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, "the save was never reached"
      time.sleep(0.05)
    tmp_dir = open(flag).read()
    # Mid-save: the files are there, under the temporary name only.
    assert ".orbax-checkpoint-tmp" in os.path.basename(tmp_dir)
    assert os.path.isdir(os.path.join(tmp_dir, "state"))
    assert step not in _committed_steps(runner.workdir, manager)
  finally:
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  return err, tmp_dir


def _preempt(runner, rng, kinds, tmp_path):
  """Applies one fault of each kind in `kinds` in turn, then runs to the end.

  Returns one row per fault: kind, the step the killed run had reached, the
  newest committed checkpoint after the kill, the step the next run resumed
  at, and the steps redone.
  """
  steps, every = runner.train["steps"], runner.train["checkpoint_every"]
  eval_every = runner.train.get("eval_every", 0)
  sync = not runner.train.get("async_checkpoint", False)
  rows, start = [], 0
  for kind in kinds:
    # Each point is drawn within the checkpoint period or two after the
    # last one, so a few faults cover a short run.
    if kind == "step":       # any step, checkpoint steps included
      at = min(start + int(rng.integers(1, every + 1)), steps - 1)
      code, err = runner.run(kill_at=at)
      assert code == -signal.SIGKILL, err[-3000:]
      assert f"CHILD KILLS ITSELF at step {at}" in err
    elif kind in ("save", "best_save"):   # one of the next two such saves
      period = every if kind == "save" else int(np.lcm(every, eval_every))
      first = (start // period + 1) * period
      at = int(rng.choice([first, first + period]))
      assert at < steps, "too few steps for this many faults"
      manager = "latest" if kind == "save" else "best"
      err, _ = _kill_during_save(runner, at, manager, tmp_path)
    elif kind == "final_eval":
      at = steps
      code, err = runner.run(kill_in_final_eval=True)
      assert code == -signal.SIGKILL, err[-3000:]
      assert "CHILD KILLS ITSELF in the final evaluation" in err
    else:
      raise ValueError(kind)
    if rows:
      _check_resumed(rows[-1], err)
    committed = _committed_steps(runner.workdir)
    last = committed[-1] if committed else 0
    rows.append(dict(kind=kind, killed_at=at, last_committed=last))
    if kind == "save":       # the stalled save blocks the ones after it
      assert last == at - every, (at, committed)
    elif sync:               # every save before the kill committed
      assert last == at // every * every, (kind, at, committed)
    else:                    # async: the newest save may be in flight
      assert at // every * every - every <= last <= at, (kind, at, committed)
    assert not os.path.exists(os.path.join(runner.workdir, "results.json"))
    start = at
  code, err = runner.run()
  assert code == 0, err[-3000:]
  _check_resumed(rows[-1], err)
  for manager in ("latest", "best"):   # the leftovers were deleted
    assert not ckpt_lib.interrupted_saves(
        os.path.join(runner.workdir, "checkpoints", manager))
  return rows


def _check_resumed(row, err):
  """The run after a fault resumed from its newest committed checkpoint."""
  row["resumed_at"] = _resumed_step(err)
  row["steps_redone"] = row["killed_at"] - row["resumed_at"]
  # Nothing is lost beyond the newest committed checkpoint.
  assert row["resumed_at"] == row["last_committed"], (row, err[-3000:])
  if row["kind"] in ("save", "best_save"):   # named, skipped, deleted
    manager = "latest" if row["kind"] == "save" else "best"
    at = row["killed_at"]
    if manager == "latest":
      assert re.search(rf"Ignoring the save of step {at} at \S+"
                       r"orbax-checkpoint-tmp", err), err[-3000:]
    assert re.search(rf"Deleting \S+/{manager}/{at}\.orbax-checkpoint-tmp"
                     rf"\S*: the save of step {at} was interrupted", err), \
        err[-3000:]


def _print(rows, label):
  print(f"\n{label}: kind, killed at step, newest committed, resumed at, "
        "steps redone")
  for r in rows:
    print(f"  {r['kind']:9s} {r['killed_at']:4d} {r['last_committed']:4d} "
          f"{r['resumed_at']:4d} {r['steps_redone']:4d}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def test_sigkill_at_random_points_and_mid_save(data_dir, cache_dir, tmp_path):
  steps, every = 16, 4
  config = dict(steps=steps, checkpoint_every=every, log_every=2)
  reference = str(tmp_path / "reference")
  code, err = Runner(data_dir, cache_dir, reference, config).run()
  assert code == 0, err[-3000:]
  runner = Runner(data_dir, cache_dir, str(tmp_path / "killed"), config)
  rows = _preempt(runner, np.random.default_rng(0), ["step", "save"],
                  tmp_path)
  _print(rows, "preemption")
  _check_same_as_reference(reference, runner.workdir, steps)


@pytest.mark.slow
def test_many_kills_with_eval_and_async_saves(data_dir, cache_dir, tmp_path):
  """More faults: random steps, a save and a best-checkpoint save killed
  half way, a kill in the final evaluation; periodic eval and orbax async
  saves on."""
  steps, every = 32, 4
  config = dict(steps=steps, checkpoint_every=every, log_every=2,
                eval_every=8, async_checkpoint=True)
  reference = str(tmp_path / "reference")
  code, err = Runner(data_dir, cache_dir, reference, config).run()
  assert code == 0, err[-3000:]
  runner = Runner(data_dir, cache_dir, str(tmp_path / "killed"), config)
  rows = _preempt(runner, np.random.default_rng(7),
                  ["step", "best_save", "step", "save", "step", "final_eval"],
                  tmp_path)
  _print(rows, "preemption (slow)")
  _check_same_as_reference(reference, runner.workdir, steps)


# ------------------------------------------------ the commit check itself

def _small_state(value):
  import jax.numpy as jnp
  return {"w": jnp.full((3,), value)}


def test_uncommitted_steps_are_never_restored(tmp_path, caplog):
  """In-process: a step directory without orbax's commit marker, and a
  temporary directory left by a killed save, are passed over (logged) for
  the newest committed step; the trainer's clean-up deletes the latter."""
  import jax
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  for step in (10, 20, 30):
    ckpt.save(step, _small_state(float(step)), {"method": "m", "step": step})
  ckpt.wait()
  latest = os.path.join(ckpt.root, "latest")
  # Step 30 as a copy cut short leaves it: no marker, no commit time.
  os.remove(os.path.join(latest, "30", "commit_success.txt"))
  with open(os.path.join(latest, "30", "_CHECKPOINT_METADATA"), "w") as f:
    json.dump({"commit_timestamp_nsecs": None}, f)
  # Step 40 as a save killed before its rename leaves it.
  killed = os.path.join(latest, "40.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(killed, "state"))
  assert [ckpt_lib.is_committed(os.path.join(latest, s))
          for s in ("10", "20", "30")] == [True, True, False]

  fresh = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  abstract = jax.eval_shape(lambda: _small_state(0.0))
  state, meta = fresh.restore(abstract, {"method": "m"})
  assert meta["step"] == 20
  np.testing.assert_array_equal(state["w"], 20.0)
  assert f"Ignoring the save of step 40 at {killed}" in caplog.text
  assert "step 30 has no commit marker" in caplog.text
  assert "Resumed from step 20 because newer checkpoints" in caplog.text
  assert fresh.interrupted_saves() == [(40, killed)]
  fresh.discard_interrupted_saves()
  assert not os.path.exists(killed) and fresh.interrupted_saves() == []
