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
  source = _SOURCES[name](data_config)
  keep = int(data_config.get("train_examples", 0))
  return subset_train(source, data_config.get("train_split", "train"),
                      keep) if keep else source


class _TrainSubset:
  """`source` with its train split cut to the first `keep` examples (index
  order), so a scarce-label run is one config key, not a new dataset."""

  def __init__(self, source, split: str, keep: int):
    self._source, self._split, self._keep = source, split, keep
    info = source.info
    sizes = dict(info.num_examples, **{split: keep})
    self.info = dataclasses.replace(
        info, num_examples=sizes, train_labels=info.train_labels[:keep],
        train_label_mask=info.train_label_mask[:keep])

  def __getattr__(self, name):       # everything else: the full source's
    return getattr(self._source, name)

  def _cut(self, split, ds):
    if split != self._split:
      return ds
    keep = self._keep
    return ds.filter(lambda ex: ex["index"] < keep)

  def examples(self, split: str):
    return self._cut(split, self._source.examples(split))

  def encoded_examples(self, split: str):
    if not hasattr(self._source, "encoded_examples"):
      raise NotImplementedError(f"{self.info.name} stores decoded arrays.")
    return self._cut(split, self._source.encoded_examples(split))


def subset_train(source, split: str, keep: int):
  """The first `keep` examples of `split` (`config.data.train_examples`)."""
  size = source.info.num_examples.get(split)
  if size is None:
    raise ValueError(f"config.data.train_split={split!r} is not a split of "
                     f"{source.info.name} "
                     f"({', '.join(sorted(source.info.num_examples))}).")
  if not 0 < keep <= size:
    raise ValueError(f"config.data.train_examples={keep}: expected 1 to "
                     f"{size} (the size of {source.info.name}/{split}), or 0 "
                     "for the whole split.")
  return _TrainSubset(source, split, keep)
