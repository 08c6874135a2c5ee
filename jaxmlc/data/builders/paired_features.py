"""Paired feature vectors from .npz files ("paired_features").

How BOLD5000 / Vim-2 (image features + fMRI voxels) and users' own paired
modalities come in: x1 is the assisting (image) modality as a feature
vector, x2 the paired non-image modality. Examples carry x1 as "features"
and x2 as "modality2" (input_kind "features"), so DMACN's image generators
are MLPs and its non-image generators read "modality2".

Layout under config.data.dir = DIR (or DIR/paired_features):
  train.npz   x1 [N, M], x2 [N, D], labels [N, C] in {0, 1}, one row per
              paired example in the same order; optional class_names [C]
              (strings) and label_mask [N, C] (1 = known; default all 1);
  test.npz    the same arrays (class_names, if any, must match train's);
  unlabeled.npz (optional) x1 [Nu, M]: unpaired images (any other array in
              it is ignored), the "unlabeled" split;
or, instead of train/test, one paired.npz split at random into test
(config.data.paired_test_fraction, default 0.2) and train with
config.data.paired_split_seed (default 0).
Arrays are read with allow_pickle=False: save strings as a numpy unicode
array (np.array(names)), not objects.

Bad input: arrays of different lengths, non-binary labels, NaN/Inf
features, a file that is not an .npz are refused (AnnotationError naming
the file) whatever config.data.on_bad_example says -- which rows pair up
cannot be guessed; an empty split follows the policy ("fail": refused,
"skip": a warning, and the trainer refuses a run that needs that split).
"""
from __future__ import annotations

import os
from typing import Mapping
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import DatasetInfo, register

NAME = "paired_features"
_ROOT_NAMES = ("paired_features",)
_PAIRED = ("x1", "x2", "labels")


def _missing_message(base: str) -> str:
  return (
      f"{NAME}: no paired features under config.data.dir={base!r}. Expected "
      f"{base} or {base}/paired_features holding train.npz and test.npz "
      "(arrays x1 [N, M] image features, x2 [N, D] the non-image modality, "
      "labels [N, C] in {0, 1}; optional class_names [C]), or one paired.npz "
      "split by config.data.paired_test_fraction, plus an optional "
      "unlabeled.npz with x1 [Nu, M]. Make them with numpy, e.g. "
      "np.savez(f'{dir}/train.npz', x1=image_features, x2=voxels, "
      "labels=multi_hot, class_names=np.array(names)); for BOLD5000 "
      "(https://bold5000.github.io/download.html) or Vim-2 "
      "(https://crcns.org/data-sets/vc/vim-2) extract the stimulus-image "
      "features and the voxel responses on a machine with the data. "
      f"Found: {files.found_under(base, _ROOT_NAMES)}.")


def _looks_local(root: str) -> bool:
  has = lambda name: os.path.isfile(os.path.join(root, name))
  return (has("train.npz") and has("test.npz")) or has("paired.npz")


def read_npz(path: str, required, optional=()) -> dict[str, np.ndarray]:
  """The named arrays of an .npz; a clear error for missing ones."""
  try:
    with np.load(path, allow_pickle=False) as data:
      names = set(data.files)
      missing = [k for k in required if k not in names]
      if missing:
        raise files.AnnotationError(
            f"{path} has no array(s) {missing} (it has {sorted(names)}). "
            f"Fix: save {list(required)} with np.savez.")
      return {k: np.asarray(data[k]) for k in (*required, *optional)
              if k in names}
  except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError,
          zipfile.BadZipFile, zlib.error) as e:   # numpy's and zipfile's
    # errors on a damaged file (RuntimeError: encrypted members)
    if isinstance(e, files.AnnotationError):
      raise
    raise files.AnnotationError(
        f"{path} cannot be read as an .npz of numeric arrays ({e}). Fix: "
        "write it with np.savez and plain (non-object) arrays.") from None


def check_paired(arrays: Mapping[str, np.ndarray], where: str) -> None:
  """x1, x2, labels (and label_mask) must be 2-D with one row per example."""
  for key in (*_PAIRED, "label_mask"):
    dtype = arrays[key].dtype if key in arrays else None
    if dtype is not None and not (dtype == bool or np.issubdtype(
        dtype, np.integer) or np.issubdtype(dtype, np.floating)):
      raise files.AnnotationError(
          f"{where}: {key} has dtype {dtype}; expected a real number or bool "
          "array (strings, complex or dates cannot be model inputs or "
          "labels).")
    if key in arrays and arrays[key].ndim != 2:
      raise files.AnnotationError(
          f"{where}: {key} has shape {arrays[key].shape}; expected a 2-D "
          "array, one row per paired example.")
  rows = {k: arrays[k].shape[0] for k in (*_PAIRED, "label_mask")
          if k in arrays}
  if len(set(rows.values())) != 1:
    found = ", ".join(f"{k} has {n} rows" for k, n in rows.items())
    raise files.AnnotationError(
        f"{where}: the paired arrays differ in length ({found}). Every array "
        "needs one row per paired example, in the same order. Fix: drop the "
        "unpaired rows, or move unpaired x1 rows to unlabeled.npz.")
  labels = arrays["labels"]
  if not np.all((labels == 0) | (labels == 1)):
    raise files.AnnotationError(
        f"{where}: labels must be multi-hot in {{0, 1}}; found values "
        f"{np.unique(labels)[:8].tolist()}.")
  for key in ("x1", "x2"):
    if not np.all(np.isfinite(arrays[key])):
      raise files.AnnotationError(f"{where}: {key} has NaN or Inf entries.")
  if "label_mask" in arrays and arrays["label_mask"].shape != labels.shape:
    raise files.AnnotationError(
        f"{where}: label_mask has shape {arrays['label_mask'].shape}, "
        f"labels {labels.shape}; they must match.")


def _check_widths(splits: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Every split's x1 (and paired x2, labels) widths equal train's."""
  train = splits["train"]
  for split, arrays in splits.items():
    for key in ("x1", "x2", "labels"):
      if key in arrays and arrays[key].shape[1] != train[key].shape[1]:
        raise files.AnnotationError(
            f"{NAME}: {split} {key} is {arrays[key].shape[1]}-d but train "
            f"{key} is {train[key].shape[1]}-d; every split must use the same "
            "feature extraction and label set.")


def _class_names(arrays, num_classes: int, where: str) -> tuple[str, ...]:
  if "class_names" not in arrays:
    return tuple(f"class_{i}" for i in range(num_classes))
  names = tuple(str(n) for n in np.asarray(arrays["class_names"]).reshape(-1))
  if len(names) != num_classes:
    raise files.AnnotationError(
        f"{where}: class_names has {len(names)} names but labels has "
        f"{num_classes} columns.")
  return names


def _split_paired(arrays, fraction: float, seed: int):
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.paired_test_fraction={fraction}: expected "
                     "a fraction in (0, 1).")
  n = arrays["labels"].shape[0]
  order = np.random.default_rng(seed).permutation(n)
  num_test = max(1, int(round(fraction * n)))
  test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
  pick = lambda rows: {k: (v[rows] if k != "class_names" else v)
                       for k, v in arrays.items()}
  return pick(train), pick(test)


class PairedFeatureSource:
  """A DatasetSource over in-memory arrays (input_kind "features")."""

  def __init__(self, info: DatasetInfo, arrays: Mapping[str, dict]):
    self.info, self._arrays = info, dict(arrays)

  def examples(self, split: str) -> tf.data.Dataset:
    if split not in self._arrays:
      raise ValueError(f"{NAME} has splits {sorted(self._arrays)}; got "
                       f"split={split!r}.")
    arrays = dict(self._arrays[split])
    arrays["id"] = files.tf_strings(arrays["id"])
    return tf.data.Dataset.from_tensor_slices(arrays)


def _examples(split: str, arrays, num_classes: int) -> dict:
  """Schema arrays of one split ("unlabeled": x1 only, zero labels)."""
  n = arrays["x1"].shape[0]
  out = {"features": arrays["x1"].astype(np.float32)}
  if split == "unlabeled":
    out["labels"] = np.zeros((n, num_classes), np.uint8)
    out["label_mask"] = np.zeros((n, num_classes), np.uint8)
  else:
    out["modality2"] = arrays["x2"].astype(np.float32)
    out["labels"] = arrays["labels"].astype(np.uint8)
    out["label_mask"] = (arrays["label_mask"].astype(np.uint8)
                         if "label_mask" in arrays
                         else np.ones((n, num_classes), np.uint8))
  out["id"] = [f"{split}_{i:06d}" for i in range(n)]
  out["index"] = np.arange(n, dtype=np.int64)
  return out


@register(NAME)
def load_paired_features(data_config) -> PairedFeatureSource:
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  root = files.find_root(base, _ROOT_NAMES, _looks_local)
  if root is None:
    raise files.DatasetNotFoundError(_missing_message(base))
  path = lambda name: os.path.join(root, name)
  optional = ("class_names", "label_mask")
  if os.path.isfile(path("train.npz")):
    splits = {s: read_npz(path(f"{s}.npz"), _PAIRED, optional)
              for s in ("train", "test")}
  else:
    paired = read_npz(path("paired.npz"), _PAIRED, optional)
    check_paired(paired, path("paired.npz"))
    train, test = _split_paired(
        paired, float(data_config.get("paired_test_fraction", 0.2)),
        int(data_config.get("paired_split_seed", 0)))
    splits = {"train": train, "test": test}
  policy = files.bad_example_policy(data_config)
  for split in ("train", "test"):
    check_paired(splits[split], f"{NAME} {split} split ({root})")
    if not len(splits[split]["labels"]):
      bad = files.BadExamples(NAME, split, policy)
      bad(f"the split is empty: no rows in {root}")
      bad.log_summary()
  if os.path.isfile(path("unlabeled.npz")):
    unlabeled = read_npz(path("unlabeled.npz"), ("x1",))
    if unlabeled["x1"].ndim != 2 or not len(unlabeled["x1"]):
      raise files.AnnotationError(
          f"{path('unlabeled.npz')}: x1 has shape {unlabeled['x1'].shape}; "
          "expected [Nu, M] with Nu >= 1.")
    splits["unlabeled"] = unlabeled
  _check_widths(splits)
  num_classes = splits["train"]["labels"].shape[1]
  class_names = _class_names(splits["train"], num_classes, path("train.npz"))
  if "class_names" in splits["test"]:
    test_names = _class_names(splits["test"], num_classes, path("test.npz"))
    if test_names != class_names:
      raise files.AnnotationError(
          f"{NAME}: test class_names differ from train's ({test_names[:4]}... "
          f"vs {class_names[:4]}...); both splits must use one label order.")
  arrays = {s: _examples(s, a, num_classes) for s, a in splits.items()}
  info = DatasetInfo(
      name=NAME, class_names=class_names, input_kind="features",
      num_examples={s: len(a["index"]) for s, a in arrays.items()},
      train_labels=arrays["train"]["labels"],
      train_label_mask=arrays["train"]["label_mask"],
      feature_dims={"features": int(splits["train"]["x1"].shape[1]),
                    "modality2": int(splits["train"]["x2"].shape[1])})
  return PairedFeatureSource(info, arrays)


__all__ = ["PairedFeatureSource", "check_paired", "load_paired_features",
           "read_npz"]
