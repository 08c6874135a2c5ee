"""Times metrics.summarize on a large evaluation set against scikit-learn.

  .venv/bin/python bench/bench_metrics.py [--samples 100000 --classes 1000]

Scores are float32 in [0, 1] (positives drawn higher, so AP is informative);
float32 uniform draws repeat, so every column also has tied scores. The
reference is the usual per-class loop of
`sklearn.metrics.average_precision_score`, which covers AP only, while
`summarize` also computes VOC AP, the threshold and top-3 metrics and the
Hamming loss. Prints both times, their ratio, and the largest per-class AP
difference.
"""
import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score

from jaxmlc import metrics


def make_data(samples, classes, positive_rate, seed):
  rng = np.random.default_rng(seed)
  targets = (rng.random((samples, classes), dtype=np.float32)
             < positive_rate).astype(np.float32)
  scores = rng.random((samples, classes), dtype=np.float32)
  np.sqrt(scores, out=scores, where=targets > 0)  # positives score higher
  return scores, targets


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--samples", type=int, default=100_000)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--positive_rate", type=float, default=0.02)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  scores, targets = make_data(args.samples, args.classes, args.positive_rate,
                              args.seed)
  print(f"data: {args.samples} x {args.classes} float32 scores, "
        f"{targets.mean():.2%} positives")

  start = time.perf_counter()
  summary = metrics.summarize(scores, targets)
  summarize_s = time.perf_counter() - start
  start = time.perf_counter()
  ap = metrics.average_precision(scores, targets)
  ap_s = time.perf_counter() - start

  start = time.perf_counter()
  reference = np.array([
      average_precision_score(targets[:, k], scores[:, k])
      for k in range(args.classes)])
  sklearn_s = time.perf_counter() - start

  print(f"metrics.summarize (all metrics):       {summarize_s:8.2f} s")
  print(f"metrics.average_precision (AP only):   {ap_s:8.2f} s")
  print(f"sklearn average_precision_score loop:  {sklearn_s:8.2f} s")
  print(f"speed-up, sklearn AP loop / summarize: "
        f"{sklearn_s / summarize_s:8.1f}x")
  print(f"speed-up, sklearn AP loop / AP:        {sklearn_s / ap_s:8.1f}x")
  print(f"max |AP - sklearn AP| over classes:    "
        f"{np.max(np.abs(ap - reference)):.3g}")
  print(f"|mAP - sklearn mAP|:                   "
        f"{abs(summary['mAP'] - reference.mean()):.3g}")
  print("summary:", {k: (round(v, 4) if isinstance(v, float) else
                         {kk: round(vv, 4) for kk, vv in v.items()})
                     for k, v in summary.items()})


if __name__ == "__main__":
  main()
