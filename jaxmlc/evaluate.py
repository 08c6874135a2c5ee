"""Evaluation over a split and prediction on image files."""
from __future__ import annotations

import csv
import glob
import json
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxmlc import metrics, plots
from jaxmlc.data import pipeline

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def gather_to_host(x) -> np.ndarray:
  """A global array sharded over processes -> the whole array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_split(config, source, split: str, predict_step, variables,
                  to_global: Callable, gather: Callable = gather_to_host):
  """Scores of a whole split in index order.

  Returns (scores [N, C], labels [N, C], label_mask [N, C]) as numpy, with the
  eval padding removed.
  """
  scores, labels, masks = [], [], []
  batches = pipeline.eval_batches(
      config, source, split, process_index=jax.process_index(),
      process_count=jax.process_count())
  for host_batch in batches:
    examples = host_batch["labeled"]
    global_examples = to_global(examples)
    s = gather(predict_step(variables, global_examples))
    valid = gather(global_examples["valid"]) > 0
    scores.append(s[valid])
    labels.append(gather(global_examples["labels"])[valid])
    masks.append(gather(global_examples["label_mask"])[valid])
  return (np.concatenate(scores), np.concatenate(labels),
          np.concatenate(masks))


def evaluate_split(config, source, split, predict_step, variables, to_global,
                   gather=gather_to_host):
  """metrics.summarize on a split; also returns what the plots need."""
  scores, labels, mask = predict_split(config, source, split, predict_step,
                                       variables, to_global, gather)
  summary = metrics.summarize(scores, labels, mask)
  per_class = dict(scores=scores, labels=labels, mask=mask,
                   ap=metrics.average_precision(scores, labels, mask))
  return summary, per_class


def write_plots(per_class: dict, class_names: Sequence[str],
                plot_dir: str) -> list[str]:
  """PR curves and per-class AP bars of the final evaluation."""
  labels = per_class["labels"] * per_class["mask"]
  return [
      plots.pr_curves(per_class["scores"], labels, class_names,
                      os.path.join(plot_dir, "pr_curves.png")),
      plots.per_class_ap(per_class["ap"], class_names,
                         os.path.join(plot_dir, "per_class_ap.png")),
  ]


# ----------------------------------------------------------------------------
# Prediction on image files (launch/main.py --mode=predict).

def load_images(paths: Sequence[str], image_size: int,
                normalize: str = "imagenet") -> np.ndarray:
  """JPEG/PNG files -> f32 [N, S, S, 3], resized as the eval pipeline does."""
  from PIL import Image
  out = np.zeros((len(paths), image_size, image_size, 3), np.float32)
  for n, path in enumerate(paths):
    try:
      with Image.open(path) as im:
        im = im.convert("RGB").resize((image_size, image_size),
                                      Image.BILINEAR)
        x = np.asarray(im, np.float32) / 255.0
    except OSError as e:
      raise ValueError(f"Cannot read image {path!r} ({e}). Pass only image "
                       "files (JPEG or PNG) to --predict_input.") from e
    if normalize == "imagenet":
      x = (x - IMAGENET_MEAN) / IMAGENET_STD
    out[n] = x
  return out


def expand_inputs(pattern: str) -> list[str]:
  """A directory (its images) or a glob -> sorted image paths."""
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*")
  exts = (".jpg", ".jpeg", ".png", ".bmp")
  paths = sorted(p for p in glob.glob(pattern) if p.lower().endswith(exts))
  if not paths:
    raise ValueError(f"--predict_input={pattern!r} matched no image files "
                     f"(looked for {', '.join(exts)}).")
  return paths


def predict_files(paths, predict: Callable[[np.ndarray], np.ndarray],
                  class_names: Sequence[str], image_size: int, out_dir: str,
                  batch_size: int, normalize: str = "imagenet",
                  top_k: int = 5, threshold: float = 0.5) -> dict:
  """Writes predictions.csv and predictions.json: top labels per image.

  predict: f32 [B, S, S, 3] -> probabilities [B, C] (B = batch_size; the
  last batch is padded).
  """
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    images = load_images(chunk, image_size, normalize)
    pad = batch_size - len(chunk)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                                images.dtype)])
    probs = np.asarray(predict(images))[:len(chunk)]
    for path, p in zip(chunk, probs):
      top = np.argsort(-p, kind="stable")[:top_k]
      rows.append(dict(
          image=path,
          top=[dict(label=class_names[k], probability=float(p[k]))
               for k in top],
          predicted=[class_names[k] for k in np.flatnonzero(p >= threshold)]))
  with open(os.path.join(out_dir, "predictions.json"), "w") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "rank", "label", "probability"])
    for row in rows:
      for rank, t in enumerate(row["top"], 1):
        w.writerow([row["image"], rank, t["label"], f"{t['probability']:.6f}"])
  return dict(count=len(rows), out_dir=out_dir)
