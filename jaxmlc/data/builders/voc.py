"""Pascal VOC 2007 as a multi-label dataset ("voc2007").

20 classes in the standard VOC order. "train" = trainval (5,011 images),
"test" = test (4,952), in the order of the ImageSets lists (local layout) or
TFDS record order (TFDS layout; TFDS train then validation for "train").

Difficult objects (a class present in an image only through objects marked
difficult): by default label 0 with label_mask 0 in both splits -- at test
that is the VOC protocol (ignored), at train the entry is unknown rather
than a known negative, which "dropped from the training labels" means for
partial-label training. `config.data.voc_difficult_as_negative = True`
reproduces the HST authors' code instead: difficult objects are skipped when
building labels, so such a class is a known negative (label 0, label_mask 1)
in train and test. A class with at least one non-difficult object is a
positive; classes absent from the image are negatives (label 0, mask 1).

Accepted layouts under config.data.dir = DIR (the first found wins):
1. local VOCdevkit: DIR/VOCdevkit/VOC2007, DIR/VOC2007 or DIR itself holding
     JPEGImages/<id>.jpg, Annotations/<id>.xml,
     ImageSets/Main/trainval.txt, ImageSets/Main/test.txt (one id a line)
2. TFDS: DIR/voc/2007/<version>/ as written by
     `tfds build voc/2007 --data_dir=DIR` (never built or downloaded here).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from absl import logging
import numpy as np

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import register

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")

_SPLITS = {"train": "trainval", "test": "test"}   # ours -> VOC's list name
_TFDS_SPLITS = {"train": "train+validation", "test": "test"}
_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/"


def parse_annotation(text: str | bytes, where: str,
                     class_names=VOC_CLASSES) -> tuple[set[int], set[int]]:
  """A VOC annotation XML -> (classes with a non-difficult object,
  classes present only through difficult objects), as column indices.

  Raises `AnnotationError` for XML that is not a VOC annotation, an object
  without a name, a name outside `class_names`, or a <difficult> other than
  0/1.
  """
  try:
    root = ElementTree.fromstring(text)
  except (ElementTree.ParseError, ValueError, LookupError,
          RecursionError) as e:   # LookupError: an unknown encoding= name
    raise files.AnnotationError(f"{where} is not valid XML ({e})") from None
  if root.tag != "annotation":
    raise files.AnnotationError(
        f"{where}: expected an <annotation> root element, found <{root.tag}>")
  column = {name: c for c, name in enumerate(class_names)}
  positive, difficult = set(), set()
  for obj in root.findall("object"):
    name = (obj.findtext("name") or "").strip().lower()
    if not name:
      raise files.AnnotationError(f"{where}: an <object> has no <name>")
    if name not in column:
      raise files.AnnotationError(
          f"{where}: object class {name[:40]!r} is outside the "
          f"{len(class_names)} VOC classes")
    flag = (obj.findtext("difficult") or "0").strip()
    if flag not in ("0", "1"):
      raise files.AnnotationError(
          f"{where}: <difficult> is {flag[:20]!r}; expected 0 or 1")
    (difficult if flag == "1" else positive).add(column[name])
  return positive, difficult - positive


def labels_and_mask(positive: set[int], difficult_only: set[int],
                    num_classes: int, difficult_as_negative: bool):
  """-> (labels uint8 [C], label_mask uint8 [C]) under the difficult rule."""
  labels = np.zeros(num_classes, np.uint8)
  mask = np.ones(num_classes, np.uint8)
  labels[sorted(positive)] = 1
  if not difficult_as_negative:
    mask[sorted(difficult_only)] = 0
  return labels, mask


def parse_image_set(text: str | bytes, where: str,
                    bad: files.BadExamples) -> list[str]:
  """ImageSets/Main/<set>.txt -> image ids (one a line; blank lines ignored)."""
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8")
    except UnicodeDecodeError as e:
      raise files.AnnotationError(f"{where} is not UTF-8 text ({e})") from None
  ids, seen = [], set()
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 1:
      bad(f"{where} line {number}: expected one image id, found "
          f"{line.strip()[:60]!r}")
      continue
    if fields[0] in seen:
      bad(f"{where} line {number}: image id {fields[0]!r} is listed twice")
      continue
    seen.add(fields[0])
    ids.append(fields[0])
  return ids


def _looks_local(root: str) -> bool:
  lists = os.path.join(root, "ImageSets", "Main")
  return all(os.path.isdir(os.path.join(root, d))
             for d in ("JPEGImages", "Annotations")) and all(
                 os.path.isfile(os.path.join(lists, f"{s}.txt"))
                 for s in _SPLITS.values())


def _missing_message(base: str) -> str:
  found = files.found_under(
      base, (os.path.join("VOCdevkit", "VOC2007"), "VOC2007"))
  return (
      f"voc2007: no Pascal VOC 2007 under config.data.dir={base!r}. Expected "
      f"either a local VOCdevkit ({base}/VOCdevkit/VOC2007, {base}/VOC2007 or "
      f"{base} itself) holding JPEGImages/<id>.jpg, Annotations/<id>.xml, "
      "ImageSets/Main/trainval.txt and ImageSets/Main/test.txt -- on a "
      "machine with internet download "
      f"{_URL}VOCtrainval_06-Nov-2007.tar and {_URL}VOCtest_06-Nov-2007.tar "
      f"and run `tar xf` on both inside {base} (they unpack to "
      "VOCdevkit/VOC2007) -- or a prepared TFDS voc/2007 in "
      f"{base}/voc/2007/ (on a machine with internet run `tfds build voc/2007 "
      f"--data_dir={base}` and copy the voc/2007 folder here). Found: {found}.")


def _load_local(root: str, data_config, policy: str, as_negative: bool):
  images = files.list_files(os.path.join(root, "JPEGImages"))
  annotations = files.list_files(os.path.join(root, "Annotations"))
  splits = {}
  for split, image_set in _SPLITS.items():
    where = os.path.join(root, "ImageSets", "Main", f"{image_set}.txt")
    bad = files.BadExamples("voc2007", split, policy)
    image_ids = parse_image_set(files.read_text(where), where, bad)
    ids, labels, masks = [], [], []
    for image_id in image_ids:
      xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
      if f"{image_id}.jpg" not in images:
        bad(f"{where} lists {image_id}, but JPEGImages/{image_id}.jpg is "
            "missing")
        continue
      if f"{image_id}.xml" not in annotations:
        bad(f"{where} lists {image_id}, but {xml_path} is missing")
        continue
      try:
        with open(xml_path, "rb") as f:
          positive, difficult_only = parse_annotation(f.read(), xml_path)
      except files.AnnotationError as e:
        bad(str(e))
        continue
      label, mask = labels_and_mask(positive, difficult_only,
                                    len(VOC_CLASSES), as_negative)
      ids.append(image_id)
      labels.append(label)
      masks.append(mask)
    splits[split] = files.finish_split(
        ids, labels, masks, len(VOC_CLASSES), bad, where,
        paths=[os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids])
  info = files.make_info("voc2007", VOC_CLASSES, splits)
  return files.ImageListSource(info, splits, policy,
                               files.parallel_calls(data_config))


def _load_tfds(builder, data_config, policy: str, as_negative: bool):
  tfds_names = builder.info.features["labels"].feature.names
  if sorted(tfds_names) != sorted(VOC_CLASSES):
    raise files.AnnotationError(
        f"voc2007: the TFDS voc/2007 in {builder.data_dir} has labels "
        f"{tfds_names[:5]}..., not the 20 VOC classes; rebuild it with "
        "`tfds build voc/2007`.")
  column_of = np.array([VOC_CLASSES.index(n) for n in tfds_names], np.int64)
  splits = {}
  for split, tfds_split in _TFDS_SPLITS.items():
    where = f"TFDS voc/2007 {tfds_split} in {builder.data_dir}"
    bad = files.BadExamples("voc2007", split, policy)
    logging.info("voc2007: indexing %s", where)
    ids, labels, masks = [], [], []
    records = files.tfds_records(builder, tfds_split).map(
        lambda r: (r["image/filename"], r["labels"], r["labels_no_difficult"]))
    for file_name, present, plain in records.as_numpy_iterator():
      positive = set(column_of[plain].tolist())
      label, mask = labels_and_mask(positive,
                                    set(column_of[present].tolist()) - positive,
                                    len(VOC_CLASSES), as_negative)
      ids.append(os.path.splitext(file_name.decode("utf-8"))[0])
      labels.append(label)
      masks.append(mask)
    splits[split] = files.finish_split(
        ids, labels, masks, len(VOC_CLASSES), bad, where,
        positions=np.arange(len(ids), dtype=np.int64))
  info = files.make_info("voc2007", VOC_CLASSES, splits)
  return files.TfdsSource(info, builder, _TFDS_SPLITS, splits, policy,
                          files.parallel_calls(data_config))


@register("voc2007")
def load_voc2007(data_config):
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  policy = files.bad_example_policy(data_config)
  as_negative = bool(data_config.get("voc_difficult_as_negative", False))
  root = files.find_root(
      base, (os.path.join("VOCdevkit", "VOC2007"), "VOC2007"), _looks_local)
  if root is not None:
    return _load_local(root, data_config, policy, as_negative)
  builder = files.tfds_prepared_builder("voc", "2007", base)
  if builder is not None:
    return _load_tfds(builder, data_config, policy, as_negative)
  raise files.DatasetNotFoundError(_missing_message(base))
