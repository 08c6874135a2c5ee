"""Training as separate processes: SIGKILL and resume, two-process jax.distributed."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "launch", "main.py")


def _flags(data_dir, workdir, steps, **extra):
  flags = [
      f"--config={REPO}/configs/baseline_synthetic.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.dir={data_dir}",
      "--config.model.width=8",
      "--config.data.known_label_proportion=0.5",
      "--config.train.global_batch_size=16",
      f"--config.train.steps={steps}",
      "--config.train.log_every=5",
      "--config.train.progress=False",
  ]
  return flags + [f"--config.{k}={v}" for k, v in extra.items()]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices}"),
              JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _final_params(workdir):
  from jaxmlc import checkpoint
  ckpt = checkpoint.Checkpointer(workdir)
  step = ckpt.latest_step()
  import orbax.checkpoint as ocp
  path = os.path.join(ckpt.root, "latest", str(step), "state")
  return step, ocp.StandardCheckpointer().restore(path)["train"]["params"]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_sigkill_resumes_to_the_same_parameters(data_dir, tmp_path):
  straight = str(tmp_path / "straight")
  killed = str(tmp_path / "killed")
  subprocess.run([sys.executable, MAIN] + _flags(
      data_dir, straight, 30, **{"train.checkpoint_every": 10}),
                 env=_env(8), check=True, timeout=600,
                 stdout=subprocess.DEVNULL)
  proc = subprocess.Popen([sys.executable, MAIN] + _flags(
      data_dir, killed, 30, **{"train.checkpoint_every": 10}), env=_env(8),
                          stdout=subprocess.DEVNULL)
  first = os.path.join(killed, "checkpoints", "latest", "10")
  deadline = time.time() + 500
  while not os.path.isdir(first) and time.time() < deadline:
    assert proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(killed, "results.json"))
  subprocess.run([sys.executable, MAIN] + _flags(
      data_dir, killed, 30, **{"train.checkpoint_every": 10}),
                 env=_env(8), check=True, timeout=600,
                 stdout=subprocess.DEVNULL)
  step_a, params_a = _final_params(straight)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 30
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  results = [json.load(open(os.path.join(d, "results.json")))
             for d in (straight, killed)]
  assert results[0] == results[1]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(data_dir, tmp_path):
  """2 processes x 4 devices (gloo on localhost) == 1 process x 8 devices."""
  single = str(tmp_path / "single")
  multi = str(tmp_path / "multi")
  extra = {"train.checkpoint_every": 0}
  subprocess.run([sys.executable, MAIN] + _flags(data_dir, single, 10, **extra),
                 env=_env(8), check=True, timeout=600,
                 stdout=subprocess.DEVNULL)
  port = _free_port()
  procs = [
      subprocess.Popen([sys.executable, MAIN] + _flags(
          data_dir, multi, 10, multihost=True,
          **{"distributed.coordinator_address": f"127.0.0.1:{port}",
             "distributed.num_processes": 2, "distributed.process_id": i},
          **extra), env=_env(4), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
      for i in range(2)]
  try:
    errs = [p.communicate(timeout=600)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err.decode()[-3000:]
  one, two = _losses(single), _losses(multi)
  assert one.keys() == two.keys() == {5, 10}
  for step in one:
    np.testing.assert_allclose(two[step], one[step], rtol=1e-3)
  r1 = json.load(open(os.path.join(single, "results.json")))["test"]
  r2 = json.load(open(os.path.join(multi, "results.json")))["test"]
  np.testing.assert_allclose(r2["mAP"], r1["mAP"], rtol=1e-3)
