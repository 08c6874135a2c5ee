"""PNG plots of a run's results: PR curves, per-class AP bars, co-occurrence."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def precision_recall_curve(scores, targets):
  """Precision and recall at every cut of one class's ranking.

  scores, targets: [N]. Returns (precision [N], recall [N]) over the
  descending-score ranking.
  """
  order = np.argsort(-scores, kind="stable")
  hits = targets[order] > 0
  tp = np.cumsum(hits)
  precision = tp / np.arange(1, len(hits) + 1)
  recall = tp / max(hits.sum(), 1)
  return precision, recall


def pr_curves(scores, targets, class_names: Sequence[str], path: str,
              max_classes: int = 10) -> str:
  """Micro-averaged PR curve plus the `max_classes` most frequent classes."""
  fig, ax = plt.subplots(figsize=(6, 5))
  p, r = precision_recall_curve(scores.ravel(), targets.ravel())
  ax.plot(r, p, color="black", lw=2, label="all (micro)")
  frequent = np.argsort(-targets.sum(0))[:max_classes]
  for k in frequent:
    if targets[:, k].sum() == 0:
      continue
    p, r = precision_recall_curve(scores[:, k], targets[:, k])
    ax.plot(r, p, lw=1, alpha=0.7, label=class_names[k])
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, loc="lower left")
  ax.set_title("Precision-recall (test)")
  return _save(fig, path)


def per_class_ap(ap, class_names: Sequence[str], path: str) -> str:
  """Bar chart of per-class AP (NaN classes shown empty)."""
  fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(ap)), 4))
  ax.bar(np.arange(len(ap)), np.nan_to_num(ap), color="tab:blue")
  ax.set_xticks(np.arange(len(ap)))
  ax.set_xticklabels(class_names, rotation=90, fontsize=7)
  ax.set_ylabel("AP")
  ax.set_ylim(0, 1)
  ax.set_title(f"Per-class AP (mean {np.nanmean(ap):.3f})")
  return _save(fig, path)


def heatmap(matrix, class_names: Sequence[str], path: str,
            title: str = "") -> str:
  """A [C, C] matrix (co-occurrence, conditional probability) as an image."""
  fig, ax = plt.subplots(figsize=(6, 5))
  im = ax.imshow(matrix, cmap="viridis")
  ax.set_xticks(np.arange(len(class_names)))
  ax.set_yticks(np.arange(len(class_names)))
  ax.set_xticklabels(class_names, rotation=90, fontsize=6)
  ax.set_yticklabels(class_names, fontsize=6)
  fig.colorbar(im, ax=ax)
  ax.set_title(title)
  return _save(fig, path)


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
