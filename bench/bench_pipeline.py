"""Train-pipeline throughput on synthetic_scenes at 64 and 448 px.

  .venv/bin/python bench/bench_pipeline.py [--dir data --batch 128 --steps 200]

Cases (each: the labeled stream only, then with an unlabeled stream of the
same size, which doubles the images per step):
  64 px   variant "default" (stored at 64), no crop, flip.
  64 px   same with multi-scale crops (1.0, 0.875, 0.75, 0.66, 0.5).
  448 px  variant "img448" (stored at 448, 602 KB per image), multi-scale
          crops + flip, resized back to 448 (the ML-GCN recipe).
  448 px  variant "default" resized up to 448 by the same crop (what a
          448 px model trained on the default data would read).
The first run generates the variants into --dir (img448 takes a minute).
Prints examples/sec (labeled + unlabeled images) over --steps steps (a
fifth of them at 448 px) after a warm-up that fills the prefetch buffers;
what is buffered at the start (a few batches) is noise against that count.
"""
import argparse
import itertools
import os
import time

from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data import pipeline

SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)


def measure(data_dir, variant, image_size, crop_scales, batch, unlabeled,
            steps, warmup=8):
  c = base_config()
  c.data.dir, c.data.variant = data_dir, variant
  c.data.image_size = image_size
  c.data.crop_scales = crop_scales
  c.data.unlabeled_batch_size = unlabeled
  c.train.global_batch_size = batch
  source = data_info.load(c.data)
  it = pipeline.train_batches(c, source, None)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in itertools.islice(it, steps):
    pass
  seconds = time.perf_counter() - start
  return steps * (batch + unlabeled) / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default="data")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"{os.cpu_count()} CPU cores (load average {load}); global batch "
        f"{args.batch}")
  cases = [("default", 64, ()), ("default", 64, SCALES),
           ("img448", 448, SCALES), ("default", 448, SCALES)]
  for variant, size, scales in cases:
    for unlabeled in (0, args.batch):
      rate = measure(args.dir, variant, size, scales, args.batch, unlabeled,
                     args.steps if size == 64 else max(10, args.steps // 5))
      crop = "multi-scale crop" if scales else "no crop"
      stream = "+ unlabeled" if unlabeled else "labeled only"
      print(f"{variant:>8} -> {size:3d} px, {crop:16s} {stream:13s} "
            f"{rate:9.0f} examples/s")


if __name__ == "__main__":
  main()
