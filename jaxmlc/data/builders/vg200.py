"""Visual Genome VG-200 as a multi-label dataset ("vg200").

The 200 most frequent Visual Genome object categories with the split lists
of the SSGRL/HST authors (~98k train / ~10k test images). Labels are
complete (label_mask all 1). Index order: the order of the split list.

Accepted layout under config.data.dir = DIR: DIR, DIR/vg200 or DIR/VG
holding the images in VG_100K/ and/or VG_100K_2/ (a name found in both is
read from VG_100K) next to the split lists, in one of two formats:
A. categories.txt -- the C category names, one a line, in index order;
   train_list.txt and test_list.txt -- one image a line:
     <image file name> <category index> <category index> ...
   e.g. "2360596.jpg 3 17 120": fields separated by spaces or tabs, indices
   0-based in [0, C). A name with no index is an image without any of the
   categories (all known negatives).
B. the authors' release: train_list_500.txt and test_list_500.txt -- one
   image file name a line -- and vg_category_200_labels_index.json -- a JSON
   object {"<image file name>": [category index, ...], ...}. categories.txt
   (as in A) is optional here; without it C = 200, the classes are named
   "category_000"... and a warning says so.
A is used when train_list.txt exists. Blank lines are ignored everywhere.
"""
from __future__ import annotations

import json
import os

from absl import logging
import numpy as np

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import register

NUM_CLASSES = 200
IMAGE_DIRS = ("VG_100K", "VG_100K_2")   # the first that has a name wins
CATEGORY_FILE = "categories.txt"
LISTS = {"train": "train_list.txt", "test": "test_list.txt"}            # A
AUTHOR_LISTS = {"train": "train_list_500.txt", "test": "test_list_500.txt"}  # B
AUTHOR_LABELS = "vg_category_200_labels_index.json"


def _text(text: str | bytes, where: str) -> str:
  if isinstance(text, bytes):
    try:
      return text.decode("utf-8")
    except UnicodeDecodeError as e:
      raise files.AnnotationError(f"{where} is not UTF-8 text ({e})") from None
  return text


def parse_categories(text: str | bytes, where: str) -> tuple[str, ...]:
  """categories.txt -> C distinct names (one a line, blank lines ignored)."""
  names = tuple(line.strip() for line in _text(text, where).splitlines()
                if line.strip())
  if not names:
    raise files.AnnotationError(f"{where} lists no category (expected one "
                                "name a line, in index order)")
  if len(set(names)) != len(names):
    twice = sorted({n for n in names if names.count(n) > 1})
    raise files.AnnotationError(f"{where} lists {twice[:5]} more than once")
  return names


def _columns(values, num_classes: int) -> list[int] | None:
  """Category indices -> a sorted list, or None if one is not in [0, C)."""
  columns = []
  for value in values:
    if isinstance(value, str):
      if not (value.isascii() and value.isdigit()) or len(value) > 9:
        return None
      value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
      return None
    if not 0 <= value < num_classes:
      return None
    columns.append(value)
  return sorted(set(columns))


def parse_split_list(text: str | bytes, where: str, num_classes: int,
                     bad: files.BadExamples) -> list[tuple[str, list[int]]]:
  """Format A: lines "<image file name> <index> ..." -> [(name, indices)]."""
  entries, seen = [], set()
  for number, line in enumerate(_text(text, where).splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    name = fields[0]
    columns = _columns(fields[1:], num_classes)
    if columns is None:
      bad(f"{where} line {number}: expected '<image file name> <category "
          f"index> ...' with indices in [0, {num_classes}); found "
          f"{line.strip()[:80]!r}")
      continue
    if name in seen:
      bad(f"{where} line {number}: image {name[:60]!r} is listed twice")
      continue
    seen.add(name)
    entries.append((name, columns))
  return entries


def parse_author_lists(list_text: str | bytes, list_where: str,
                       labels_text: str | bytes, labels_where: str,
                       num_classes: int,
                       bad: files.BadExamples) -> list[tuple[str, list[int]]]:
  """Format B: a name list and the {name: [index, ...]} JSON -> [(name,
  indices)]."""
  try:
    index = json.loads(labels_text)
  except (ValueError, RecursionError) as e:
    raise files.AnnotationError(
        f"{labels_where} is not valid JSON ({str(e)[:120]})") from None
  if not isinstance(index, dict):
    raise files.AnnotationError(
        f"{labels_where}: expected a JSON object {{\"<image file name>\": "
        f"[category index, ...]}}; found {type(index).__name__}")
  entries, seen = [], set()
  for number, line in enumerate(_text(list_text, list_where).splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    name = fields[0]
    if len(fields) != 1:
      bad(f"{list_where} line {number}: expected one image file name, found "
          f"{line.strip()[:80]!r}")
      continue
    if name in seen:
      bad(f"{list_where} line {number}: image {name[:60]!r} is listed twice")
      continue
    values = index.get(name)
    columns = (_columns(values, num_classes) if isinstance(values, list)
               else None)
    if columns is None:
      bad(f"{labels_where} has no list of category indices in [0, "
          f"{num_classes}) for {name[:60]!r} ({list_where} line {number})")
      continue
    seen.add(name)
    entries.append((name, columns))
  return entries


def _format(root: str) -> str | None:
  """"A" or "B" when root holds a complete set of split files, else None."""
  def there(*names):
    return all(os.path.isfile(os.path.join(root, n)) for n in names)
  if there(CATEGORY_FILE, *LISTS.values()):
    return "A"
  if there(AUTHOR_LABELS, *AUTHOR_LISTS.values()):
    return "B"
  return None


def _looks_local(root: str) -> bool:
  return _format(root) is not None and any(
      os.path.isdir(os.path.join(root, d)) for d in IMAGE_DIRS)


def _missing_message(base: str) -> str:
  found = files.found_under(base, ("vg200", "VG"))
  return (
      f"vg200: no Visual Genome VG-200 under config.data.dir={base!r}. "
      f"Expected {base} or {base}/vg200 holding the images in VG_100K/ "
      "and/or VG_100K_2/ and the split lists: either categories.txt (the 200 "
      "names, one a line, in index order) with train_list.txt and "
      "test_list.txt (lines '<image file name> <0-based category index> "
      "...'), or the SSGRL/HST authors' train_list_500.txt, "
      "test_list_500.txt (one file name a line) and "
      "vg_category_200_labels_index.json ({\"<file name>\": [index, ...]}). "
      "On a machine with internet download "
      "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip and "
      "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip, unzip "
      f"both into {base}/vg200 (giving VG_100K/ and VG_100K_2/), and copy "
      "the authors' split files (the data release of "
      "github.com/HCPLab-SYSU/HCP-MLR-PL, data/vg/) next to them. "
      f"Found: {found}.")


def _load_local(root: str, data_config, policy: str):
  paths_of: dict[str, str] = {}
  for directory in reversed(IMAGE_DIRS):
    for name in files.list_files(os.path.join(root, directory)):
      paths_of[name] = os.path.join(root, directory, name)
  author_format = _format(root) == "B"
  category_path = os.path.join(root, CATEGORY_FILE)
  if os.path.isfile(category_path):
    class_names = parse_categories(files.read_text(category_path),
                                   category_path)
  else:  # only format B gets here
    class_names = tuple(f"category_{c:03d}" for c in range(NUM_CLASSES))
    logging.warning("vg200: no %s in %s; naming the %d classes category_000"
                    "... (word vectors must then come in index order).",
                    CATEGORY_FILE, root, NUM_CLASSES)
  num_classes = len(class_names)
  if author_format:
    labels_where = os.path.join(root, AUTHOR_LABELS)
    labels_text = files.read_text(labels_where)
  splits = {}
  for split in ("train", "test"):
    bad = files.BadExamples("vg200", split, policy)
    lists = AUTHOR_LISTS if author_format else LISTS
    where = os.path.join(root, lists[split])
    if author_format:
      entries = parse_author_lists(files.read_text(where), where, labels_text,
                                   labels_where, num_classes, bad)
    else:
      entries = parse_split_list(files.read_text(where), where, num_classes,
                                 bad)
    ids, labels, paths = [], [], []
    for name, columns in entries:
      if name not in paths_of:
        bad(f"{where} lists {name[:60]!r}, which is in neither "
            f"{' nor '.join(IMAGE_DIRS)}")
        continue
      row = np.zeros(num_classes, np.uint8)
      row[columns] = 1
      ids.append(os.path.splitext(name)[0])
      labels.append(row)
      paths.append(paths_of[name])
    splits[split] = files.finish_split(
        ids, labels, np.ones((len(ids), num_classes), np.uint8), num_classes,
        bad, where, paths=paths)
  info = files.make_info("vg200", class_names, splits)
  return files.ImageListSource(info, splits, policy,
                               files.parallel_calls(data_config))


@register("vg200")
def load_vg200(data_config):
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  policy = files.bad_example_policy(data_config)
  root = files.find_root(base, ("vg200", "VG"), _looks_local)
  if root is None:
    raise files.DatasetNotFoundError(_missing_message(base))
  return _load_local(root, data_config, policy)
