"""Shared parts of the real image datasets (coco2014, voc2007, vg200).

A source is indexed once on the host: annotations parsed, image folders
listed, image files probed, one `SplitIndex` per split in its fixed order.
`examples(split)` then reads and decodes the images in tf.data in that
order ("image": uint8 [H, W, 3] at the file's own size), and
`encoded_examples(split)` gives the file bytes instead ("image": string),
which is what `data/pipeline.py` keeps in memory for these datasets. Image
sizes vary, so `DatasetInfo.image_size` is None (the pipeline resizes).

Bad examples follow `config.data.on_bad_example`:
- At index time: a missing image file, an annotation for an image that is
  not listed, a class outside the class list, an unparsable annotation, an
  empty split, and an image file that is not whole (no image signature, or
  a JPEG without its end marker that also fails to decode: truncated
  downloads). "fail" raises `BadExampleError` naming the file before any
  training starts; "skip" drops the example and logs one absl warning per
  split with the count and the first problems. `num_examples` and
  `train_labels` count what is left, so they always agree with the stream.
- At read time (a file changed since indexing, or corrupt inside with an
  intact header and end marker): the read runs under
  `Dataset.ignore_errors`, and a sequential check of the contiguous "index"
  finds the hole it leaves. "fail" raises InvalidArgumentError naming the
  file. "skip" puts in its place a blank example (a 1x1 black image, the
  same index and labels, label_mask all 0, so it weighs nothing in losses
  and metrics) and prints a counted line to stderr (`tf.print`: no Python
  runs in the input graph). The stream keeps N contiguous indices, so
  nothing downstream breaks mid-epoch.
In encoded mode the read decodes each JPEG once at 1/8 scale (a full
entropy decode, a trivial IDCT) and any other image in full, so an image
corrupt inside meets the policy here, at start-up, never later in the
pipeline's decode mid-epoch.
"""
from __future__ import annotations

from concurrent import futures
import dataclasses
import functools
import io
import os
import sys
from typing import Callable, Iterable, Mapping, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from jaxmlc.data.info import DatasetInfo

_POLICIES = ("fail", "skip")
_SHOWN_PROBLEMS = 5
_PROBE_THREADS = 16          # file probes are I/O bound (network disks)
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_OTHER_STARTS = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class DatasetNotFoundError(FileNotFoundError):
  """No dataset on disk in a layout we read; the message says how to get it."""


class AnnotationError(ValueError):
  """An annotation or list file cannot be used; the message names the file."""


class BadExampleError(AnnotationError):
  """One bad example met under `on_bad_example="fail"`."""


def bad_example_policy(data_config) -> str:
  policy = data_config.get("on_bad_example", "fail")
  if policy not in _POLICIES:
    raise ValueError(f"config.data.on_bad_example={policy!r}; expected one of "
                     f"{_POLICIES}.")
  return policy


def parallel_calls(data_config) -> int:
  calls = data_config.get("parallel_calls", -1)
  return tf.data.AUTOTUNE if calls is None or calls < 0 else max(1, int(calls))


class BadExamples:
  """Applies the bad-example policy to the problems found in one split.

  Call it with a one-line problem that names the file: under "fail" it
  raises `BadExampleError`, under "skip" it counts; `log_summary()` warns.
  """

  def __init__(self, dataset: str, split: str, policy: str):
    self.dataset, self.split, self.policy = dataset, split, policy
    self.count = 0
    self.shown: list[str] = []

  def __call__(self, problem: str) -> None:
    if self.policy == "fail":
      raise BadExampleError(
          f"{self.dataset} ({self.split} split): {problem}. Fix or restore "
          "that file, or set config.data.on_bad_example='skip' to skip such "
          "examples with a counted warning.")
    self.count += 1
    if len(self.shown) < _SHOWN_PROBLEMS:
      self.shown.append(problem)

  def log_summary(self) -> None:
    if self.count:
      more = "; ..." if self.count > len(self.shown) else ""
      logging.warning("%s (%s split): skipped %d bad example(s) "
                      "(config.data.on_bad_example='skip'): %s%s",
                      self.dataset, self.split, self.count,
                      "; ".join(self.shown), more)


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """One split, indexed on the host, in its fixed order.

  ids: N example ids (the image file name without extension).
  labels: uint8 [N, C] multi-hot.
  label_mask: uint8 [N, C], 1 = known / evaluated.
  paths: N image files (local layouts); empty for TFDS layouts.
  positions: int64 [N], each example's record position in the TFDS split
    (TFDS layouts; the records between them are dropped).
  """
  ids: Sequence[str]
  labels: np.ndarray
  label_mask: np.ndarray
  paths: Sequence[str] = ()
  positions: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.ids)


def finish_split(ids: Sequence[str], labels, label_mask, num_classes: int,
                 bad: BadExamples, where: str, paths: Sequence[str] = (),
                 **extra) -> SplitIndex:
  """Packs the kept examples of a split.

  With `paths`, each image file is probed first (`keep_readable`) and the
  examples whose file is not whole go to `bad`. An empty split is itself a
  bad example.
  """
  ids, labels, label_mask = list(ids), list(labels), list(label_mask)
  if paths:
    keep = keep_readable(paths, bad)
    ids, labels, label_mask, paths = (
        [x for x, k in zip(column, keep) if k]
        for column in (ids, labels, label_mask, paths))
  if not ids:
    bad(f"the split is empty: no usable image in {where}")
  bad.log_summary()
  shape = (len(ids), num_classes)
  return SplitIndex(
      ids=ids, labels=np.asarray(labels, np.uint8).reshape(shape),
      label_mask=np.asarray(label_mask, np.uint8).reshape(shape),
      paths=list(paths), **extra)


def make_info(name: str, class_names: Sequence[str],
              splits: Mapping[str, SplitIndex],
              image_size: int | None = None) -> DatasetInfo:
  """image_size: the stored size when every file has it, else None -- the
  pipeline's convention; real photos differ in size, so None (resized by
  the pipeline)."""
  return DatasetInfo(
      name=name, class_names=tuple(class_names), input_kind="image",
      num_examples={split: len(index) for split, index in splits.items()},
      train_labels=splits["train"].labels,
      train_label_mask=splits["train"].label_mask, image_size=image_size)


# ------------------------------------------------------------ files on disk

def find_root(base: str, subdirs: Iterable[str],
              looks_right: Callable[[str], bool]) -> str | None:
  """The first of `base`, `base/<subdir>`... that `looks_right`."""
  for candidate in (base, *(os.path.join(base, s) for s in subdirs)):
    if os.path.isdir(candidate) and looks_right(candidate):
      return candidate
  return None


def describe_dir(path: str) -> str:
  """What is there, for a message: 'X does not exist' / 'X holds: a, b'."""
  if not os.path.exists(path):
    return f"{path} does not exist"
  if not os.path.isdir(path):
    return f"{path} is not a directory"
  names = sorted(os.listdir(path))
  if not names:
    return f"{path} is empty"
  shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
  return f"{path} holds: {shown}"


def found_under(base: str, subdirs: Iterable[str]) -> str:
  """What is in `base` and in those of its `subdirs` that exist."""
  paths = [base] + [p for p in (os.path.join(base, s) for s in subdirs)
                    if os.path.exists(p)]
  return "; ".join(describe_dir(p) for p in paths)


def list_files(directory: str) -> set[str]:
  """File names in `directory` (one listing: cheap even for 100k images)."""
  try:
    return set(os.listdir(directory))
  except (FileNotFoundError, NotADirectoryError):
    return set()


def read_text(path: str) -> str:
  try:
    with open(path, "rb") as f:
      return f.read().decode("utf-8")
  except UnicodeDecodeError as e:
    raise AnnotationError(f"{path} is not UTF-8 text ({e}).") from None


def image_file_problem(path: str) -> str | None:
  """None if `path` looks like a whole image, else what is wrong with it.

  Reads a few bytes at each end: an image signature, and for JPEG the end
  marker. A JPEG without it (truncated, or with trailing bytes) is decoded
  in full to decide.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(max(os.fstat(f.fileno()).st_size - 2, 0))
      tail = f.read(2)
  except OSError as e:
    return f"cannot read image {path} ({e.strerror or e})"
  if head.startswith(_OTHER_STARTS):
    return None
  if not head.startswith(_JPEG_START):
    return (f"image {path} is not a JPEG/PNG/GIF/BMP file (it starts "
            f"{head[:4]!r})")
  if tail == _JPEG_END:
    return None
  try:
    decode_image(tf.io.read_file(path))
  except (tf.errors.OpError, ValueError):
    return f"image {path} is truncated or corrupt (no JPEG end marker)"
  return None


def keep_readable(paths: Sequence[str], bad: BadExamples) -> list[bool]:
  """Which image files pass `image_file_problem` (probed in parallel
  threads); the problems of the others go to `bad`."""
  if not paths:
    return []
  with futures.ThreadPoolExecutor(min(_PROBE_THREADS, len(paths))) as pool:
    problems = list(pool.map(image_file_problem, paths, chunksize=64))
  for problem in problems:
    if problem is not None:
      bad(problem)
  return [problem is None for problem in problems]


@functools.cache
def _blank_jpeg() -> bytes:
  """A 1x1 black JPEG: what stands in for an unreadable image."""
  buffer = io.BytesIO()
  Image.new("RGB", (1, 1)).save(buffer, "JPEG")
  return buffer.getvalue()


# ---------------------------------------------------------------- tf.data

def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """encoded: string scalar (JPEG, or PNG/GIF/BMP) -> uint8 [H, W, 3]."""
  return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                            expand_animations=False)


def tf_strings(values: Sequence[str]) -> tf.Tensor:
  return tf.constant(list(values), tf.string, shape=[len(values)])


def in_order(records: tf.data.Dataset, load_image, index: SplitIndex,
             names: Sequence[str], policy: str, calls: int, where: str,
             encoded: bool) -> tf.data.Dataset:
  """records -> schema examples in index order, read failures per `policy`.

  records: elements with "labels", "label_mask", "id", "index" (0..N-1,
    ascending) and what `load_image(record)` reads; it returns uint8
    [H, W, 3], or the checked file bytes when `encoded`.
  names: N strings naming each example's file in messages.
  """
  n, num_classes = len(index), index.labels.shape[1]
  keys = ("labels", "label_mask", "id", "index")

  def to_example(record):
    return dict({k: record[k] for k in keys}, image=load_image(record))

  examples = records.map(to_example, num_parallel_calls=calls,
                         deterministic=True).ignore_errors()
  blank_image = (tf.constant(_blank_jpeg()) if encoded
                 else tf.zeros([1, 1, 3], tf.uint8))
  labels, ids, table = (tf.constant(index.labels), tf_strings(index.ids),
                        tf.constant(list(names) or [""], tf.string))

  def blanks(first, stop):
    """Examples first..stop-1 as blanks: [M, ...] each, M = stop - first.
    Built inside `scan`, whose function holds the big tables once; a
    per-element dataset capturing them would copy them every time."""
    i = tf.range(tf.cast(first, tf.int64), tf.cast(stop, tf.int64))
    m = tf.size(i)
    safe = tf.minimum(i, max(n - 1, 0))   # i = n only for the sentinel
    return {
        "labels": (tf.gather(labels, safe) if n
                   else tf.zeros([m, num_classes], tf.uint8)),
        "label_mask": tf.zeros([m, num_classes], tf.uint8),
        "id": tf.gather(ids, safe) if n else tf.fill([m], ""),
        "index": i,
        "image": tf.tile(blank_image[None], tf.concat(
            [[m], tf.ones([tf.rank(blank_image)], tf.int32)], 0))}

  # A sentinel with index N lets the check see a hole at the very end.
  sentinel = {k: v[0] for k, v in blanks(n, n + 1).items()}
  examples = examples.concatenate(tf.data.Dataset.from_tensors(sentinel))

  def check(state, example):
    expected, skipped = state
    index_ = example["index"]
    missing = index_ - expected
    files = tf.strings.reduce_join(table[expected:tf.minimum(index_, n)],
                                   separator=", ")
    if policy == "fail":
      message = tf.strings.join([
          f"{where}: could not read or decode image ", files, " (index ",
          tf.strings.as_string(expected), "): the file is missing, corrupt or "
          "changed since indexing. Restore it, or set "
          "config.data.on_bad_example='skip'."])
      done = tf.debugging.Assert(tf.equal(missing, 0), [message], summarize=1)
    else:
      skipped += missing

      def report():
        line = tf.strings.join([
            f"WARNING {where}: unreadable image(s) ", files, " replaced by "
            "blank examples with label_mask 0 (", tf.strings.as_string(skipped),
            " so far in this pass; config.data.on_bad_example='skip')"])
        printed = tf.print(line, output_stream=sys.stderr)
        with tf.control_dependencies([printed]):
          return tf.constant(True)

      done = tf.cond(missing > 0, report, lambda: tf.constant(False))
    with tf.control_dependencies([done]):
      holes = blanks(expected, index_)
    return (index_ + 1, skipped), (holes, example)

  initial = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
  examples = examples.scan(initial, check).flat_map(
      lambda holes, example: tf.data.Dataset.from_tensor_slices(holes)
      .concatenate(tf.data.Dataset.from_tensors(example)))
  return examples.filter(lambda example: example["index"] < n)


def checked_bytes(encoded: tf.Tensor) -> tf.Tensor:
  """The bytes of an image file, failing (for `in_order`) unless it decodes.

  A JPEG is decoded at 1/8 scale: a header parse alone passes files whose
  scans reference missing tables or are out of sequence, which then fail
  in the pipeline's decode, mid-epoch. Anything else is decoded in full.
  """
  is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), _JPEG_START)
  ok = tf.cond(
      is_jpeg,
      lambda: tf.reduce_all(tf.shape(tf.io.decode_jpeg(encoded, ratio=8)) > 0),
      lambda: tf.reduce_all(tf.shape(decode_image(encoded)) > 0))
  with tf.control_dependencies([tf.debugging.Assert(ok, ["empty image"])]):
    return tf.identity(encoded)


class _Source:
  """What the local and TFDS sources share: split lookup and the two reads."""

  info: DatasetInfo

  def _split(self, split: str) -> SplitIndex:
    if split not in self._splits:
      raise ValueError(
          f"{self.info.name} has no split {split!r}; it has "
          f"{', '.join(sorted(self._splits))}.")
    return self._splits[split]

  def examples(self, split: str) -> tf.data.Dataset:
    """Schema examples of `split` in index order; "image" uint8 [H, W, 3]."""
    return self._read(split, encoded=False)

  def encoded_examples(self, split: str) -> tf.data.Dataset:
    """As `examples`, but "image" is the image file's bytes (tf.string)."""
    return self._read(split, encoded=True)


class ImageListSource(_Source):
  """A DatasetSource over local image files listed in a per-split index."""

  def __init__(self, info: DatasetInfo, splits: Mapping[str, SplitIndex],
               policy: str, calls: int):
    self.info, self._splits = info, dict(splits)
    self._policy, self._calls = policy, calls

  def _read(self, split: str, encoded: bool) -> tf.data.Dataset:
    index = self._split(split)
    records = tf.data.Dataset.from_tensor_slices({
        "path": tf_strings(index.paths), "labels": index.labels,
        "label_mask": index.label_mask, "id": tf_strings(index.ids),
        "index": np.arange(len(index), dtype=np.int64)})
    finish = checked_bytes if encoded else decode_image
    return in_order(records, lambda r: finish(tf.io.read_file(r["path"])),
                    index, index.paths, self._policy, self._calls,
                    f"{self.info.name} ({split} split)", encoded)


class TfdsSource(_Source):
  """A DatasetSource over a prepared TFDS dataset, filtered and relabelled.

  The host index keeps TFDS record positions (record order with
  shuffle_files=False); records between them are dropped in tf.data and
  labels come from the index, so info and examples agree by construction.
  """

  def __init__(self, info: DatasetInfo, builder, tfds_splits: Mapping[str, str],
               splits: Mapping[str, SplitIndex], policy: str, calls: int):
    self.info, self._builder = info, builder
    self._tfds_splits, self._splits = dict(tfds_splits), dict(splits)
    self._policy, self._calls = policy, calls

  def _read(self, split: str, encoded: bool) -> tf.data.Dataset:
    index = self._split(split)
    n = len(index)
    positions = np.asarray(index.positions, np.int64)
    rank = np.full([int(positions.max()) + 1 if n else 0], -1, np.int64)
    rank[positions] = np.arange(n)
    rank_table = tf.constant(rank, tf.int64, shape=[len(rank)])
    labels, masks = tf.constant(index.labels), tf.constant(index.label_mask)
    ids = tf_strings(index.ids)

    records = tfds_records(self._builder, self._tfds_splits[split])

    def to_record(position, example):
      i = tf.gather(rank_table, position)
      j = tf.maximum(i, 0)
      return {"image_bytes": example["image"], "labels": tf.gather(labels, j),
              "label_mask": tf.gather(masks, j), "id": tf.gather(ids, j),
              "index": i}

    records = (records.take(len(rank)).enumerate().map(to_record)
               .filter(lambda record: record["index"] >= 0))
    finish = checked_bytes if encoded else decode_image
    return in_order(records, lambda r: finish(r["image_bytes"]), index,
                    index.ids, self._policy, self._calls,
                    f"{self.info.name} ({split} split, TFDS)", encoded)


def tfds_records(builder, split: str) -> tf.data.Dataset:
  """The records of a TFDS split in their one fixed order, images undecoded.

  One file at a time (cycle length 1): the record order then cannot depend
  on tf.data options set downstream, and host indices are record positions.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import; TFDS only)
  return builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))


def tfds_prepared_builder(name: str, config: str, data_dir: str):
  """A prepared TFDS `name/config` under data_dir, or None (never downloads).

  The directory check comes first, so a missing dataset fails without
  importing TFDS.
  """
  config_dir = os.path.join(data_dir, name, config)
  versions = sorted(
      (v for v in list_files(config_dir)
       if os.path.isfile(os.path.join(config_dir, v, "dataset_info.json"))),
      key=_version_key)
  if not versions:
    return None
  import tensorflow_datasets as tfds  # noqa: PLC0415
  builder = tfds.builder(f"{name}/{config}", data_dir=data_dir)
  if builder.is_prepared():
    return builder
  # Prepared by another TFDS version: read it as it was written.
  return tfds.builder_from_directory(os.path.join(config_dir, versions[-1]))


def _version_key(version: str):
  return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))
