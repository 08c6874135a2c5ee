"""Jitted train step on CPU per method, against PyTorch eager (ResNet-18).

  .venv/bin/python bench/bench_train_step.py --dir data
  .venv/bin/python bench/bench_train_step.py --methods=baseline --size=448 \
      --batch=8 --steps=3

For each method: its synthetic config (configs/<method>_synthetic.py) with
model.backbone = resnet18 (width 64), data.image_size = --size, global
batch --batch (and an unlabeled batch of the same size where the config
streams unlabeled images); a method that cannot take ResNet-18 keeps its
config's backbone (said in the row). The step is jaxmlc.train's own
(`make_train_step`, jitted with the state donated, as train_and_evaluate
does), on one real batch from the pipeline, for the method's longest phase.
Compile time (lower + compile) is printed apart; the step time is the
median of --steps calls after --warmup, each ended by block_until_ready.

Then the same ResNet-18 step (forward, BCE, backward, Adam) in PyTorch
eager (bench/torch_step.py), run by --torch_python (the bench venv:
python3 -m venv .venv-bench && .venv-bench/bin/pip install torch numpy;
torch is no jaxmlc dependency), and the ratio JAX time / torch time for the
baseline (the like-for-like row: ResNet-18 + GAP + Dense, BCE, Adam).
The box is shared: the load average is printed next to each row, and the
CPU seconds per step (process time, both cores counted) with it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxmlc import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("baseline", "hst", "dmacn", "cma", "mscnn", "mmdl")


def patch_plain_convs():
  """Back to nn.Conv everywhere: the step before SmallOutputConv."""
  from jaxmlc.models import resnet

  def conv(features, kernel, stride, dtype, name):   # resnet._conv's layer
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=resnet._conv_init, dtype=dtype, name=name)
  resnet._conv = conv


def method_config(method: str, args, backbone: str | None):
  config = importlib.import_module(f"configs.{method}_synthetic").get_config()
  config.data.dir = args.dir
  config.data.variant = "img448" if args.size > 64 else "default"
  config.data.image_size = args.size
  config.train.global_batch_size = args.batch
  if config.data.unlabeled_batch_size:
    config.data.unlabeled_batch_size = args.batch
  config.train.progress = False
  if backbone is not None:
    config.model.backbone = backbone
    config.model.width = 64
  return config


def time_step(config, steps: int, warmup: int) -> dict:
  """Compile seconds and median step seconds of `config`'s jitted step."""
  with tempfile.TemporaryDirectory() as workdir:
    s = train.setup(config, workdir)
    state = jax.jit(s.init_fn)(s.rng, s.probe)
    batch = s.probe
    # The method's main phase: the one with the most epochs.
    index = max(range(len(s.phases)), key=lambda i: s.phases[i].epochs)
    fn = jax.jit(train.make_train_step(s.method, s.phases, index, "stop"),
                 donate_argnums=0)
    t = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    times = []
    cpu0 = time.process_time()
    for i in range(warmup + steps):
      if i == warmup:
        cpu0 = time.process_time()
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - t)
    params = sum(x.size for x in jax.tree.leaves(state["params"]))
    return dict(compile_s=compile_s, step_s=statistics.median(times),
                cpu_s=(time.process_time() - cpu0) / steps, params=params,
                phase=s.phases[index].name, loss=float(metrics["loss"]),
                unlabeled=int(config.data.unlabeled_batch_size))


def run_method(method: str, args) -> dict:
  try:
    config = method_config(method, args, "resnet18")
    row = time_step(config, args.steps, args.warmup)
    row["backbone"] = "resnet18"
  except Exception as e:   # noqa: BLE001 -- reported in the row
    config = method_config(method, args, None)
    row = time_step(config, args.steps, args.warmup)
    row["backbone"] = (f"{config.model.backbone} (resnet18: "
                       f"{type(e).__name__}: {str(e).splitlines()[0][:70]})")
  row["load"] = os.getloadavg()[0]
  return row


def run_torch(args) -> dict | None:
  python = args.torch_python
  if not os.path.exists(python):
    print(f"torch: {python} not found; create the bench venv (see the "
          "docstring) or pass --torch_python.")
    return None
  cmd = [python, os.path.join(ROOT, "bench", "torch_step.py"),
         f"--image_size={args.size}", f"--batch={args.batch}",
         f"--steps={args.steps}", f"--warmup={args.warmup}"]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default="data")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--torch_python",
                      default=os.path.join(ROOT, ".venv-bench", "bin",
                                           "python"))
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--plain_convs", action="store_true",
                      help="nn.Conv for every ResNet conv (no im2col path "
                      "for outputs smaller than the kernel): the old step")
  args = parser.parse_args()
  if args.plain_convs:
    patch_plain_convs()
  print(f"{os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; {args.size} px, global batch "
        f"{args.batch}; median of {args.steps} steps after {args.warmup}"
        + ("; plain nn.Conv everywhere (--plain_convs)"
           if args.plain_convs else "") + ".")
  print(f"  {'method':9s} {'phase':9s} {'params':>7s} {'compile s':>9s} "
        f"{'step s':>7s} {'ex/s':>7s} {'CPU s':>6s} {'load':>5s}  backbone")
  rows = {}
  # torch first and last: the box's load drifts, the two bracket the JAX rows.
  torch_rows = []
  if not args.no_torch:
    torch_rows.append(run_torch(args))
  for method in args.methods.split(","):
    r = rows[method] = run_method(method, args)
    print(f"  {method:9s} {r['phase']:9s} {r['params'] / 1e6:6.1f}M "
          f"{r['compile_s']:9.1f} {r['step_s']:7.3f} "
          f"{args.batch / r['step_s']:7.1f} {r['cpu_s']:6.2f} "
          f"{r['load']:5.1f}  {r['backbone']}"
          + (f" (+{r['unlabeled']} unlabeled)" if r["unlabeled"] else ""),
          flush=True)
  if not args.no_torch:
    torch_rows.append(run_torch(args))
  torch_rows = [t for t in torch_rows if t]
  if torch_rows:
    for t in torch_rows:
      print(f"  torch eager ResNet-18 ({t['torch']}, {t['threads']} threads, "
            f"Adam): step {t['step_s']:.3f} s, {t['ex_per_s']:.1f} ex/s, CPU "
            f"{t['cpu_s_per_step']:.2f} s, load {t['loadavg']:.1f}")
    if "baseline" in rows:
      best = min(t["step_s"] for t in torch_rows)
      cpu = min(t["cpu_s_per_step"] for t in torch_rows)
      b = rows["baseline"]
      print(f"  JAX baseline / torch step time: {b['step_s'] / best:.2f}x "
            f"(CPU seconds {b['cpu_s'] / cpu:.2f}x); target <= 0.8x")


if __name__ == "__main__":
  main()
