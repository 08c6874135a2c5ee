"""MIRFLICKR-25K image-tag pairs (+ MIRFLICKR-1M unlabeled images).

Registered as "mirflickr25k".

The standard multi-label / cross-modal setup (DCMH and DMACN): a tag
vocabulary of the tags occurring in at least `mirflickr_min_tag_count` (20)
of the 25,000 images, each image's tags as a binary bag-of-words
("modality2", 1386-d with the released tag files), the 24 concept labels
of the v080 annotations (the `<concept>_r1.txt` "relevant" subsets are not
separate labels), and only images with at least one label and at least one
vocabulary tag kept: 20,015 pairs. A seeded random `mirflickr_test_size`
(2000) of them is the test split, the rest train (optionally cut to
`mirflickr_train_size` paired examples; 0 = all).

Accepted layout under config.data.dir = DIR: DIR, DIR/mirflickr25k,
DIR/MIRFLICKR-25K or DIR/mirflickr holding
  the images im1.jpg ... im25000.jpg, in ROOT/mirflickr/ or ROOT/ itself
      (what mirflickr25k.zip unpacks to);
  their tags, <images>/meta/tags/tags<n>.txt, one tag a line;
  the annotations, <concept>.txt (image numbers, one a line), in
      ROOT/mirflickr25k_annotations_v080/, ROOT/annotations/ or
      <images>/annotations/.
The "unlabeled" split (unpaired images) is, in order of preference:
  config.data.mirflickr1m_dir, else ROOT/mirflickr1m (MIRFLICKR-1M
      unpacked: every *.jpg below it, in natural path order, the first
      `mirflickr_unlabeled_limit` of them (80,000 as the paper; 0 = all);
      the pipeline keeps the files' bytes in memory, ~8 GB for 80k);
  else the 25K images that the filtering dropped (no label or no
      vocabulary tag: unpaired for this task).
Images have different sizes: image_size is None and the pipeline resizes.
config.data.on_bad_example also covers the annotation files: an image
number outside 1..25000 and a labelled image whose file is missing are
refused ("fail") or dropped with a counted warning ("skip").
"""
from __future__ import annotations

import collections
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import DatasetInfo, register

NAME = "mirflickr25k"
NUM_IMAGES = 25000
CONCEPTS = ("animals", "baby", "bird", "car", "clouds", "dog", "female",
            "flower", "food", "indoor", "lake", "male", "night", "people",
            "plant_life", "portrait", "river", "sea", "sky", "structures",
            "sunset", "transport", "tree", "water")
_ROOT_NAMES = ("mirflickr25k", "MIRFLICKR-25K", "mirflickr")
_IMAGE_DIRS = ("mirflickr", "")
_ANNOTATION_DIRS = ("mirflickr25k_annotations_v080", "annotations")
_IMAGE_FILE = re.compile(r"^im(\d+)\.jpg$")
_URLS = ("http://press.liacs.nl/mirflickr/mirflickr25k.v3b/mirflickr25k.zip",
         "http://press.liacs.nl/mirflickr/mirflickr25k.v3b/"
         "mirflickr25k_annotations_v080.zip")


# ----------------------------------------------------------------------------
# Parsing (pure functions of file contents).

def parse_image_numbers(text: str, where: str) -> np.ndarray:
  """An annotation file -> int64 [n] image numbers (1-based)."""
  numbers = []
  for line_number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    if not (line.isascii() and line.isdigit()):   # int() refuses '²'
      raise files.AnnotationError(
          f"{where}: line {line_number} is {line[:40]!r}; expected an image "
          "number (im<n>.jpg), one a line")
    numbers.append(int(line))
  return np.asarray(numbers, np.int64)


def parse_tags(text: str) -> list[str]:
  """A tags<n>.txt -> its tags (one a line, blanks dropped, duplicates once)."""
  seen = []
  for line in text.splitlines():
    tag = line.strip()
    if tag and tag not in seen:
      seen.append(tag)
  return seen


def tag_vocabulary(tags_per_image, min_count: int) -> tuple[str, ...]:
  """Tags in at least `min_count` images, sorted (the BOW's word order)."""
  counts = collections.Counter(t for tags in tags_per_image for t in tags)
  return tuple(sorted(t for t, c in counts.items() if c >= min_count))


def bag_of_words(tags_per_image, vocabulary) -> np.ndarray:
  """uint8 [N, V]: 1 where the image has the vocabulary word."""
  column = {t: i for i, t in enumerate(vocabulary)}
  bow = np.zeros((len(tags_per_image), len(vocabulary)), np.uint8)
  for row, tags in enumerate(tags_per_image):
    hits = [column[t] for t in tags if t in column]
    bow[row, hits] = 1
  return bow


def concept_labels(numbers_per_concept, num_images: int,
                   bad: files.BadExamples | None = None,
                   names=None) -> np.ndarray:
  """uint8 [num_images, C] from each concept's (1-based) image numbers.

  An image number outside 1..num_images raises `AnnotationError`, or with
  `bad` goes there (raised or counted by its policy) and is dropped.
  names: C strings naming each concept's file in messages.
  """
  labels = np.zeros((num_images, len(numbers_per_concept)), np.uint8)
  for c, numbers in enumerate(numbers_per_concept):
    where = names[c] if names is not None else f"concept {c}"
    outside = (numbers < 1) | (numbers > num_images)
    for number in numbers[outside]:
      problem = (f"{where}: image number {int(number)} is outside 1.."
                 f"{num_images}")
      if bad is None:
        raise files.AnnotationError(problem)
      bad(problem)
    labels[numbers[~outside] - 1, c] = 1
  return labels


def natural_key(path: str):
  """Sort key: 'images/10/100.jpg' after 'images/9/99.jpg'."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


# ----------------------------------------------------------------------------
# Finding the files.

def _image_dir(root: str) -> str | None:
  for sub in _IMAGE_DIRS:
    folder = os.path.join(root, sub)
    if (os.path.isdir(os.path.join(folder, "meta", "tags"))
        and os.path.isfile(os.path.join(folder, "im1.jpg"))):
      return folder
  return None


def _annotation_dir(root: str, image_dir: str) -> str | None:
  for folder in (*(os.path.join(root, d) for d in _ANNOTATION_DIRS),
                 os.path.join(image_dir, "annotations")):
    names = files.list_files(folder)
    if any(n.endswith(".txt") and n[:-4] in CONCEPTS for n in names):
      return folder
  return None


def _looks_local(root: str) -> bool:
  image_dir = _image_dir(root)
  return image_dir is not None and _annotation_dir(root, image_dir) is not None


def _missing_message(base: str) -> str:
  return (
      f"{NAME}: no MIRFLICKR-25K under config.data.dir={base!r}. Expected "
      f"{base} (or {base}/mirflickr25k) holding mirflickr/im1.jpg ... "
      "im25000.jpg, mirflickr/meta/tags/tags<n>.txt and "
      "mirflickr25k_annotations_v080/<concept>.txt (animals.txt ... "
      "water.txt); optionally mirflickr1m/ (MIRFLICKR-1M images) as the "
      "unlabeled pool. Get them on a machine with internet from "
      "http://press.liacs.nl/mirflickr/mirdownload.html: "
      f"`wget {_URLS[0]} {_URLS[1]}`, then unzip both into {base}/"
      f"mirflickr25k. Found: {files.found_under(base, _ROOT_NAMES)}.")


def _unlabeled_paths(root: str, data_config) -> list[str] | None:
  """MIRFLICKR-1M image files (natural order, limited), or None."""
  configured = str(data_config.get("mirflickr1m_dir", "") or "")
  folder = (os.path.abspath(os.path.expanduser(configured)) if configured
            else os.path.join(root, "mirflickr1m"))
  if not os.path.isdir(folder):
    if configured:
      raise files.DatasetNotFoundError(
          f"{NAME}: config.data.mirflickr1m_dir={configured!r} is not a "
          "directory. Unpack the MIRFLICKR-1M image archives (images0.zip "
          "... from http://press.liacs.nl/mirflickr/mirdownload.html) there, "
          "or leave it empty to use the filtered-out 25K images.")
    return None
  paths = []
  for parent, _, names in os.walk(folder):
    paths += [os.path.join(parent, n) for n in names
              if n.lower().endswith((".jpg", ".jpeg"))]
  if not paths:
    raise files.DatasetNotFoundError(
        f"{NAME}: the MIRFLICKR-1M folder {folder} holds no .jpg files.")
  paths.sort(key=natural_key)
  limit = int(data_config.get("mirflickr_unlabeled_limit", 80000))
  return paths[:limit] if limit > 0 else paths


# ----------------------------------------------------------------------------
# The source.

class MirflickrSource(files.ImageListSource):
  """Local images as `ImageListSource`, plus each pair's tag BOW."""

  def __init__(self, info, splits, bows, policy, calls):
    super().__init__(info, splits, policy, calls)
    self._bows = dict(bows)      # split -> uint8 [N, V] in index order

  def _read(self, split: str, encoded: bool) -> tf.data.Dataset:
    examples = super()._read(split, encoded)
    if split not in self._bows:
      return examples
    table = tf.constant(self._bows[split])

    def with_tags(example):
      row = tf.gather(table, example["index"])
      return dict(example, modality2=tf.cast(row, tf.float32))

    return examples.map(with_tags)


def _read_pairs(image_dir: str, annotation_dir: str, min_count: int,
                bad: files.BadExamples):
  """Labels [25000, C], class names, vocabulary and BOW [25000, V]."""
  names = files.list_files(annotation_dir)
  class_names = tuple(c for c in CONCEPTS if f"{c}.txt" in names)
  missing = [c for c in CONCEPTS if c not in class_names]
  if missing:
    logging.warning("%s: %s has no annotation file for %s; using the %d "
                    "concepts found.", NAME, annotation_dir, missing,
                    len(class_names))
  numbers, paths = [], []
  for concept in class_names:
    path = os.path.join(annotation_dir, f"{concept}.txt")
    numbers.append(parse_image_numbers(files.read_text(path), path))
    paths.append(path)
  present = files.list_files(image_dir)
  num_images = max([int(m.group(1)) for m in map(_IMAGE_FILE.match, present)
                    if m] + [0])
  labels = concept_labels(numbers, max(num_images, NUM_IMAGES), bad, paths)
  tag_dir = os.path.join(image_dir, "meta", "tags")
  tag_files = files.list_files(tag_dir)
  tags = []
  for n in range(1, labels.shape[0] + 1):
    name = f"tags{n}.txt"
    tags.append(parse_tags(files.read_text(os.path.join(tag_dir, name)))
                if name in tag_files else [])
  vocabulary = tag_vocabulary(tags, min_count)
  if not vocabulary:
    raise files.AnnotationError(
        f"{NAME}: no tag occurs in {min_count} or more images under "
        f"{tag_dir}; lower config.data.mirflickr_min_tag_count.")
  return labels, class_names, vocabulary, bag_of_words(tags, vocabulary)


@register(NAME)
def load_mirflickr25k(data_config) -> MirflickrSource:
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  root = files.find_root(base, _ROOT_NAMES, _looks_local)
  if root is None:
    raise files.DatasetNotFoundError(_missing_message(base))
  policy = files.bad_example_policy(data_config)
  image_dir = _image_dir(root)
  annotation_dir = _annotation_dir(root, image_dir)
  # Problems found before the split (labels of missing images): both splits.
  bad = files.BadExamples(NAME, "train and test", policy)
  labels, class_names, vocabulary, bow = _read_pairs(
      image_dir, annotation_dir,
      int(data_config.get("mirflickr_min_tag_count", 20)), bad)
  present = files.list_files(image_dir)
  has_image = np.array([f"im{n}.jpg" in present
                        for n in range(1, labels.shape[0] + 1)])
  for n in np.flatnonzero(labels.any(axis=1) & ~has_image):
    bad(f"{annotation_dir} labels im{n + 1}.jpg, which is missing from "
        f"{image_dir}")
  bad.log_summary()
  paired = labels.any(axis=1) & bow.any(axis=1) & has_image
  kept = np.flatnonzero(paired)
  test_size = int(data_config.get("mirflickr_test_size", 2000))
  if not 0 < test_size < len(kept):
    raise ValueError(
        f"config.data.mirflickr_test_size={test_size}: expected 1..."
        f"{len(kept) - 1} ({len(kept)} pairs survive the filtering).")
  order = np.random.default_rng(
      int(data_config.get("mirflickr_split_seed", 0))).permutation(kept)
  rows = {"test": np.sort(order[:test_size]),
          "train": np.sort(order[test_size:])}
  train_size = int(data_config.get("mirflickr_train_size", 0))
  if train_size > 0:
    rows["train"] = np.sort(order[test_size:test_size + train_size])
  num_classes = len(class_names)
  splits, bows = {}, {}
  for split, index in rows.items():
    bad = files.BadExamples(NAME, split, policy)
    ids = [f"im{n + 1}" for n in index]
    index_split = files.finish_split(
        ids, labels[index], np.ones((len(index), num_classes), np.uint8),
        num_classes, bad, image_dir,
        paths=[os.path.join(image_dir, f"{i}.jpg") for i in ids])
    by_id = {i: r for i, r in zip(ids, index)}
    bows[split] = bow[[by_id[i] for i in index_split.ids]]
    splits[split] = index_split
  unlabeled = _unlabeled_paths(root, data_config)
  if unlabeled is None:
    dropped = np.flatnonzero(~paired & has_image)
    unlabeled = [os.path.join(image_dir, f"im{n + 1}.jpg") for n in dropped]
    logging.info("%s: no MIRFLICKR-1M folder; the %d images the filtering "
                 "dropped are the unlabeled split.", NAME, len(unlabeled))
  if unlabeled:
    bad = files.BadExamples(NAME, "unlabeled", policy)
    ids = [os.path.splitext(os.path.basename(p))[0] for p in unlabeled]
    zeros = np.zeros((len(ids), num_classes), np.uint8)
    splits["unlabeled"] = files.finish_split(ids, zeros, zeros, num_classes,
                                             bad, "unlabeled images",
                                             paths=unlabeled)
  info = DatasetInfo(
      name=NAME, class_names=class_names, input_kind="image",
      num_examples={s: len(i) for s, i in splits.items()},
      train_labels=splits["train"].labels,
      train_label_mask=splits["train"].label_mask, image_size=None,
      feature_dims={"modality2": len(vocabulary)})
  logging.info("%s: %d train / %d test pairs, %d-word tag vocabulary, %d "
               "unlabeled images.", NAME, len(splits["train"]),
               len(splits["test"]), len(vocabulary),
               len(splits.get("unlabeled", ())))
  return MirflickrSource(info, splits, bows, policy,
                         files.parallel_calls(data_config))


__all__ = ["CONCEPTS", "MirflickrSource", "bag_of_words", "concept_labels",
           "load_mirflickr25k", "parse_image_numbers", "parse_tags",
           "tag_vocabulary"]
