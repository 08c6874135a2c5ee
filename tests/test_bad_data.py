"""Bad input, reader by reader: each case is refused or skipped with a
counted warning as config.data.on_bad_example says, never a crash mid-epoch.

Cases: a JPEG corrupt inside (its header and end marker intact, so only a
decode finds it), a truncated JPEG, a label outside the class list, an
annotation for a missing image, an empty split, feature arrays of
different lengths. Fixtures are tiny datasets in the real on-disk layouts,
written here.

"fail" refuses before the first step: at load time (an AnnotationError /
BadExampleError naming the file) or, for a file corrupt inside, when the
split is first read (InvalidArgumentError naming the file; the trainer
reads its splits before training). "skip" drops the example at load time
with an absl warning that counts them, or -- corrupt inside -- keeps its
index as a blank image with label_mask 0 and a counted stderr line; the
pipeline then runs whole epochs and an eval pass without an error. What
cannot be skipped (arrays whose rows do not pair up, a concept list naming
a missing label file) is refused under both policies.
"""
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxmlc import train
from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data import pipeline
from jaxmlc.data.builders import image_files as files

RNG = np.random.default_rng(0)


def jpeg_bytes(size=(10, 8)):
  buffer = io.BytesIO()
  Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
      buffer, "JPEG")
  return buffer.getvalue()


def corrupt_inside(jpeg: bytes) -> bytes:
  """The first component's quantisation table set to one that is not
  defined: header parse and end marker fine, decoding fails."""
  sof = jpeg.index(b"\xff\xc0")
  tq = sof + 2 + 2 + 1 + 2 + 2 + 1 + 2     # length, P, Y, X, Nf, C1, H1V1
  return jpeg[:tq] + b"\x03" + jpeg[tq + 1:]


def test_the_corrupt_fixture_passes_the_cheap_checks():
  bad = corrupt_inside(jpeg_bytes())
  assert bad.startswith(b"\xff\xd8\xff") and bad.endswith(b"\xff\xd9")
  assert list(tf.io.extract_jpeg_shape(bad).numpy()) == [8, 10, 3]
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.io.decode_image(bad)


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)


# ------------------------------------------------------------ fixtures
# Each writer puts a 4-train / 2-test dataset under `root` with `fault`
# applied to one train example (the test split for "empty_split") and
# returns (data_config overrides, a string the problem's message names).

def voc_fixture(root, fault):
  base = os.path.join(root, "VOCdevkit", "VOC2007")
  splits = {"trainval": ["000001", "000002", "000003", "000004"],
            "test": ["000005", "000006"]}
  classes = ["dog", "cat", "car", "dog", "bus", "cat"]
  if fault == "empty_split":
    splits["test"] = []
  for image_set, ids in splits.items():
    write(os.path.join(base, "ImageSets", "Main", f"{image_set}.txt"),
          "".join(f"{i}\n" for i in ids))
  for k, image_id in enumerate(["000001", "000002", "000003", "000004",
                                "000005", "000006"]):
    name = "unicorn" if fault == "unknown_class" and k == 1 else classes[k]
    write(os.path.join(base, "Annotations", f"{image_id}.xml"),
          f"<annotation><object><name>{name}</name><difficult>0</difficult>"
          "</object></annotation>")
    write(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), jpeg_bytes())
  return _image_fault(os.path.join(base, "JPEGImages", "000002.jpg"), fault,
                      {"unknown_class": "unicorn", "empty_split": "empty"}), {}


def coco_fixture(root, fault):
  base = os.path.join(root, "coco2014")
  categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
  named = {"unknown_class": "77", "empty_split": "empty"}
  for split, ids in (("train2014", [1, 2, 3, 4]), ("val2014", [5, 6])):
    images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg"}
              for i in ids]
    annotations = [{"id": 10 + i, "image_id": i, "category_id": 1 + i % 2}
                   for i in ids]
    if split == "train2014" and fault == "unknown_class":
      annotations[1]["category_id"] = 77
    if split == "val2014" and fault == "empty_split":
      annotations = []        # images without annotations are dropped
    for image in images:
      write(os.path.join(base, split, image["file_name"]), jpeg_bytes())
    write(os.path.join(base, "annotations", f"instances_{split}.json"),
          json.dumps({"images": images, "annotations": annotations,
                      "categories": categories}))
  path = os.path.join(base, "train2014", "COCO_train2014_000000000002.jpg")
  return _image_fault(path, fault, named), {}


def vg200_fixture(root, fault):
  base = os.path.join(root, "vg200")
  write(os.path.join(base, "categories.txt"), "man\nshirt\ntree\n")
  lines = {"train": ["1.jpg 0", "2.jpg 1 2", "3.jpg 2", "4.jpg 0 1"],
           "test": ["5.jpg 1", "6.jpg 0"]}
  if fault == "unknown_class":
    lines["train"][1] = "2.jpg 1 3"           # 3 classes: index 3 is outside
  if fault == "empty_split":
    lines["test"] = []
  for split, split_lines in lines.items():
    write(os.path.join(base, f"{split}_list.txt"),
          "".join(f"{line}\n" for line in split_lines))
  for n in range(1, 7):
    write(os.path.join(base, "VG_100K", f"{n}.jpg"), jpeg_bytes())
  return _image_fault(os.path.join(base, "VG_100K", "2.jpg"), fault,
                      {"unknown_class": "train_list.txt line 2",
                       "empty_split": "empty"}), {}


def mirflickr_fixture(root, fault):
  base = os.path.join(root, "mirflickr25k")
  images = os.path.join(base, "mirflickr")
  for n in range(1, 7):
    write(os.path.join(images, f"im{n}.jpg"), jpeg_bytes())
    write(os.path.join(images, "meta", "tags", f"tags{n}.txt"), "common\n")
  numbers = {"animals": [1, 3, 5], "sky": [2, 4, 6]}
  if fault == "unknown_class":   # classes are files: a number out of range
    numbers["sky"].append(30000)
  for concept, ns in numbers.items():
    write(os.path.join(base, "mirflickr25k_annotations_v080",
                       f"{concept}.txt"), "".join(f"{n}\n" for n in ns))
  overrides = dict(mirflickr_test_size=2, mirflickr_min_tag_count=1)
  # The seeded split puts images 2..5 in train (asserted by the test).
  return _image_fault(os.path.join(images, "im2.jpg"), fault,
                      {"unknown_class": "30000"}), overrides


def nuswide_fixture(root, fault):
  base = os.path.join(root, "nuswide")
  concepts = ("animal", "sky")
  labels = {"Train": [[1, 0], [0, 1], [1, 1], [1, 0]],
            "Test": [[0, 1], [1, 0]]}
  if fault == "empty_split":
    labels["Test"] = [[0, 0], [0, 0]]      # unlabelled images are dropped
  lists = {"Train": [f"a\\{n}.jpg" for n in (1, 2, 3, 4)],
           "Test": [f"b\\{n}.jpg" for n in (5, 6)]}
  write(os.path.join(base, "Concepts81.txt"),
        "\n".join(concepts + (("cloud",) if fault == "unknown_class" else ()))
        + "\n")
  for tag in ("Train", "Test"):
    for c, concept in enumerate(concepts):
      write(os.path.join(base, "Groundtruth", "TrainTestLabels",
                         f"Labels_{concept}_{tag}.txt"),
            "".join(f"{row[c]}\n" for row in labels[tag]))
    write(os.path.join(base, "ImageList", f"{tag}Imagelist.txt"),
          "\r\n".join(lists[tag]) + "\r\n")
    for entry in lists[tag]:
      folder, name = entry.split("\\")
      write(os.path.join(base, "Flickr", folder, name), jpeg_bytes())
  named = {"unknown_class": "cloud", "empty_split": "empty"}
  return (_image_fault(os.path.join(base, "Flickr", "a", "2.jpg"), fault,
                       named), dict(nuswide_input="image"))


def _image_fault(path, fault, named):
  """Applies an image-file fault to `path`; -> what the message names."""
  if fault == "corrupt_jpeg":
    with open(path, "rb") as f:
      data = f.read()
    write(path, corrupt_inside(data))
  elif fault == "truncated_jpeg":
    with open(path, "rb") as f:
      data = f.read()
    write(path, data[:len(data) // 2])
  elif fault == "missing_image":
    os.remove(path)
  if fault in ("corrupt_jpeg", "truncated_jpeg", "missing_image"):
    return os.path.basename(path)
  return named[fault]


READERS = {"voc2007": voc_fixture, "coco2014": coco_fixture,
           "vg200": vg200_fixture, "mirflickr25k": mirflickr_fixture,
           "nuswide": nuswide_fixture}
# Faults that a policy can skip, and the ones refused under both.
SKIPPABLE = ("corrupt_jpeg", "truncated_jpeg", "unknown_class",
             "missing_image", "empty_split")
REFUSED_ALWAYS = {("nuswide", "unknown_class")}


def data_config(root, name, policy, **overrides):
  config = base_config()
  config.data.name, config.data.dir = name, str(root)
  config.data.on_bad_example = policy
  config.data.image_size = 16
  config.data.parallel_calls = 1
  config.data.prefetch = 0
  config.train.global_batch_size = 1
  with config.unlocked():
    for key, value in overrides.items():
      config.data[key] = value
  return config


def run_epochs(config, source, epochs=2):
  """Every train batch of `epochs` epochs and one eval pass: no error."""
  steps = pipeline.steps_per_epoch(config, source.info) * epochs
  batches = pipeline.train_batches(config, source, None)
  seen = [next(batches)["labeled"] for _ in range(steps)]
  evaluated = list(pipeline.eval_batches(config, source, "test"))
  assert len(evaluated) == source.info.num_examples["test"]
  return seen


# MIRFLICKR draws its test split from the pairs, so it has no empty-split
# case of its own: it refuses a test size it cannot fill under either policy
# (test_mirflickr_split_sizes_it_cannot_fill_are_refused).
@pytest.mark.parametrize("reader, fault", [
    (reader, fault) for reader in READERS for fault in SKIPPABLE
    if (reader, fault) != ("mirflickr25k", "empty_split")])
def test_bad_example_is_refused_or_skipped(reader, fault, tmp_path, caplog,
                                           capfd):
  named, overrides = READERS[reader](tmp_path, fault)
  fail = data_config(tmp_path, reader, "fail", **overrides)
  skip = data_config(tmp_path, reader, "skip", **overrides)

  if (reader, fault) in REFUSED_ALWAYS:
    for config in (fail, skip):
      with pytest.raises(files.AnnotationError, match=named):
        data_info.load(config.data)
    return

  # "fail": refused before any batch, the message naming the problem.
  if fault == "corrupt_jpeg":      # found when the split is first read
    source = data_info.load(fail.data)
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
      pipeline.train_batches(fail, source, None)
  else:
    with pytest.raises(files.BadExampleError, match=named) as error:
      data_info.load(fail.data)
    assert "on_bad_example='skip'" in str(error.value)

  # "skip": counted, and whole epochs run.
  source = data_info.load(skip.data)
  info = source.info
  if fault == "empty_split":
    assert info.num_examples["test"] == 0
    assert "skipped 1 bad example" in caplog.text and "empty" in caplog.text
    # The trainer refuses it right after loading, before any compile.
    skip.data.image_size, skip.train.global_batch_size = 32, 8
    with pytest.raises(train.TrainingError, match="'test' has no examples"):
      train.setup(skip, str(tmp_path / "run"))
    return
  if fault == "corrupt_jpeg":      # kept as a blank that weighs nothing
    assert info.num_examples["train"] == 4
    batches = run_epochs(skip, source)
    blank = [b for b in batches if b["label_mask"].sum() == 0]
    assert len(blank) == 2 and all(b["index"][0] == blank[0]["index"][0]
                                   for b in blank)
    err = capfd.readouterr().err
    assert named in err and "1 so far in this pass" in err
  else:                             # dropped at load time, counted
    # A mirflickr image number out of range names no image: none dropped.
    dropped = 0 if (reader, fault) == ("mirflickr25k", "unknown_class") else 1
    assert info.num_examples["train"] == 4 - dropped
    assert "skipped 1 bad example" in caplog.text and named in caplog.text
    batches = run_epochs(skip, source)
    assert all(b["label_mask"].sum() > 0 for b in batches)
  assert len(batches) == 2 * info.num_examples["train"]


def test_mirflickr_split_sizes_it_cannot_fill_are_refused(tmp_path):
  base = tmp_path / "mirflickr25k"
  for n in range(1, 4):
    write(str(base / "mirflickr" / f"im{n}.jpg"), jpeg_bytes())
    write(str(base / "mirflickr" / "meta" / "tags" / f"tags{n}.txt"), "a\n")
  write(str(base / "mirflickr25k_annotations_v080" / "sky.txt"), "1\n2\n3\n")
  for policy in ("fail", "skip"):
    config = data_config(tmp_path, "mirflickr25k", policy,
                         mirflickr_test_size=3, mirflickr_min_tag_count=1)
    with pytest.raises(ValueError, match="mirflickr_test_size=3"):
      data_info.load(config.data)


# ------------------------------------------------- feature files (.npz/.dat)

def paired(n, m=4, d=3, c=2):
  return dict(x1=RNG.normal(size=(n, m)).astype(np.float32),
              x2=RNG.normal(size=(n, d)).astype(np.float32),
              labels=(RNG.random((n, c)) < 0.5).astype(np.uint8))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_npz_of_mismatched_lengths_is_refused_under_both(tmp_path, policy):
  train_arrays = paired(6)
  train_arrays["x2"] = train_arrays["x2"][:5]
  np.savez(tmp_path / "train.npz", **train_arrays)
  np.savez(tmp_path / "test.npz", **paired(2))
  config = data_config(tmp_path, "paired_features", policy)
  with pytest.raises(files.AnnotationError,
                     match=r"x1 has 6 rows, x2 has 5 rows") as error:
    data_info.load(config.data)
  assert "train split" in str(error.value)


def test_npz_empty_split_fails_or_is_skipped_then_refused(tmp_path, caplog):
  np.savez(tmp_path / "train.npz", **paired(6))
  np.savez(tmp_path / "test.npz", **paired(0))
  with pytest.raises(files.BadExampleError, match="test split.*empty"):
    data_info.load(data_config(tmp_path, "paired_features", "fail").data)
  config = data_config(tmp_path, "paired_features", "skip")
  source = data_info.load(config.data)
  assert source.info.num_examples["test"] == 0
  assert "skipped 1 bad example" in caplog.text
  with pytest.raises(train.TrainingError, match="'test' has no examples"):
    train.check_splits(config, source.info)


def test_nuswide_feature_file_of_other_length_is_refused(tmp_path):
  base = tmp_path / "nuswide"
  for tag, rows in (("Train", 4), ("Test", 2)):
    write(str(base / "Groundtruth" / "TrainTestLabels" /
              f"Labels_sky_{tag}.txt"), "1\n" * rows)
    short = rows - (1 if tag == "Train" else 0)   # one row missing
    write(str(base / "Low_Level_Features" / f"{tag}_Normalized_CH.dat"),
          "".join(" ".join(["0.5"] * 64) + "\n" for _ in range(short)))
  for policy in ("fail", "skip"):
    config = data_config(tmp_path, "nuswide", policy,
                         nuswide_features=("ch",))
    with pytest.raises(files.AnnotationError,
                       match=r"Train_Normalized_CH.dat has 3 rows but the "
                       r"Train label files have 4"):
      data_info.load(config.data)
