"""NUS-WIDE (81 concepts) as a multi-label dataset ("nuswide").

The official split (TrainImagelist / TestImagelist: 161,789 / 107,859
images), labels from the 81-concept ground truth; images without any of the
81 labels are dropped (as CMA and most papers do), which leaves about
125k / 84k. Labels are complete (label_mask all 1). Index order: the order
of the official image lists.

Accepted layout under config.data.dir = DIR: DIR, DIR/nuswide, DIR/NUS-WIDE
or DIR/NUS_WIDE holding
  Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt
      one 0/1 a line, in the order of the split's image list (81 concepts);
  Concepts81.txt (optional, also under ConceptsList/): the 81 names in
      order; without it the concepts are the label files' names, sorted;
and at least one of
  the six low-level feature files per split, under Low_Level_Features/,
      NUS_WID_Low_Level_Features/Low_Level_Features/ or the root:
      Train_Normalized_CH.dat (64-d colour histogram), _CM55 (225-d block
      colour moments), _CORR (144-d colour correlogram), _EDH (73-d edge
      direction histogram), _WT (128-d wavelet texture) and Train_BoW_int.dat
      (or BoW_Train_int.dat; 500-d SIFT bag of words), likewise Test_*:
      whitespace-separated numbers, one image a line, in list order;
  the images: ImageList/TrainImagelist.txt and TestImagelist.txt (lines
      like "actor\\0001_2124494179.jpg", Windows or POSIX separators) and
      Flickr/<folder>/<file>.jpg.

`config.data.nuswide_input` chooses what the examples carry: "features"
(input_kind "features": the six feature types concatenated in the order
ch, cm55, corr, edh, wt, bow as "features" [1134], and each one as
"feat_<name>"), "image" (input_kind "image", decoded from the Flickr
folder), or "auto" (features when the feature files are there, else
images). `config.data.nuswide_features` limits the feature types used.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import tensorflow as tf

from jaxmlc.data.builders import image_files as files
from jaxmlc.data.info import DatasetInfo, register

NUM_CONCEPTS = 81
FEATURES = {"ch": 64, "cm55": 225, "corr": 144, "edh": 73, "wt": 128,
            "bow": 500}
_FILE_STEMS = {"ch": ("Normalized_CH",), "cm55": ("Normalized_CM55",),
               "corr": ("Normalized_CORR",), "edh": ("Normalized_EDH",),
               "wt": ("Normalized_WT",), "bow": ("BoW_int",)}
_SPLITS = {"train": "Train", "test": "Test"}
_ROOT_NAMES = ("nuswide", "NUS-WIDE", "NUS_WIDE")
_FEATURE_DIRS = ("Low_Level_Features",
                 os.path.join("NUS_WID_Low_Level_Features",
                              "Low_Level_Features"), "")
LABEL_DIR = os.path.join("Groundtruth", "TrainTestLabels")
_LABEL_FILE = re.compile(r"^Labels_(.+)_(Train|Test)\.txt$")


# ----------------------------------------------------------------------------
# Parsing (pure functions of file contents).

def parse_numbers(text: str | bytes, where: str, dtype=np.float32,
                  columns: int | None = None) -> np.ndarray:
  """Whitespace-separated numbers, one row a line -> [rows, columns].

  Every non-blank line must have the same count (`columns` when given).
  Parsed in C (`np.fromstring`): the 500-d BoW file of the train split is
  ~80M numbers.
  """
  if isinstance(text, bytes):
    text = text.decode("ascii", errors="replace")
  lines = [line for line in text.splitlines() if line.strip()]
  if not lines:
    return np.zeros((0, columns or 0), dtype)
  width = len(lines[0].split())
  if columns is not None and width != columns:
    raise files.AnnotationError(
        f"{where}: expected {columns} numbers a line, found {width} on line 1")
  with warnings.catch_warnings():
    # numpy reports unparsable text as a DeprecationWarning and stops early.
    warnings.simplefilter("error", DeprecationWarning)
    try:
      values = np.fromstring("\n".join(lines), dtype=np.float64, sep=" ")
    except (ValueError, DeprecationWarning):
      raise files.AnnotationError(
          f"{where} holds something that is not a number (expected "
          "whitespace-separated numbers, one image a line)") from None
  if values.size != width * len(lines):
    counts = [len(line.split()) for line in lines]
    bad = next(i for i, c in enumerate(counts) if c != width)
    raise files.AnnotationError(
        f"{where}: line {bad + 1} has {counts[bad]} numbers, line 1 has "
        f"{width}; every line must have the same count")
  return values.reshape(len(lines), width).astype(dtype)


def parse_label_column(text: str | bytes, where: str) -> np.ndarray:
  """A Labels_<concept>_<Split>.txt -> uint8 [N] in {0, 1}."""
  values = parse_numbers(text, where, np.float64, columns=1)[:, 0]
  if not np.all((values == 0) | (values == 1)):
    bad = int(np.flatnonzero((values != 0) & (values != 1))[0])
    raise files.AnnotationError(
        f"{where}: line {bad + 1} is {values[bad]}; expected 0 or 1")
  return values.astype(np.uint8)


def parse_image_list(text: str | bytes, where: str) -> list[str]:
  """An image list -> relative paths "<folder>/<file>" (separators unified)."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  out = []
  for line in text.splitlines():
    parts = [p for p in re.split(r"[\\/]+", line.strip()) if p]
    if parts:
      out.append("/".join(parts[-2:]))
  return out


# ----------------------------------------------------------------------------
# Finding the files.

def _label_files(root: str) -> dict[str, dict[str, str]]:
  """{concept: {"Train": path, "Test": path}} from the label directory."""
  found: dict[str, dict[str, str]] = {}
  for name in files.list_files(os.path.join(root, LABEL_DIR)):
    match = _LABEL_FILE.match(name)
    if match:
      found.setdefault(match.group(1), {})[match.group(2)] = os.path.join(
          root, LABEL_DIR, name)
  return found


def concept_names(root: str, label_files) -> tuple[str, ...]:
  for candidate in ("Concepts81.txt", os.path.join("ConceptsList",
                                                   "Concepts81.txt")):
    path = os.path.join(root, candidate)
    if os.path.isfile(path):
      names = tuple(line.strip() for line in files.read_text(path).splitlines()
                    if line.strip())
      missing = [n for n in names if n not in label_files]
      if missing:
        raise files.AnnotationError(
            f"{path} lists concept(s) {missing[:5]} with no "
            f"{LABEL_DIR}/Labels_<concept>_Train.txt / _Test.txt")
      return names
  return tuple(sorted(label_files))


def feature_file(root: str, name: str, split: str) -> str | None:
  """The split's file of one feature type, or None."""
  tag = _SPLITS[split]
  for directory in _FEATURE_DIRS:
    base = os.path.join(root, directory)
    for stem in _FILE_STEMS[name]:
      candidates = [f"{tag}_{stem}.dat"]
      if name == "bow":
        candidates += [f"BoW_{tag}_int.dat", f"{tag}_BoW.dat"]
      for candidate in candidates:
        path = os.path.join(base, candidate)
        if os.path.isfile(path):
          return path
  return None


def _has_features(root: str) -> bool:
  return any(feature_file(root, n, "train") for n in FEATURES)


def _has_images(root: str) -> bool:
  return all(os.path.isfile(os.path.join(root, "ImageList",
                                         f"{tag}Imagelist.txt"))
             for tag in _SPLITS.values()) and os.path.isdir(
                 os.path.join(root, "Flickr"))


def _looks_local(root: str) -> bool:
  labels = _label_files(root)
  complete = any(len(v) == 2 for v in labels.values())
  return complete and (_has_features(root) or _has_images(root))


def _missing_message(base: str) -> str:
  found = files.found_under(base, _ROOT_NAMES)
  return (
      f"nuswide: no NUS-WIDE under config.data.dir={base!r}. Expected {base} "
      f"or {base}/nuswide holding Groundtruth/TrainTestLabels/"
      "Labels_<concept>_Train.txt and _Test.txt (81 concepts, one 0/1 a line) "
      "and either the low-level features (Low_Level_Features/"
      "Train_Normalized_CH.dat, _CM55, _CORR, _EDH, _WT, Train_BoW_int.dat and "
      "the Test_* files) or the images (ImageList/TrainImagelist.txt, "
      "TestImagelist.txt and Flickr/<folder>/<file>.jpg). Get them on a "
      "machine with internet from the NUS-WIDE page "
      "(https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/"
      "NUS-WIDE.html): 'Groundtruth' and 'Low-Level Features' "
      "(NUS_WID_Low_Level_Features.rar), plus 'Image List' and the images "
      "(from the authors on request, or the Flickr URLs in NUS-WIDE-urls), "
      f"and unpack them into {base}/nuswide. Found: {found}.")


# ----------------------------------------------------------------------------
# Sources.

class FeatureSource:
  """A DatasetSource over in-memory feature arrays (input_kind "features")."""

  def __init__(self, info: DatasetInfo, arrays: dict):
    self.info, self._arrays = info, arrays

  def examples(self, split: str) -> tf.data.Dataset:
    if split not in self._arrays:
      raise ValueError(f"nuswide has splits {sorted(self._arrays)}; got "
                       f"split={split!r}.")
    arrays = dict(self._arrays[split])
    arrays["id"] = files.tf_strings(arrays["id"])
    return tf.data.Dataset.from_tensor_slices(arrays)


def _read_split(root, split, class_names, label_files, wanted):
  """Labels [N, C], ids, {name: features [N, d]} of one split, unfiltered."""
  tag = _SPLITS[split]
  columns = [parse_label_column(files.read_text(label_files[c][tag]),
                                label_files[c][tag]) for c in class_names]
  sizes = {len(c) for c in columns}
  if len(sizes) != 1:
    raise files.AnnotationError(
        f"{os.path.join(root, LABEL_DIR)}: the {tag} label files have "
        f"different lengths {sorted(sizes)}; each must have one line per "
        f"image of {tag}Imagelist.txt")
  labels = np.stack(columns, axis=1)
  n = labels.shape[0]
  list_path = os.path.join(root, "ImageList", f"{tag}Imagelist.txt")
  if os.path.isfile(list_path):
    ids = parse_image_list(files.read_text(list_path), list_path)
    if len(ids) != n:
      raise files.AnnotationError(
          f"{list_path} lists {len(ids)} images but the {tag} label files "
          f"have {n} lines")
  else:
    ids = [f"{split}_{i:06d}" for i in range(n)]
  features = {}
  for name in wanted:
    path = feature_file(root, name, split)
    if path is None:
      raise files.DatasetNotFoundError(
          f"nuswide: config.data.nuswide_features asks for {name!r} but no "
          f"{tag}_{_FILE_STEMS[name][0]}.dat is under {root} (looked in "
          f"{', '.join(d or '.' for d in _FEATURE_DIRS)}). Unpack "
          "NUS_WID_Low_Level_Features.rar there, or leave that type out.")
    with open(path, "rb") as f:
      values = parse_numbers(f.read(), path, columns=FEATURES[name])
    if values.shape[0] != n:
      raise files.AnnotationError(
          f"{path} has {values.shape[0]} rows but the {tag} label files have "
          f"{n} lines (one per image, same order)")
    features[name] = values
  return labels, ids, features


def _load_local(root: str, data_config, policy: str):
  label_files = _label_files(root)
  class_names = concept_names(root, label_files)
  for c in class_names:
    if set(label_files[c]) != {"Train", "Test"}:
      raise files.DatasetNotFoundError(
          f"nuswide: {os.path.join(root, LABEL_DIR)} has no "
          f"Labels_{c}_{'Test' if 'Train' in label_files[c] else 'Train'}.txt.")
  mode = data_config.get("nuswide_input", "auto")
  if mode not in ("auto", "features", "image"):
    raise ValueError(f"config.data.nuswide_input={mode!r}: expected 'auto', "
                     "'features' or 'image'.")
  if mode == "auto":
    mode = "features" if _has_features(root) else "image"
  wanted = tuple(data_config.get("nuswide_features", tuple(FEATURES)))
  unknown = [n for n in wanted if n not in FEATURES]
  if unknown:
    raise ValueError(f"config.data.nuswide_features has unknown type(s) "
                     f"{unknown}; choose from {tuple(FEATURES)}.")
  if mode == "image" and not _has_images(root):
    raise files.DatasetNotFoundError(
        f"nuswide: config.data.nuswide_input='image' but {root} has no "
        "ImageList/TrainImagelist.txt + TestImagelist.txt and Flickr/ folder. "
        + _missing_message(os.path.dirname(root)))
  num_classes = len(class_names)
  splits, arrays = {}, {}
  for split in ("train", "test"):
    bad = files.BadExamples("nuswide", split, policy)
    labels, ids, features = _read_split(
        root, split, class_names, label_files,
        wanted if mode == "features" else ())
    keep = labels.any(axis=1)        # images without any concept are dropped
    if mode == "image":
      paths = [os.path.join(root, "Flickr", *i.split("/")) for i in ids]
      present = {}
      kept_ids, kept_labels, kept_paths = [], [], []
      for n in np.flatnonzero(keep):
        folder = os.path.dirname(paths[n])
        if folder not in present:
          present[folder] = files.list_files(folder)
        if os.path.basename(paths[n]) not in present[folder]:
          bad(f"{paths[n]} (listed in {_SPLITS[split]}Imagelist.txt) does not "
              "exist")
          continue
        kept_ids.append(ids[n])
        kept_labels.append(labels[n])
        kept_paths.append(paths[n])
      splits[split] = files.finish_split(
          kept_ids, kept_labels,
          np.ones((len(kept_ids), num_classes), np.uint8), num_classes, bad,
          root, paths=kept_paths)
    else:
      index = np.flatnonzero(keep)
      if not len(index):
        bad(f"the split is empty: no image with any of the {num_classes} "
            f"concepts in {os.path.join(root, LABEL_DIR)}")
      parts = [features[name][index] for name in wanted]
      arrays[split] = {
          "features": np.concatenate(parts, axis=1).astype(np.float32),
          **{f"feat_{name}": features[name][index] for name in wanted},
          "labels": labels[index],
          "label_mask": np.ones((len(index), num_classes), np.uint8),
          "id": [ids[n] for n in index],
          "index": np.arange(len(index), dtype=np.int64)}
  if mode == "image":
    # Flickr photos differ in size (and a skipped unreadable one is a 1x1
    # blank): image_size None, so the pipeline keeps bytes and resizes.
    info = files.make_info("nuswide", class_names, splits)
    return files.ImageListSource(info, splits, policy,
                                 files.parallel_calls(data_config))
  dims = {"features": sum(FEATURES[n] for n in wanted),
          **{f"feat_{n}": FEATURES[n] for n in wanted}}
  info = DatasetInfo(
      name="nuswide", class_names=tuple(class_names), input_kind="features",
      num_examples={s: len(a["labels"]) for s, a in arrays.items()},
      train_labels=arrays["train"]["labels"],
      train_label_mask=arrays["train"]["label_mask"], feature_dims=dims)
  return FeatureSource(info, arrays)


@register("nuswide")
def load_nuswide(data_config):
  """data_config.dir -> a DatasetSource (see the module docstring)."""
  base = os.path.abspath(os.path.expanduser(str(data_config.dir)))
  policy = files.bad_example_policy(data_config)
  root = files.find_root(base, _ROOT_NAMES, _looks_local)
  if root is None:
    raise files.DatasetNotFoundError(_missing_message(base))
  return _load_local(root, data_config, policy)


__all__ = ["FEATURES", "FeatureSource", "load_nuswide", "parse_image_list",
           "parse_label_column", "parse_numbers"]
