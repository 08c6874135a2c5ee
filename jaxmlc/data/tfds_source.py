"""A `DatasetSource` over a TFDS builder prepared in `config.data.dir`.

`local_tfds_loader(BuilderClass)` is the loader of a dataset generated on
this machine (no download): on first use it prepares the builder config
named by `config.data.variant` into `config.data.dir`, later uses read it.
Builders must set `disable_shuffling=True` and write an int64 "index" equal
to the generation order, so TFDS reads back in index order.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxmlc.data.info import DatasetInfo

_LABEL_FIELDS = ("labels", "label_mask", "index")


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource:
  """A prepared TFDS builder seen as a `DatasetSource`."""
  info: DatasetInfo
  builder: tfds.core.DatasetBuilder

  def _check_split(self, split: str):
    if split not in self.info.num_examples:
      raise ValueError(
          f"{self.info.name} has no split {split!r}; it has "
          f"{', '.join(sorted(self.info.num_examples))}. Set "
          f"config.data.train_split / test_split to one of them.")

  def examples(self, split: str) -> tf.data.Dataset:
    """Schema examples of `split` in index order (decoded)."""
    self._check_split(split)
    return self.builder.as_dataset(split=split, shuffle_files=False)

  def encoded_examples(self, split: str) -> tf.data.Dataset:
    """As `examples`, but "image" is the stored PNG/JPEG bytes (tf.string).

    The pipeline keeps these bytes in memory for large splits and decodes
    after gathering a batch.
    """
    self._check_split(split)
    feature = self.builder.info.features["image"]
    if not isinstance(feature, tfds.features.Image):
      raise NotImplementedError(f"{self.info.name} stores raw image arrays, "
                                "not encoded files; use examples(split).")
    return self.builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()})


def labels_in_index_order(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labels, label_mask) uint8 [N, C] of `split`, other fields undecoded."""
  features = builder.info.features
  skip = {key: tfds.decode.SkipDecoding() for key in features.keys()
          if key not in _LABEL_FIELDS}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
  ds = ds.map(lambda ex: {key: ex[key] for key in _LABEL_FIELDS}).batch(4096)
  parts = list(ds.as_numpy_iterator())
  index = np.concatenate([p["index"] for p in parts])
  order = np.argsort(index, kind="stable")
  if not np.array_equal(index[order], np.arange(index.size)):
    raise ValueError(f"{builder.info.full_name}/{split}: the 'index' field is "
                     "not a permutation of 0..N-1; regenerate the dataset.")
  labels = np.concatenate([p["labels"] for p in parts])[order]
  mask = np.concatenate([p["label_mask"] for p in parts])[order]
  return labels.astype(np.uint8), mask.astype(np.uint8)


def dataset_info(builder, name: str) -> DatasetInfo:
  """Our `DatasetInfo` from a prepared TFDS builder."""
  features = builder.info.features
  keys = set(features.keys())
  input_kind = ("frames" if "frames" in keys else
                "features" if "features" in keys else "image")
  vectors = [k for k in keys
             if k in ("modality2", "features") or k.startswith("feat_")]
  image_size = None
  if input_kind == "image":
    height, width = features["image"].shape[:2]
    image_size = height if height == width and height is not None else None
  labels, mask = labels_in_index_order(builder, "train")
  return DatasetInfo(
      name=name,
      class_names=tuple(builder.info.metadata["class_names"]),
      input_kind=input_kind,
      num_examples={split: info.num_examples
                    for split, info in builder.info.splits.items()},
      train_labels=labels,
      train_label_mask=mask,
      image_size=image_size,
      feature_dims={k: int(features[k].shape[-1]) for k in sorted(vectors)},
      frames_shape=(tuple(int(d) for d in features["frames"].shape)
                    if input_kind == "frames" else None),
  )


def local_tfds_loader(builder_cls, name: str) -> Callable[..., TfdsSource]:
  """loader(data_config) -> TfdsSource for a locally generated builder."""
  variants = [c.name for c in builder_cls.BUILDER_CONFIGS]

  def loader(data_config) -> TfdsSource:
    variant = getattr(data_config, "variant", "default") or "default"
    if variant not in variants:
      raise ValueError(
          f"config.data.variant={variant!r} is not a variant of {name}. "
          f"Known variants: {', '.join(variants)}.")
    builder = builder_cls(config=variant, data_dir=data_config.dir)
    if not builder.is_prepared():
      # Generated from numpy or bundled files: never touches the network.
      # A file lock lets processes sharing config.data.dir (several
      # processes of one host) prepare it once; the rest wait and reuse it.
      os.makedirs(data_config.dir, exist_ok=True)
      with open(os.path.join(data_config.dir, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = builder_cls(config=variant, data_dir=data_config.dir)
        if not builder.is_prepared():
          builder.download_and_prepare(
              download_config=tfds.download.DownloadConfig(
                  try_download_gcs=False,
                  compute_stats=tfds.download.ComputeStatsMode.SKIP))
        fcntl.flock(lock, fcntl.LOCK_UN)
    return TfdsSource(info=dataset_info(builder, name), builder=builder)

  return loader
