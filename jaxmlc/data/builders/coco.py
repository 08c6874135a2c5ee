"""MS-COCO 2014 as a multi-label dataset ("coco2014").

80 classes from the instance annotations, in COCO category-id order (=
ML-GCN's order), named by category name. "train" = train2014, "test" =
val2014; images without any instance annotation (crowd ones count) are
dropped, leaving 82,081 / 40,137. Labels are complete: label_mask is all 1.
Index order: the order of "images" in the annotation file (local layout, as
the HST authors' loader), or TFDS record order (TFDS layout).

Accepted layouts under config.data.dir = DIR (the first found wins):
1. local: DIR, DIR/coco2014 or DIR/coco holding
     train2014/*.jpg, val2014/*.jpg,
     annotations/instances_train2014.json, annotations/instances_val2014.json
2. TFDS: DIR/coco/2014/<version>/ as written by
     `tfds build coco/2014 --data_dir=DIR` (never built or downloaded here).
TFDS numbers its labels in its own order; they are mapped by name onto the
order above, so both layouts give the same classes in the same order.
"""
from __future__ import annotations

import dataclasses
import json
import os

from absl import logging
import numpy as np

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import register

# Category names in category-id order (ids 1..90 with gaps), as in
# instances_*2014.json; the TFDS layout is mapped onto this order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

_SPLITS = {"train": "train2014", "test": "val2014"}   # ours -> COCO's
_TFDS_SPLITS = {"train": "train", "test": "validation"}


@dataclasses.dataclass(frozen=True)
class Instances:
  """What one instances_*.json says, images without annotations dropped.

  class_names: C names in category-id order.
  file_names: N image file names, in the file's "images" order.
  labels: uint8 [N, C].
  """
  class_names: tuple[str, ...]
  file_names: list[str]
  labels: np.ndarray


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def parse_instances(text: str | bytes, where: str, bad: files.BadExamples,
                    present_files: set[str] | None = None) -> Instances:
  """Parses a COCO instances file into multi-hot labels.

  A file that is not a COCO instances file raises `AnnotationError`; a bad
  image or annotation entry, an annotation for an image that is not listed,
  a category outside the file's categories, or a listed image whose file is
  not in `present_files` goes to `bad` (the image is then dropped).
  """
  try:
    data = json.loads(text)
  except (ValueError, RecursionError) as e:   # JSONDecodeError, bad UTF-8
    raise files.AnnotationError(
        f"{where} is not valid JSON ({str(e)[:120]}). Re-extract it from "
        "annotations_trainval2014.zip.") from None
  if not (isinstance(data, dict) and all(
      isinstance(data.get(k), list)
      for k in ("images", "annotations", "categories"))):
    raise files.AnnotationError(
        f"{where}: expected a COCO instances file (a JSON object with lists "
        f"'images', 'annotations' and 'categories'); found {_short(data)}. "
        "Use annotations/instances_*2014.json from "
        "annotations_trainval2014.zip.")

  categories: dict[int, str] = {}
  for category in data["categories"]:
    if not (isinstance(category, dict) and _is_int(category.get("id"))
            and isinstance(category.get("name"), str)):
      raise files.AnnotationError(
          f"{where}: category {_short(category)} needs an integer 'id' and a "
          "string 'name'.")
    if category["id"] in categories:
      raise files.AnnotationError(
          f"{where}: category id {category['id']} appears twice.")
    categories[category["id"]] = category["name"]
  category_ids = sorted(categories)
  class_names = tuple(categories[i] for i in category_ids)
  if not class_names or len(set(class_names)) != len(class_names):
    raise files.AnnotationError(
        f"{where}: expected distinct category names; found "
        f"{_short(class_names)}.")
  column = {category_id: c for c, category_id in enumerate(category_ids)}

  images: dict[int, str] = {}   # id -> file name, in file order
  broken: set[int] = set()      # ids whose labels cannot be trusted
  for image in data["images"]:
    if not (isinstance(image, dict) and _is_int(image.get("id"))
            and isinstance(image.get("file_name"), str)
            and image["file_name"].strip()):
      bad(f"{where}: image entry {_short(image)} needs an integer 'id' and a "
          "'file_name'")
      continue
    if image["id"] in images:
      bad(f"{where}: image id {image['id']} is listed twice")
      broken.add(image["id"])
      continue
    images[image["id"]] = image["file_name"]

  positives: dict[int, set[int]] = {}
  for annotation in data["annotations"]:
    image_id = (annotation.get("image_id") if isinstance(annotation, dict)
                else None)
    if not _is_int(image_id) or image_id not in images:
      bad(f"{where}: annotation {_short(annotation)} is for image_id "
          f"{_short(image_id)}, which is not in 'images'")
      continue
    category_id = annotation.get("category_id")
    if not _is_int(category_id) or category_id not in column:
      bad(f"{where}: annotation {_short(annotation.get('id'))} of "
          f"{images[image_id]} has category_id {_short(category_id)}, outside "
          f"the file's {len(column)} categories")
      broken.add(image_id)
      continue
    positives.setdefault(image_id, set()).add(column[category_id])

  file_names, labels = [], []
  for image_id, file_name in images.items():
    if image_id not in positives or image_id in broken:
      continue
    if present_files is not None and file_name not in present_files:
      bad(f"{where} lists image {file_name}, which is missing from the "
          "image directory")
      continue
    row = np.zeros(len(class_names), np.uint8)
    row[sorted(positives[image_id])] = 1
    file_names.append(file_name)
    labels.append(row)
  labels = np.asarray(labels, np.uint8).reshape(len(file_names),
                                                len(class_names))
  return Instances(class_names, file_names, labels)


def _looks_local(root: str) -> bool:
  return all(os.path.isdir(os.path.join(root, d)) and
             os.path.isfile(_annotation_path(root, d))
             for d in _SPLITS.values())


def _annotation_path(root: str, coco_split: str) -> str:
  return os.path.join(root, "annotations", f"instances_{coco_split}.json")


def _stem(file_name: str) -> str:
  return os.path.splitext(os.path.basename(file_name))[0]


def _missing_message(base: str) -> str:
  found = files.found_under(base, ("coco2014", "coco"))
  return (
      f"coco2014: no MS-COCO 2014 under config.data.dir={base!r}. Expected "
      f"either a local COCO directory ({base} or {base}/coco2014) holding "
      "train2014/*.jpg, val2014/*.jpg, annotations/instances_train2014.json "
      "and annotations/instances_val2014.json -- on a machine with internet "
      "download http://images.cocodataset.org/zips/train2014.zip, "
      "http://images.cocodataset.org/zips/val2014.zip and "
      "http://images.cocodataset.org/annotations/annotations_trainval2014.zip "
      f"and unzip all three into {base}/coco2014 -- or a prepared TFDS "
      f"coco/2014 in {base}/coco/2014/ (on a machine with internet run "
      f"`tfds build coco/2014 --data_dir={base}` and copy the coco/2014 "
      f"folder here). Found: {found}.")


def _load_local(root: str, data_config, policy: str):
  splits, class_names = {}, None
  for split, coco_split in _SPLITS.items():
    where = _annotation_path(root, coco_split)
    image_dir = os.path.join(root, coco_split)
    bad = files.BadExamples("coco2014", split, policy)
    logging.info("coco2014: indexing %s", where)
    instances = parse_instances(files.read_text(where), where, bad,
                                files.list_files(image_dir))
    if class_names is None:
      class_names = instances.class_names
    elif instances.class_names != class_names:
      raise files.AnnotationError(
          f"coco2014: {where} lists other categories than the train file; "
          "use the two instances_*2014.json files from one "
          "annotations_trainval2014.zip.")
    splits[split] = files.finish_split(
        [_stem(f) for f in instances.file_names], instances.labels,
        np.ones_like(instances.labels), len(class_names), bad, where,
        paths=[os.path.join(image_dir, f) for f in instances.file_names])
  if class_names != COCO_CLASSES:
    logging.warning("coco2014: %s has %d categories that differ from the "
                    "standard 80; word vectors and graphs keyed by ML-GCN's "
                    "order will not line up.", root, len(class_names))
  info = files.make_info("coco2014", class_names, splits)
  return files.ImageListSource(info, splits, policy,
                               files.parallel_calls(data_config))


def _load_tfds(builder, data_config, policy: str):
  tfds_names = builder.info.features["objects"]["label"].names
  unknown = [n for n in tfds_names if n not in COCO_CLASSES]
  if unknown:
    raise files.AnnotationError(
        f"coco2014: the TFDS coco/2014 in {builder.data_dir} has labels "
        f"{unknown[:5]} outside the 80 COCO categories; rebuild it with "
        "`tfds build coco/2014`.")
  column_of = np.array([COCO_CLASSES.index(n) for n in tfds_names], np.int64)
  splits = {}
  for split, tfds_split in _TFDS_SPLITS.items():
    where = f"TFDS coco/2014 {tfds_split} in {builder.data_dir}"
    bad = files.BadExamples("coco2014", split, policy)
    logging.info("coco2014: indexing %s (one pass over the records)", where)
    ids, labels, positions = [], [], []
    records = files.tfds_records(builder, tfds_split).map(
        lambda r: (r["image/filename"], r["objects"]["label"]))
    for position, (file_name, label) in enumerate(records.as_numpy_iterator()):
      if not len(label):
        continue  # no instance annotation: dropped, as on the local path
      row = np.zeros(len(COCO_CLASSES), np.uint8)
      row[column_of[label]] = 1
      ids.append(_stem(file_name.decode("utf-8")))
      labels.append(row)
      positions.append(position)
    splits[split] = files.finish_split(
        ids, labels, np.ones_like(np.asarray(labels, np.uint8)),
        len(COCO_CLASSES), bad, where,
        positions=np.asarray(positions, np.int64))
  info = files.make_info("coco2014", COCO_CLASSES, splits)
  return files.TfdsSource(info, builder, _TFDS_SPLITS, splits, policy,
                          files.parallel_calls(data_config))


@register("coco2014")
def load_coco2014(data_config):
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  policy = files.bad_example_policy(data_config)
  root = files.find_root(base, ("coco2014", "coco"), _looks_local)
  if root is not None:
    return _load_local(root, data_config, policy)
  builder = files.tfds_prepared_builder("coco", "2014", base)
  if builder is not None:
    return _load_tfds(builder, data_config, policy)
  raise files.DatasetNotFoundError(_missing_message(base))
