"""What a dataset tells the rest of the library, and the name -> source registry."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Mapping, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset, read once on the host.

  train_labels: uint8 [N, C], the complete training labels in index order.
  train_label_mask: uint8 [N, C], the dataset's own mask (VOC difficult = 0);
    the known-label mask of partial-label training (`data.partial`) is
    applied on top of it by the trainer.
  feature_dims: width of every vector field, e.g. {"modality2": 256}.
  """
  name: str
  class_names: tuple[str, ...]
  input_kind: str                      # "image" | "features" | "frames"
  num_examples: Mapping[str, int]      # split -> size
  train_labels: np.ndarray
  train_label_mask: np.ndarray
  image_size: int | None = None
  feature_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
  frames_shape: tuple[int, int] | None = None   # (T, D) for "frames"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


class DatasetSource(Protocol):
  """A dataset as the pipeline sees it.

  `examples(split)` is a tf.data.Dataset of schema examples (see
  `jaxmlc/data/__init__.py`) in a fixed order, each with an int64 "index"
  (its position in the split), so shuffling and resuming are functions of
  (seed, epoch, index) alone.
  """
  info: DatasetInfo

  def examples(self, split: str):  # -> tf.data.Dataset
    ...


# name -> loader(data_config) -> DatasetSource
_SOURCES: dict[str, Callable[..., DatasetSource]] = {}


def register(name: str):
  def wrap(loader):
    _SOURCES[name] = loader
    return loader
  return wrap


def load(data_config) -> DatasetSource:
  """Opens `data_config.name`; an unknown name gets the closest suggestion."""
  import jaxmlc.data.builders  # noqa: F401  (registers the sources)
  name = data_config.name
  if name not in _SOURCES:
    close = difflib.get_close_matches(name, sorted(_SOURCES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"config.data.name={name!r} is not a known dataset.{hint} "
                     f"Known datasets: {', '.join(sorted(_SOURCES))}.")
  return _SOURCES[name](data_config)
