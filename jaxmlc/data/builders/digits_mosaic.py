"""`digits_mosaic`: 2x2 mosaics of scikit-learn's bundled handwritten digits.

Real pixels no one here drew: the 1,797 8x8 scans of `load_digits()` are
split once per digit class, 70% to a train pool and 30% to a test pool, so
no scan appears in both train and test. A mosaic fills each of its four
cells with a random scan of its split's pool (a cell stays empty with
probability 0.15, at least one is filled), upsampled bilinearly to half the
image side, white ink on black, grey RGB. Labels: the 10 digits present.
Split "unlabeled" draws from the train pool, with all-zero "labels" and
"label_mask". Images are stored as PNG (they compress well, and it gives the
pipeline a real encoded-image dataset).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CLASS_NAMES = tuple(str(d) for d in range(10))
_TRAIN_POOL_FRACTION = 0.7
_EMPTY_CELL_P = 0.15
_POOL_SEED = 0          # the train/test pool split is fixed, whatever the seed
_SPLIT_IDS = {"train": 0, "test": 1, "unlabeled": 2}


@functools.cache
def _digits():
  from sklearn.datasets import load_digits   # bundled with scikit-learn
  digits = load_digits()
  return digits.images.astype(np.float32), digits.target.astype(np.int64)


def source_pools() -> dict[str, np.ndarray]:
  """Indices into load_digits() of the train and test pools (disjoint)."""
  _, target = _digits()
  rng = np.random.default_rng(_POOL_SEED)
  train, test = [], []
  for digit in range(10):
    ids = rng.permutation(np.nonzero(target == digit)[0])
    cut = int(round(_TRAIN_POOL_FRACTION * ids.size))
    train.append(ids[:cut])
    test.append(ids[cut:])
  return {"train": np.sort(np.concatenate(train)),
          "test": np.sort(np.concatenate(test))}


@functools.cache
def _upsampled(cell: int) -> np.ndarray:
  """uint8 [1797, cell, cell]: every scan resized once (0..16 -> 0..255)."""
  images, _ = _digits()
  return np.stack([
      np.asarray(Image.fromarray(im * (255 / 16)).resize(
          (cell, cell), Image.BILINEAR)) for im in images
  ]).clip(0, 255).round().astype(np.uint8)


def generate_split(split: str, num_examples: int, image_size: int,
                   seed: int = 0) -> dict:
  """numpy arrays of one split.

  Returns {"image": uint8 [N, S, S, 3], "labels": uint8 [N, 10],
  "label_mask": uint8 [N, 10], "source_ids": int [N, 4] (indices into
  load_digits(), -1 = empty cell; not written to TFDS)}.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of "
                     f"{sorted(_SPLIT_IDS)}")
  if image_size % 2:
    raise ValueError(f"image_size must be even for a 2x2 mosaic, got "
                     f"{image_size}")
  rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
  pool = source_pools()["test" if split == "test" else "train"]
  source = pool[rng.integers(0, pool.size, (num_examples, 4))]
  empty = rng.random((num_examples, 4)) < _EMPTY_CELL_P
  empty[empty.all(axis=1), 0] = False
  source = np.where(empty, -1, source)
  cell = image_size // 2
  tiles = np.where(empty[..., None, None], 0,
                   _upsampled(cell)[np.maximum(source, 0)])   # [N, 4, c, c]
  grey = tiles.reshape(num_examples, 2, 2, cell, cell).transpose(
      0, 1, 3, 2, 4).reshape(num_examples, image_size, image_size)
  _, target = _digits()
  labels = np.zeros((num_examples, 10), np.uint8)
  rows = np.repeat(np.arange(num_examples), 4)
  present = ~empty.ravel()
  labels[rows[present], target[source.ravel()[present]]] = 1
  has_labels = split != "unlabeled"
  return {
      "image": np.repeat(grey[..., None], 3, axis=-1),
      "labels": labels * np.uint8(has_labels),
      "label_mask": np.full(labels.shape, has_labels, np.uint8),
      "source_ids": source,
  }


@dataclasses.dataclass(eq=False)
class DigitsMosaicConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_train: int = 3000
  num_unlabeled: int = 2000
  num_test: int = 1000
  seed: int = 0


class DigitsMosaic(tfds.core.GeneratorBasedBuilder):
  """2x2 mosaics of real 8x8 handwritten digits; labels = digits present."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DigitsMosaicConfig(name="default", description=(
          "64 px; train 3000 / unlabeled 2000 / test 1000.")),
      DigitsMosaicConfig(name="tiny", description=(
          "32 px; train 256 / unlabeled 128 / test 128 (tests)."),
                         image_size=32, num_train=256, num_unlabeled=128,
                         num_test=128),
      DigitsMosaicConfig(name="img32", description="32 px, default sizes.",
                         image_size=32),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    tensor = lambda: tfds.features.Tensor(
        shape=(10,), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(c.image_size, c.image_size, 3), encoding_format="png"),
            "labels": tensor(),
            "label_mask": tensor(),
            "id": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,       # index order = generation order
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager   # bundled with scikit-learn: nothing to download
    c = self.builder_config
    sizes = {"train": c.num_train, "unlabeled": c.num_unlabeled,
             "test": c.num_test}
    return {split: self._generate_examples(split, n)
            for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    c = self.builder_config
    arrays = generate_split(split, num_examples, c.image_size, c.seed)
    arrays.pop("source_ids")
    for i in range(num_examples):
      example = {key: a[i] for key, a in arrays.items()}
      yield i, dict(example, id=f"{split}_{i:06d}", index=i)
