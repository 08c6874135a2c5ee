"""Data-parallel efficiency on paper: ResNet-101 HST, 448 px, 8/64/256 devices.

  .venv/bin/python bench/scaling_estimate.py [--per_device_batch 32]

Nothing here runs on an accelerator (none was lent): the gradient volume is
counted from the real model (jax.eval_shape of configs/hst_coco.py's SARL,
ResNet-101, C = 80), the compute time per step is derived from the FLOPs
and an assumed utilisation, and the interconnects are the assumptions
printed. Per step each device all-reduces the whole gradient once (pure
data parallelism, replicated parameters, as jaxmlc.train does today):

  ring all-reduce  t = 2 (n - 1) / n * bytes / bw  +  2 (n - 1) * latency
  hierarchical (GPU pods): reduce-scatter over NVLink in the node, ring
    all-reduce of each 1/8 shard across nodes over each GPU's own NIC,
    all-gather in the node.
  efficiency = t_compute / (t_compute + t_exposed), t_exposed = the
    communication not hidden behind the backward pass (2/3 of compute):
    "no overlap" = all of it, "overlap" = max(0, t_comm - backward).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# ResNet-101 forward at 224 px: 7.8 GMAC = 15.6 GFLOP; x4 pixels at 448;
# x3 for forward + backward. The SARL head adds little next to it.
FLOPS_PER_IMAGE = 15.6e9 * 4 * 3

# (name, peak bf16 dense FLOP/s, assumed MFU, intra-group bus bandwidth
#  B/s, group size, inter-group bandwidth per device B/s, latency per ring
#  step s) -- public peak figures, utilisation and latencies assumed.
SYSTEMS = (
    ("H100 nodes: NVLink 8x + 400 Gb/s IB per GPU", 989e12, 0.35, 400e9, 8,
     50e9, 8e-6),
    ("TPU v4-like 3D torus ICI (ring over one axis, 100 GB/s)", 275e12,
     0.45, 100e9, 10**9, 100e9, 3e-6),
)


def hst_parameter_count() -> int:
  from jaxmlc.methods import hst
  config = importlib.import_module("configs.hst_coco").get_config()
  model = hst.build_model(config, 80)
  c = 80
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 448, 448, 3)), jnp.zeros((c, 300)),
      jnp.zeros((c, c))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def ring(n, nbytes, bw, latency):
  if n <= 1:
    return 0.0
  return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency


def all_reduce_seconds(n, nbytes, system):
  _, _, _, bw_in, group, bw_out, latency = system
  if n <= group:
    return ring(n, nbytes, bw_in, latency)
  # Reduce-scatter + all-gather in the node (each half of a ring), then the
  # shard's all-reduce across the n / group nodes.
  inner = ring(group, nbytes, bw_in, latency)
  return inner + ring(n // group, nbytes / group, bw_out, latency)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_device_batch", type=int, default=32)
  parser.add_argument("--grad_bytes", type=int, default=4,
                      help="4: float32 gradients (today), 2: bf16")
  args = parser.parse_args()
  params = hst_parameter_count()
  nbytes = params * args.grad_bytes
  print(f"HST ResNet-101 (C=80): {params / 1e6:.1f}M parameters, "
        f"{nbytes / 1e6:.0f} MB of gradients per all-reduce "
        f"({args.grad_bytes}-byte); per-device batch {args.per_device_batch} "
        f"at 448 px = {FLOPS_PER_IMAGE * args.per_device_batch / 1e12:.1f} "
        "TFLOP per step.")
  for system in SYSTEMS:
    name, peak, mfu = system[:3]
    compute = FLOPS_PER_IMAGE * args.per_device_batch / (peak * mfu)
    backward = compute * 2 / 3
    print(f"\n{name}: compute {compute * 1e3:.1f} ms/step "
          f"(peak {peak / 1e12:.0f} TFLOP/s x MFU {mfu})")
    print(f"  {'devices':>7s} {'all-reduce ms':>13s} {'eff. no overlap':>15s} "
          f"{'eff. overlap':>12s}")
    for n in (8, 64, 256):
      comm = all_reduce_seconds(n, nbytes, system)
      no_overlap = compute / (compute + comm)
      overlap = compute / (compute + max(0.0, comm - backward))
      print(f"  {n:7d} {comm * 1e3:13.1f} {no_overlap:15.1%} {overlap:12.1%}")


if __name__ == "__main__":
  main()
