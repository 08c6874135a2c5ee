"""YouTube-8M Segments (frame-level, segment-rated) as "yt8m_segments".

Records are the official v3 frame-level TFRecords of tf.train.SequenceExample:
  context:       "id" bytes, "labels" int64 list (video-level),
                 "segment_labels" int64 list, "segment_start_times" int64
                 list (in frames, 1 frame a second), "segment_scores" float
                 list (1 = the class is in the segment, 0 = it is not);
  feature lists: "rgb" (1024 bytes a frame) and "audio" (128 bytes a frame),
                 quantised; we dequantise as YouTube-8M's `utils.Dequantize`
                 (x * 4/255 + 4/512 - 2), PCA-whitened as distributed.
Input kind "frames": "frames" f32 [T, D] (D = 1024 for rgb, 1152 with
`config.data.yt8m_features = ("rgb", "audio")`).

`config.data.yt8m_unit` chooses what one example is:
  "segment" (default): one rated 5-second segment (frames [5, D] from its
    start time, zero-padded at a video's end); labels = the classes rated 1,
    label_mask = 1 exactly for the rated classes (the rest is unknown);
  "video": a whole video (frames [max_frames, D], `config.data.max_frames`,
    default 300: truncated or zero-padded at the end); labels = its
    video-level labels and positively rated segment classes, all known.
The classes are the sorted label ids that occur in the rated segments
("segment") or in any label list ("video") of either split; their names
come from vocabulary.csv (columns Index, ..., Name) when it is there.
Index order: file name order, then record order, then segment start time.

Accepted layout under config.data.dir = DIR: DIR, DIR/yt8m_segments or
DIR/yt8m holding either train/ and test/ folders of *.tfrecord files, or
the official validate*.tfrecord files in one folder (optionally under
validate/), split by file: every 10th file in name order (the 1st, 11th,
...) is "test", the rest "train" (the official test partition has no
public segment labels). The host index (labels, start times, frame counts)
is cached in DIR/.../yt8m_index_cache.json when that folder is writable.
"""
from __future__ import annotations

import csv
import io
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import DatasetInfo, register

FEATURE_DIMS = {"rgb": 1024, "audio": 128}
SEGMENT_FRAMES = 5
TEST_EVERY = 10
_ROOT_NAMES = ("yt8m_segments", "yt8m")
_CACHE = "yt8m_index_cache.json"
_CACHE_VERSION = 1


def dequantize(quantized, max_value: float = 2.0, min_value: float = -2.0):
  """uint8 codes -> floats, exactly YouTube-8M's `utils.Dequantize`."""
  scale = (max_value - min_value) / 255.0
  bias = (max_value - min_value) / 512.0 + min_value
  return tf.cast(quantized, tf.float32) * scale + bias


def parse_record(serialized, features=("rgb",)):
  """One serialized SequenceExample -> (context dict, frames f32 [T, D])."""
  context, sequence = tf.io.parse_single_sequence_example(
      serialized,
      context_features={
          "id": tf.io.FixedLenFeature([], tf.string),
          "labels": tf.io.VarLenFeature(tf.int64),
          "segment_labels": tf.io.VarLenFeature(tf.int64),
          "segment_start_times": tf.io.VarLenFeature(tf.int64),
          "segment_scores": tf.io.VarLenFeature(tf.float32)},
      sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string)
                         for name in features})
  parts = []
  for name in features:
    codes = tf.io.decode_raw(sequence[name], tf.uint8)        # [T, d]
    parts.append(dequantize(tf.reshape(codes, [-1, FEATURE_DIMS[name]])))
  context = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor)
                 else v) for k, v in context.items()}
  return context, tf.concat(parts, axis=1)


# ----------------------------------------------------------------------------
# Finding the files.

def _tfrecords(directory: str) -> list[str]:
  return sorted(os.path.join(directory, n) for n in files.list_files(directory)
                if n.endswith(".tfrecord"))


def split_files(root: str) -> dict[str, list[str]] | None:
  """{"train": [...], "test": [...]} or None if root is not a layout we read."""
  train, test = (_tfrecords(os.path.join(root, d)) for d in ("train", "test"))
  if train and test:
    return {"train": train, "test": test}
  for directory in (root, os.path.join(root, "validate")):
    rated = [p for p in _tfrecords(directory)
             if os.path.basename(p).startswith("validate")]
    if len(rated) >= 2:
      return {"train": [p for i, p in enumerate(rated) if i % TEST_EVERY],
              "test": rated[::TEST_EVERY]}
  return None


def _missing_message(base: str) -> str:
  found = files.found_under(base, _ROOT_NAMES)
  return (
      f"yt8m_segments: no YouTube-8M segment-rated TFRecords under "
      f"config.data.dir={base!r}. Expected {base} or {base}/yt8m_segments "
      "holding train/ and test/ folders of *.tfrecord files, or the official "
      "frame-level validate*.tfrecord files (every 10th becomes the test "
      "split). On a machine with internet: mkdir -p "
      f"{base}/yt8m_segments/validate && cd {base}/yt8m_segments/validate && "
      "curl data.yt8m.org/download.py | partition=3/frame/validate mirror=us "
      "python (about 3,800 files; a few shards are enough to try it), and "
      "optionally vocabulary.csv from https://research.google.com/youtube8m/"
      f"csv/2/vocabulary.csv next to them. Found: {found}.")


def class_names_for(root: str, class_ids) -> tuple[str, ...]:
  """Names from vocabulary.csv (Index -> Name), else "class_<id>"."""
  names = {}
  for candidate in (os.path.join(root, "vocabulary.csv"),
                    os.path.join(os.path.dirname(root), "vocabulary.csv")):
    if os.path.isfile(candidate):
      reader = csv.DictReader(io.StringIO(files.read_text(candidate)))
      for row in reader:
        try:
          names[int(row["Index"])] = row.get("Name") or f"class_{row['Index']}"
        except (KeyError, TypeError, ValueError):
          raise files.AnnotationError(
              f"{candidate}: expected a CSV with columns Index and Name "
              "(YouTube-8M's vocabulary.csv)") from None
      break
  out, seen = [], set()
  for c in class_ids:
    name = names.get(int(c), f"class_{int(c)}")
    out.append(name if name not in seen else f"{name} ({int(c)})")
    seen.add(out[-1])
  return tuple(out)


# ----------------------------------------------------------------------------
# Host index: one pass over the records' context (cached).

def _signature(paths: list[str]) -> list:
  return [[os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns]
          for p in paths]


def index_records(paths: list[str]) -> list[dict]:
  """Per record: id, labels, segment labels/starts/scores, frame count."""
  ds = tf.data.TFRecordDataset(paths)

  def context_of(serialized):
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64),
            "segment_labels": tf.io.VarLenFeature(tf.int64),
            "segment_start_times": tf.io.VarLenFeature(tf.int64),
            "segment_scores": tf.io.VarLenFeature(tf.float32)},
        sequence_features={"rgb": tf.io.FixedLenSequenceFeature([],
                                                                tf.string)})
    out = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v)
           for k, v in context.items()}
    out["num_frames"] = tf.shape(sequence["rgb"])[0]
    return out

  records = []
  try:
    for r in ds.map(context_of).as_numpy_iterator():
      records.append({
          "id": r["id"].decode("utf-8", errors="replace"),
          "labels": r["labels"].tolist(),
          "segment_labels": r["segment_labels"].tolist(),
          "segment_start_times": r["segment_start_times"].tolist(),
          "segment_scores": [float(s) for s in r["segment_scores"]],
          "num_frames": int(r["num_frames"])})
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    raise files.AnnotationError(
        f"yt8m_segments: cannot parse the records of {len(paths)} file(s) "
        f"starting with {paths[0]}: {str(e).splitlines()[0][:200]}. Expected "
        "YouTube-8M frame-level SequenceExamples (context id, labels, "
        "segment_labels, segment_start_times, segment_scores; feature list "
        "rgb).") from None
  return records


_RECORD_LISTS = {"labels": int, "segment_labels": int,
                 "segment_start_times": int, "segment_scores": (int, float)}


def _valid_records(records) -> bool:
  """Whether a cached index has the shape `index_records` returns (a cache
  damaged on disk is indexed again rather than trusted)."""
  def numbers(values, kind):
    return isinstance(values, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values)
  return isinstance(records, list) and all(
      isinstance(r, dict)
      and set(r) == {"id", "num_frames", *_RECORD_LISTS}
      and isinstance(r["id"], str) and numbers([r["num_frames"]], int)
      and all(numbers(r[k], kind) for k, kind in _RECORD_LISTS.items())
      and len(r["segment_labels"]) == len(r["segment_start_times"])
      == len(r["segment_scores"]) for r in records)


def cached_index(root: str, split: str, paths: list[str]) -> list[dict]:
  cache = os.path.join(root, _CACHE)
  signature = _signature(paths)
  stored = {}
  if os.path.isfile(cache):
    try:
      with open(cache) as f:
        stored = json.load(f)
    except (OSError, ValueError, RecursionError):
      stored = {}
  if not isinstance(stored, dict):
    stored = {}
  entry = stored.get(split) if stored.get("version") == _CACHE_VERSION else None
  if (isinstance(entry, dict) and entry.get("signature") == signature
      and _valid_records(entry.get("records"))):
    return entry["records"]
  if entry is not None:
    logging.warning("yt8m_segments: the cached index of %s in %s is stale or "
                    "damaged; indexing the records again.", split, cache)
  records = index_records(paths)
  stored = stored if stored.get("version") == _CACHE_VERSION else {
      "version": _CACHE_VERSION}
  stored[split] = {"signature": signature, "records": records}
  try:
    with open(cache + ".tmp", "w") as f:
      json.dump(stored, f)
    os.replace(cache + ".tmp", cache)
  except OSError as e:           # read-only data: index again next time
    logging.info("yt8m_segments: not caching the index (%s).", e)
  return records


def examples_of(records: list[dict], unit: str, column: dict[int, int]):
  """Example tables in index order from the record index.

  Returns (record int64 [N] (position in the split's record stream), start
  int64 [N], labels uint8 [N, C], label_mask uint8 [N, C], ids [N]).
  """
  num_classes = len(column)
  rows = []
  for r, record in enumerate(records):
    if unit == "video":
      labels = np.zeros(num_classes, np.uint8)
      positives = list(record["labels"]) + [
          c for c, s in zip(record["segment_labels"], record["segment_scores"])
          if s >= 0.5]
      labels[[column[c] for c in positives if c in column]] = 1
      rows.append((r, 0, labels, np.ones(num_classes, np.uint8),
                   record["id"]))
      continue
    by_start: dict[int, list] = {}
    for c, start, score in zip(record["segment_labels"],
                               record["segment_start_times"],
                               record["segment_scores"]):
      if c in column:
        by_start.setdefault(int(start), []).append((column[c], score))
    for start in sorted(by_start):
      labels = np.zeros(num_classes, np.uint8)
      mask = np.zeros(num_classes, np.uint8)
      for k, score in by_start[start]:
        mask[k] = 1
        labels[k] = max(labels[k], np.uint8(score >= 0.5))
      rows.append((r, start, labels, mask, f"{record['id']}:{start}"))
  if not rows:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64),
            np.zeros((0, num_classes), np.uint8),
            np.zeros((0, num_classes), np.uint8), [])
  record, start, labels, mask, ids = zip(*rows)
  return (np.asarray(record, np.int64), np.asarray(start, np.int64),
          np.stack(labels), np.stack(mask), list(ids))


class SegmentSource:
  """A DatasetSource over YouTube-8M TFRecords (input_kind "frames")."""

  def __init__(self, info: DatasetInfo, paths: dict, tables: dict,
               features: tuple[str, ...], calls: int):
    self.info, self._paths, self._tables = info, paths, tables
    self._features, self._calls = features, calls

  def examples(self, split: str) -> tf.data.Dataset:
    if split not in self._tables:
      raise ValueError(f"yt8m_segments has splits {sorted(self._tables)}; got "
                       f"split={split!r}.")
    record_of, start, labels, mask, ids = self._tables[split]
    length, dim = self.info.frames_shape
    num_records = int(record_of.max()) + 1 if len(record_of) else 0
    first = np.zeros(max(num_records, 1), np.int64)
    count = np.bincount(record_of, minlength=num_records).astype(np.int64)
    first[:num_records] = np.cumsum(count) - count
    first_t, count_t = tf.constant(first), tf.constant(
        count if num_records else np.zeros(1, np.int64))
    start_t, labels_t, mask_t = (tf.constant(start), tf.constant(labels),
                                 tf.constant(mask))
    ids_t = files.tf_strings(ids)
    features = self._features

    records = tf.data.TFRecordDataset(self._paths[split]).take(
        num_records).enumerate()
    records = records.filter(lambda r, _: tf.gather(count_t, r) > 0)

    def parse(r, serialized):
      return r, parse_record(serialized, features)[1]

    def expand(r, frames):
      def one(i):
        window = frames[tf.gather(start_t, i):][:length]
        window = tf.pad(window, [[0, length - tf.shape(window)[0]], [0, 0]])
        return {"frames": tf.ensure_shape(window, [length, dim]),
                "labels": tf.gather(labels_t, i),
                "label_mask": tf.gather(mask_t, i),
                "id": tf.gather(ids_t, i), "index": i}
      begin = tf.gather(first_t, r)
      return tf.data.Dataset.range(begin, begin + tf.gather(count_t, r)).map(
          one)

    return records.map(parse, num_parallel_calls=self._calls,
                       deterministic=True).flat_map(expand)


def _load_local(root: str, paths: dict, data_config):
  unit = data_config.get("yt8m_unit", "segment")
  if unit not in ("segment", "video"):
    raise ValueError(f"config.data.yt8m_unit={unit!r}: expected 'segment' or "
                     "'video'.")
  features = tuple(data_config.get("yt8m_features", ("rgb",)))
  unknown = [f for f in features if f not in FEATURE_DIMS]
  if unknown or not features:
    raise ValueError(f"config.data.yt8m_features={features}: choose from "
                     f"{tuple(FEATURE_DIMS)} (e.g. ('rgb',) or ('rgb', "
                     "'audio')).")
  records = {split: cached_index(root, split, p) for split, p in paths.items()}
  ids = set()
  for split_records in records.values():
    for record in split_records:
      ids.update(record["segment_labels"])
      if unit == "video":
        ids.update(record["labels"])
  class_ids = sorted(ids)
  if not class_ids:
    raise files.AnnotationError(
        f"yt8m_segments: no labels in the records under {root}; segment "
        "rated files (validate*.tfrecord of the v3 frame-level release) carry "
        "segment_labels.")
  column = {c: k for k, c in enumerate(class_ids)}
  tables = {split: examples_of(r, unit, column) for split, r in records.items()}
  for split, table in tables.items():
    if not len(table[0]):
      raise files.AnnotationError(
          f"yt8m_segments: the {split} split ({len(paths[split])} file(s) "
          f"under {root}) has no {unit} with labels.")
  length = (SEGMENT_FRAMES if unit == "segment"
            else int(data_config.get("max_frames", 300)))
  dim = sum(FEATURE_DIMS[f] for f in features)
  info = DatasetInfo(
      name="yt8m_segments", class_names=class_names_for(root, class_ids),
      input_kind="frames",
      num_examples={s: len(t[0]) for s, t in tables.items()},
      train_labels=tables["train"][2], train_label_mask=tables["train"][3],
      frames_shape=(length, dim))
  return SegmentSource(info, paths, tables, features,
                       files.parallel_calls(data_config))


@register("yt8m_segments")
def load_yt8m_segments(data_config):
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  for candidate in (base, *(os.path.join(base, n) for n in _ROOT_NAMES)):
    paths = split_files(candidate) if os.path.isdir(candidate) else None
    if paths:
      return _load_local(candidate, paths, data_config)
  raise files.DatasetNotFoundError(_missing_message(base))
