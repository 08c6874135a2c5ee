"""Look at a dataset: sizes, label statistics, example grid, co-occurrence.

  python -m jaxmlc.data.summary --name synthetic_scenes --variant default \
      --dir data --out runs/data_summary

Prints the summary and writes OUT/examples.png and OUT/cooccurrence.png.
"""
from __future__ import annotations

import argparse
import os
import textwrap

import numpy as np


def label_statistics(labels: np.ndarray) -> dict:
  """labels: {0,1} [N, C] -> frequency f64 [C], mean labels per image,
  cooccurrence P(a, b) [C, C], conditional P(b | a) [C, C] (row a)."""
  y = labels.astype(np.float64)
  frequency = y.mean(axis=0)
  joint = y.T @ y / max(len(y), 1)
  conditional = joint / np.maximum(frequency[:, None], 1e-12)
  return {"frequency": frequency, "labels_per_image": y.sum(1).mean(),
          "joint": joint, "conditional": conditional}


def top_pairs(stats: dict, k: int = 10) -> list[tuple[int, int]]:
  """The k unordered pairs (a, b), a < b, that co-occur most often."""
  joint = np.triu(stats["joint"], 1)
  flat = np.argsort(-joint, axis=None, kind="stable")[:k]
  return [tuple(int(i) for i in np.unravel_index(f, joint.shape))
          for f in flat if joint.flat[f] > 0]


def format_summary(info, stats: dict, num_pairs: int = 10) -> str:
  names = info.class_names
  lines = [f"dataset {info.name}: {info.num_classes} classes, input "
           f"{info.input_kind}"
           + (f" {info.image_size}px" if info.image_size else "")
           + (f" {info.frames_shape}" if info.frames_shape else ""),
           "splits: " + ", ".join(f"{s} {n}" for s, n in
                                 sorted(info.num_examples.items())),
           "feature vectors: " + (", ".join(
               f"{k} [{d}]" for k, d in info.feature_dims.items()) or "none"),
           f"train labels per image: {stats['labels_per_image']:.2f}",
           "train label frequency:"]
  width = max(len(n) for n in names)
  for c in np.argsort(-stats["frequency"], kind="stable"):
    lines.append(f"  {names[c]:<{width}}  {stats['frequency'][c]:.3f}")
  lines.append("top co-occurring pairs (P(a,b); P(b|a) vs P(b); P(a|b) vs "
               "P(a); lift = P(a,b) / (P(a) P(b))):")
  f, cond, joint = stats["frequency"], stats["conditional"], stats["joint"]
  for a, b in top_pairs(stats, num_pairs):
    lift = joint[a, b] / max(f[a] * f[b], 1e-12)
    lines.append(
        f"  {names[a]} + {names[b]}: {joint[a, b]:.3f}; "
        f"{cond[a, b]:.2f} vs {f[b]:.2f}; {cond[b, a]:.2f} vs {f[a]:.2f}; "
        f"lift {lift:.1f}")
  lines.append("most avoided pairs (P(b|a) vs P(b); independence predicts "
               ">= 20 together):")
  for a, b in avoided_pairs(stats, len(info.train_labels)):
    lift = joint[a, b] / max(f[a] * f[b], 1e-12)
    lines.append(f"  {names[a]} + {names[b]}: {cond[a, b]:.3f} vs "
                 f"{f[b]:.2f}; lift {lift:.2f}")
  return "\n".join(lines)


def avoided_pairs(stats: dict, num_examples: int, k: int = 5):
  """The k pairs a < b with the lowest lift among those independence
  expects together at least 20 times."""
  f, joint = stats["frequency"], stats["joint"]
  expected = np.outer(f, f)
  lift = np.where(np.triu(expected * num_examples >= 20, 1),
                  joint / np.maximum(expected, 1e-12), np.inf)
  flat = np.argsort(lift, axis=None, kind="stable")[:k]
  return [tuple(int(i) for i in np.unravel_index(x, lift.shape))
          for x in flat if np.isfinite(lift.flat[x])]


def _label_text(names, labels, width=22) -> str:
  text = ", ".join(names[c] for c in np.nonzero(labels)[0]) or "(none)"
  return "\n".join(textwrap.wrap(text, width))


def plot_examples(examples: list[dict], class_names, path: str, cols: int = 4):
  """PNG grid of examples (image, or frames as a heatmap) with labels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = int(np.ceil(len(examples) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.9 * rows),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, ex in zip(axes.flat, examples):
    if "image" in ex:
      ax.imshow(ex["image"], interpolation="nearest")
    elif "frames" in ex:
      ax.imshow(ex["frames"], aspect="auto", cmap="coolwarm")
    ax.set_title(_label_text(class_names, ex["labels"]), fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_cooccurrence(stats: dict, class_names, path: str):
  """PNG heatmap of P(column | row) with the marginals on the diagonal."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(class_names)
  size = max(6.0, 0.32 * n + 3)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  matrix = stats["conditional"].copy()
  np.fill_diagonal(matrix, stats["frequency"])   # 1 would flatten the scale
  im = ax.imshow(matrix, cmap="viridis", vmin=0)
  ax.set_xticks(range(n), class_names, rotation=90, fontsize=6)
  ax.set_yticks(range(n), class_names, fontsize=6)
  ax.set_xlabel("b")
  ax.set_ylabel("a")
  ax.set_title("train P(b | a); diagonal P(a)")
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def summarize(data_config, out_dir: str, num_examples: int = 16) -> str:
  """Prints nothing; returns the summary text and writes the two PNGs."""
  from jaxmlc.data import info as dataset_info
  source = dataset_info.load(data_config)
  info = source.info
  stats = label_statistics(info.train_labels)
  os.makedirs(out_dir, exist_ok=True)
  ds = source.examples(data_config.train_split).take(num_examples)
  examples = list(ds.as_numpy_iterator())
  plot_examples(examples, info.class_names,
                os.path.join(out_dir, "examples.png"))
  plot_cooccurrence(stats, info.class_names,
                    os.path.join(out_dir, "cooccurrence.png"))
  return format_summary(info, stats)


def main(argv=None):
  from jaxmlc.config_base import base_config
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--name", default="synthetic_scenes")
  parser.add_argument("--variant", default="default")
  parser.add_argument("--dir", default="data", help="config.data.dir")
  parser.add_argument("--out", default="runs/data_summary")
  parser.add_argument("--examples", type=int, default=16)
  args = parser.parse_args(argv)
  data_config = base_config().data
  data_config.name, data_config.variant = args.name, args.variant
  data_config.dir = args.dir
  print(summarize(data_config, args.out, args.examples))
  print(f"wrote {os.path.join(args.out, 'examples.png')} and "
        f"{os.path.join(args.out, 'cooccurrence.png')}")


if __name__ == "__main__":
  main()
