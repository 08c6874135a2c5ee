"""Soak: 2,000 steps on the embedded tiny data with periodic evaluation and
checkpointing; the process's memory must not drift after warm-up.

The run is a subprocess (2 fake CPU devices) that samples its own VmRSS and
VmHWM (/proc/self/status) at every log step. Warm-up ends at step 250: the
steps, the evaluation and the checkpoint code have all run by then, and
tf.data / XLA caches are full. The drift is the resident size at the end
minus that at warm-up; it must stay under 10 % of the warm-up size or
200 MB, whichever is larger. The figures are printed (pytest -s).

  pytest -m slow -s tests/test_soak.py
"""
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, WARMUP = 2000, 250

CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
sys.path[:0] = [os.path.join(args["repo"], "tests"), args["repo"]]
from _configs import tiny_config
from jaxmlc import logging as log_lib, train

def memory_mb():
  fields = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        fields[key] = int(value.split()[0]) / 1024     # kB -> MB
  return fields

samples, start = [], time.time()
write = log_lib.MetricWriter.write
def sampling_write(self, step, metrics):
  if "loss" in metrics:
    samples.append(dict(step=int(step), seconds=time.time() - start,
                        **memory_mb()))
  return write(self, step, metrics)
log_lib.MetricWriter.write = sampling_write

config = tiny_config(args["data_dir"], steps=args["steps"],
                     checkpoint_every=100, eval_every=250, log_every=50,
                     keep_checkpoints=2)
out = train.train_and_evaluate(config, args["workdir"])
with open(args["out"], "w") as f:
  json.dump(dict(samples=samples, final=memory_mb(), mAP=out["test"]["mAP"]),
            f)
"""


@pytest.mark.slow
def test_memory_does_not_drift_over_2000_steps(data_dir, tmp_path):
  out = str(tmp_path / "memory.json")
  args = dict(repo=REPO, data_dir=data_dir, workdir=str(tmp_path / "run"),
              steps=STEPS, out=out)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  began = time.time()
  done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)],
                        env=env, capture_output=True, text=True, timeout=3000)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out) as f:
    record = json.load(f)
  samples = {s["step"]: s for s in record["samples"]}
  assert sorted(samples) == list(range(50, STEPS + 1, 50))
  warm, half, end = samples[WARMUP], samples[STEPS // 2], samples[STEPS]
  drift = end["VmRSS"] - warm["VmRSS"]
  print(f"\nsoak: {STEPS} steps in {end['seconds']:.0f} s of training "
        f"({time.time() - began:.0f} s in all), final mAP "
        f"{record['mAP']:.3f}")
  print("  step     VmRSS MB   VmHWM MB")
  for step in (50, WARMUP, STEPS // 2, STEPS):
    s = samples[step]
    print(f"  {step:5d}  {s['VmRSS']:9.1f}  {s['VmHWM']:9.1f}")
  print(f"  drift after warm-up: RSS {drift:+.1f} MB "
        f"({100 * drift / warm['VmRSS']:+.1f} %), peak "
        f"{end['VmHWM'] - warm['VmHWM']:+.1f} MB; second half RSS "
        f"{end['VmRSS'] - half['VmRSS']:+.1f} MB")
  limit = max(0.10 * warm["VmRSS"], 200.0)
  assert drift < limit, (drift, limit)
  assert end["VmHWM"] - warm["VmHWM"] < limit
