"""Real-dataset readers (coco2014, voc2007, vg200) on fixtures written here.

Every fixture is in the real on-disk format (instances_*.json, VOCdevkit XML,
VG split lists, JPEGs via PIL); the TFDS layouts are built by TFDS' own
coco/voc builders from the same fixtures with the download step patched to
return them, so both layouts are compared on identical data.
"""
import json
import os
import time
from unittest import mock

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxmlc.config_base import base_config
from jaxmlc.data.builders import coco, image_files, vg200, voc
from jaxmlc.data.builders.image_files import (
    AnnotationError, BadExampleError, BadExamples, DatasetNotFoundError)


def data_config(directory, **overrides):
  config = base_config().data
  config.dir = str(directory)
  config.parallel_calls = 1
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def write_jpeg(path, size=(8, 6), color=(200, 30, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path, "JPEG")


def write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def all_examples(source, split):
  return list(source.examples(split).as_numpy_iterator())


def check_examples_agree_with_info(source, split):
  examples = all_examples(source, split)
  assert [e["index"] for e in examples] == list(range(len(examples)))
  assert len(examples) == source.info.num_examples[split]
  for e in examples:
    assert e["image"].dtype == np.uint8 and e["image"].ndim == 3
    assert e["image"].shape[-1] == 3
    assert e["labels"].shape == (source.info.num_classes,)
  if split == "train" and examples:
    np.testing.assert_array_equal(
        np.stack([e["labels"] for e in examples]), source.info.train_labels)
    np.testing.assert_array_equal(
        np.stack([e["label_mask"] for e in examples]),
        source.info.train_label_mask)
  return examples


# ----------------------------------------------------------------- COCO ----

# Category ids deliberately out of order in the file: class order is id order.
COCO_CATEGORIES = [{"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 2, "name": "bicycle", "supercategory": "vehicle"}]


def coco_image(image_id, split):
  return {"id": image_id, "file_name": f"COCO_{split}_{image_id:012d}.jpg",
          "height": 6, "width": 8}


def coco_annotation(annotation_id, image_id, category_id, crowd=0):
  return {"id": annotation_id, "image_id": image_id,
          "category_id": category_id, "iscrowd": crowd,
          "bbox": [0.0, 0.0, 2.0, 2.0], "area": 4.0, "segmentation": []}


def write_coco(root, categories=COCO_CATEGORIES, train=None, val=None,
               missing_files=()):
  """train / val: (images, annotations); JPEGs of varying sizes."""
  train = train or ([coco_image(i, "train2014") for i in (9, 5, 7)],
                    [coco_annotation(1, 9, 3), coco_annotation(2, 9, 1),
                     coco_annotation(3, 7, 2, crowd=1)])
  val = val or ([coco_image(i, "val2014") for i in (4, 8)],
                [coco_annotation(4, 8, 1)])
  for coco_split, (images, annotations) in (("train2014", train),
                                            ("val2014", val)):
    for k, image in enumerate(images):
      if image["file_name"] not in missing_files:
        write_jpeg(os.path.join(root, coco_split, image["file_name"]),
                   size=(8 + 3 * k, 6 + k))
    write(os.path.join(root, "annotations", f"instances_{coco_split}.json"),
          json.dumps({"images": images, "annotations": annotations,
                      "categories": categories}))


def test_coco_class_order_labels_and_images_without_annotations(tmp_path):
  write_coco(tmp_path / "coco2014")
  source = coco.load_coco2014(data_config(tmp_path))
  info = source.info
  assert info.class_names == ("person", "bicycle", "car")   # id order
  # Files differ in size: image_size None tells the pipeline to resize.
  assert info.input_kind == "image" and info.image_size is None
  # Image 5 has no annotation: dropped. File order kept: 9, then 7.
  assert info.num_examples == {"train": 2, "test": 1}
  np.testing.assert_array_equal(info.train_labels, [[1, 0, 1], [0, 1, 0]])
  np.testing.assert_array_equal(info.train_label_mask, np.ones((2, 3)))
  assert info.train_labels.dtype == np.uint8
  examples = check_examples_agree_with_info(source, "train")
  assert [e["id"] for e in examples] == [b"COCO_train2014_000000000009",
                                         b"COCO_train2014_000000000007"]
  # Original sizes, not resized (the pipeline resizes).
  assert [e["image"].shape for e in examples] == [(6, 8, 3), (8, 14, 3)]
  test = check_examples_agree_with_info(source, "test")
  np.testing.assert_array_equal(test[0]["labels"], [1, 0, 0])


def test_coco_missing_dataset_fails_fast_with_the_layout(tmp_path):
  start = time.perf_counter()
  with pytest.raises(DatasetNotFoundError) as error:
    coco.load_coco2014(data_config(tmp_path / "nowhere"))
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  for expected in ("train2014/", "val2014/", "instances_train2014.json",
                   "annotations_trainval2014.zip",
                   "tfds build coco/2014 --data_dir=", "does not exist"):
    assert expected in message


def test_coco_partial_directory_is_reported_as_found(tmp_path):
  write_jpeg(tmp_path / "coco2014" / "train2014" / "a.jpg")
  with pytest.raises(DatasetNotFoundError, match="train2014"):
    coco.load_coco2014(data_config(tmp_path))


@pytest.mark.parametrize("problem", ["unknown_image", "unknown_class",
                                     "missing_file"])
def test_coco_bad_examples_fail_or_skip(tmp_path, problem, caplog):
  images = [coco_image(i, "train2014") for i in (1, 2, 3)]
  annotations = [coco_annotation(1, 1, 1), coco_annotation(2, 2, 2),
                 coco_annotation(3, 3, 3)]
  missing = ()
  if problem == "unknown_image":
    annotations.append(coco_annotation(4, 99, 1))
    named = "99"
  elif problem == "unknown_class":
    annotations.append(coco_annotation(4, 2, 77))
    named = "77"
  else:
    missing = (images[1]["file_name"],)
    named = images[1]["file_name"]
  write_coco(tmp_path, train=(images, annotations), missing_files=missing)
  with pytest.raises(BadExampleError, match=named) as error:
    coco.load_coco2014(data_config(tmp_path))
  assert "instances_train2014.json" in str(error.value)
  assert "on_bad_example='skip'" in str(error.value)

  source = coco.load_coco2014(data_config(tmp_path, on_bad_example="skip"))
  expected = 3 if problem == "unknown_image" else 2   # image 2 dropped
  assert source.info.num_examples["train"] == expected
  assert "skipped 1 bad example" in caplog.text and named in caplog.text
  check_examples_agree_with_info(source, "train")


def test_coco_empty_split_fails_or_skips(tmp_path, caplog):
  write_coco(tmp_path, val=([coco_image(4, "val2014")], []))
  with pytest.raises(BadExampleError, match="empty"):
    coco.load_coco2014(data_config(tmp_path))
  source = coco.load_coco2014(data_config(tmp_path, on_bad_example="skip"))
  assert source.info.num_examples["test"] == 0
  assert all_examples(source, "test") == []
  assert "empty" in caplog.text


def test_coco_truncated_jpeg_is_found_at_index_time(tmp_path, caplog):
  write_coco(tmp_path)
  truncated = tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
  truncated.write_bytes(truncated.read_bytes()[:-40])
  with pytest.raises(BadExampleError, match=f"{truncated} is truncated"):
    coco.load_coco2014(data_config(tmp_path))
  source = coco.load_coco2014(data_config(tmp_path, on_bad_example="skip"))
  assert source.info.num_examples["train"] == 1
  assert "skipped 1 bad example" in caplog.text
  examples = check_examples_agree_with_info(source, "train")
  assert [e["id"] for e in examples] == [b"COCO_train2014_000000000007"]


# Passes the cheap index-time probe (JPEG start and end markers), fails to
# decode: what a file corrupt inside looks like.
CORRUPT_INSIDE = b"\xff\xd8\xff\xe0" + b"\x00\x10garbage" * 4 + b"\xff\xd9"


@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize("which", ["first", "last"])
def test_coco_image_unreadable_at_read_time(tmp_path, capfd, encoded, which):
  write_coco(tmp_path)
  name = {"first": "COCO_train2014_000000000009.jpg",
          "last": "COCO_train2014_000000000007.jpg"}[which]
  position = {"first": 0, "last": 1}[which]
  corrupt = tmp_path / "train2014" / name

  def read(source):
    split = source.encoded_examples if encoded else source.examples
    return list(split("train").as_numpy_iterator())

  corrupt.write_bytes(CORRUPT_INSIDE)
  source = coco.load_coco2014(data_config(tmp_path))
  with pytest.raises(tf.errors.InvalidArgumentError, match=str(corrupt)):
    read(source)

  source = coco.load_coco2014(data_config(tmp_path, on_bad_example="skip"))
  examples = read(source)
  # Index, id and labels stay; the image is a blank and every label unknown.
  assert [e["index"] for e in examples] == [0, 1]
  assert [e["id"] for e in examples] == [b"COCO_train2014_000000000009",
                                         b"COCO_train2014_000000000007"]
  np.testing.assert_array_equal(
      np.stack([e["labels"] for e in examples]), source.info.train_labels)
  assert examples[position]["label_mask"].sum() == 0
  assert examples[1 - position]["label_mask"].sum() == 3
  blank = examples[position]["image"]
  if encoded:
    blank = tf.io.decode_jpeg(blank).numpy()
  assert blank.shape == (1, 1, 3)
  err = capfd.readouterr().err
  assert str(corrupt) in err and "1 so far in this pass" in err


def test_encoded_examples_are_the_file_bytes(tmp_path):
  write_coco(tmp_path)
  source = coco.load_coco2014(data_config(tmp_path))
  decoded = all_examples(source, "train")
  encoded = list(source.encoded_examples("train").as_numpy_iterator())
  assert [e["index"] for e in encoded] == [0, 1]
  for d, e in zip(decoded, encoded):
    path = tmp_path / "train2014" / (d["id"].decode() + ".jpg")
    assert e["image"] == path.read_bytes()
    np.testing.assert_array_equal(tf.io.decode_jpeg(e["image"]).numpy(),
                                  d["image"])
    np.testing.assert_array_equal(e["labels"], d["labels"])


def _build_tfds(name, data_dir, extracted):
  """Runs TFDS' own builder on fixture files (the download step patched)."""
  import tensorflow_datasets as tfds
  def fake_download(self, urls):
    return {key: str(extracted) for key in urls}
  with mock.patch.object(tfds.download.DownloadManager,
                         "download_and_extract", fake_download):
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))


COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45),
            *range(46, 66), 67, 70, *range(72, 83), *range(84, 91)]


def test_coco_tfds_layout_maps_classes_by_name(tmp_path):
  # All 80 categories, listed in reverse so that TFDS numbers them
  # differently from the id order.
  categories = [{"id": i, "name": n, "supercategory": "s"}
                for i, n in zip(COCO_IDS, coco.COCO_CLASSES)][::-1]
  extracted = tmp_path / "extracted"
  train = ([coco_image(i, "train2014") for i in (1, 2, 3, 4)],
           [coco_annotation(1, 1, 1), coco_annotation(2, 1, 90),
            coco_annotation(3, 3, 5), coco_annotation(4, 4, 44)])
  val = ([coco_image(i, "val2014") for i in (5, 6)], [coco_annotation(5, 6, 2)])
  write_coco(extracted, categories, train, val)
  for name, folder in (("image_info_test2014", "test2014"),
                       ("image_info_test2015", "test2015")):
    image = coco_image(1, folder)
    write_jpeg(extracted / folder / image["file_name"])
    write(extracted / "annotations" / f"{name}.json",
          json.dumps({"images": [image], "categories": categories}))
  _build_tfds("coco/2014", tmp_path / "tfds", extracted)

  local = coco.load_coco2014(data_config(extracted))
  from_tfds = coco.load_coco2014(data_config(tmp_path / "tfds"))
  assert isinstance(from_tfds, image_files.TfdsSource)
  assert local.info.class_names == coco.COCO_CLASSES
  assert from_tfds.info.class_names == coco.COCO_CLASSES
  assert local.info.num_examples == from_tfds.info.num_examples == {
      "train": 3, "test": 1}
  for split in ("train", "test"):
    by_id = {e["id"]: e for e in check_examples_agree_with_info(local, split)}
    tfds_examples = check_examples_agree_with_info(from_tfds, split)
    assert sorted(by_id) == sorted(e["id"] for e in tfds_examples)
    for e in tfds_examples:
      np.testing.assert_array_equal(e["labels"], by_id[e["id"]]["labels"])
      np.testing.assert_array_equal(e["image"], by_id[e["id"]]["image"])
  person_and_toothbrush = np.zeros(80, np.uint8)
  person_and_toothbrush[[0, 79]] = 1
  assert any((row == person_and_toothbrush).all()
             for row in from_tfds.info.train_labels)


# ------------------------------------------------------------------ VOC ----

def voc_xml(*objects):
  """objects: (name, difficult) pairs -> a VOC annotation file."""
  body = "".join(
      f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
      f"<difficult>{int(difficult)}</difficult><bndbox><xmin>1</xmin>"
      "<ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
      for name, difficult in objects)
  return ("<annotation><folder>VOC2007</folder><filename>x.jpg</filename>"
          "<size><width>8</width><height>6</height><depth>3</depth></size>"
          f"{body}</annotation>")


VOC_TRAINVAL = {
    "000005": [("dog", 0), ("person", 1)],           # person only difficult
    "000007": [("cat", 0), ("cat", 1)],              # cat: a plain one too
    "000009": [("chair", 1), ("chair", 1), ("car", 0)],
}
VOC_TEST = {
    "000001": [("bus", 0), ("car", 1)],              # car only difficult
    "000002": [("Aeroplane", 0)],                     # names are lowercased
}


def write_voc(base, trainval=VOC_TRAINVAL, test=VOC_TEST, extra_xml=None):
  root = os.path.join(base, "VOCdevkit", "VOC2007")
  for image_set, images in (("trainval", trainval), ("test", test)):
    for image_id, objects in images.items():
      write_jpeg(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
      write(os.path.join(root, "Annotations", f"{image_id}.xml"),
            (extra_xml or {}).get(image_id, voc_xml(*objects)))
    write(os.path.join(root, "ImageSets", "Main", f"{image_set}.txt"),
          "".join(f"{i}\n" for i in images))
  # TFDS' builder reads the train/val lists.
  ids = list(trainval)
  write(os.path.join(root, "ImageSets", "Main", "train.txt"),
        "".join(f"{i}\n" for i in ids[:2]))
  write(os.path.join(root, "ImageSets", "Main", "val.txt"),
        "".join(f"{i}\n" for i in ids[2:]))
  return root


def column(name):
  return voc.VOC_CLASSES.index(name)


@pytest.mark.parametrize("as_negative", [False, True])
def test_voc_difficult_objects(tmp_path, as_negative):
  write_voc(tmp_path)
  source = voc.load_voc2007(data_config(
      tmp_path, voc_difficult_as_negative=as_negative))
  info = source.info
  assert info.class_names == voc.VOC_CLASSES and info.num_classes == 20
  assert info.num_examples == {"train": 3, "test": 2}
  labels, mask = info.train_labels, info.train_label_mask
  dropped = 1 if as_negative else 0   # mask of an only-difficult class
  assert labels[0, column("dog")] == 1 and mask[0, column("dog")] == 1
  assert labels[0, column("person")] == 0
  assert mask[0, column("person")] == dropped
  assert labels[1, column("cat")] == 1 and mask[1, column("cat")] == 1
  assert labels[2, column("chair")] == 0
  assert mask[2, column("chair")] == dropped
  assert labels[2, column("car")] == 1
  assert labels.sum() == 3          # dog, cat, car and nothing else
  assert mask.sum() == 60 - (0 if as_negative else 2)
  examples = check_examples_agree_with_info(source, "train")
  assert [e["id"] for e in examples] == [b"000005", b"000007", b"000009"]
  test = check_examples_agree_with_info(source, "test")
  assert test[0]["labels"][column("bus")] == 1
  assert test[0]["labels"][column("car")] == 0
  assert test[0]["label_mask"][column("car")] == dropped
  assert test[1]["labels"][column("aeroplane")] == 1
  assert test[1]["label_mask"].sum() == 20


@pytest.mark.parametrize("layout", ["VOCdevkit", "VOCdevkit/VOC2007"])
def test_voc_accepts_devkit_or_voc2007_as_the_dir(tmp_path, layout):
  write_voc(tmp_path)
  source = voc.load_voc2007(data_config(tmp_path / layout))
  assert source.info.num_examples == {"train": 3, "test": 2}


def test_voc_missing_dataset_fails_fast_with_the_layout(tmp_path):
  (tmp_path / "VOCdevkit").mkdir()
  start = time.perf_counter()
  with pytest.raises(DatasetNotFoundError) as error:
    voc.load_voc2007(data_config(tmp_path))
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  for expected in ("JPEGImages", "Annotations/<id>.xml",
                   "ImageSets/Main/trainval.txt", "VOCtrainval_06-Nov-2007.tar",
                   "VOCtest_06-Nov-2007.tar", "tfds build voc/2007",
                   "holds: VOCdevkit"):
    assert expected in message


@pytest.mark.parametrize("problem", ["unknown_class", "garbled_xml",
                                     "missing_jpeg", "missing_xml"])
def test_voc_bad_examples_fail_or_skip(tmp_path, problem, caplog):
  extra = {}
  if problem == "unknown_class":
    extra["000007"] = voc_xml(("unicorn", 0))
  elif problem == "garbled_xml":
    extra["000007"] = "<annotation><object><name>cat"
  root = write_voc(tmp_path, extra_xml=extra)
  if problem == "missing_jpeg":
    os.remove(os.path.join(root, "JPEGImages", "000007.jpg"))
  elif problem == "missing_xml":
    os.remove(os.path.join(root, "Annotations", "000007.xml"))
  named = {"unknown_class": "unicorn", "garbled_xml": "000007.xml",
           "missing_jpeg": "000007.jpg", "missing_xml": "000007.xml"}[problem]
  with pytest.raises(BadExampleError, match=named):
    voc.load_voc2007(data_config(tmp_path))
  source = voc.load_voc2007(data_config(tmp_path, on_bad_example="skip"))
  assert source.info.num_examples == {"train": 2, "test": 2}
  assert "skipped 1 bad example" in caplog.text
  examples = check_examples_agree_with_info(source, "train")
  assert [e["id"] for e in examples] == [b"000005", b"000009"]


@pytest.mark.parametrize("as_negative", [False, True])
def test_voc_tfds_layout_agrees_with_the_devkit(tmp_path, as_negative):
  write_voc(tmp_path / "extracted")
  _build_tfds("voc/2007", tmp_path / "tfds", tmp_path / "extracted")
  config = dict(voc_difficult_as_negative=as_negative)
  local = voc.load_voc2007(data_config(tmp_path / "extracted", **config))
  from_tfds = voc.load_voc2007(data_config(tmp_path / "tfds", **config))
  assert isinstance(from_tfds, image_files.TfdsSource)
  assert from_tfds.info.class_names == voc.VOC_CLASSES
  assert from_tfds.info.num_examples == {"train": 3, "test": 2}
  for split in ("train", "test"):
    by_id = {e["id"]: e for e in check_examples_agree_with_info(local, split)}
    for e in check_examples_agree_with_info(from_tfds, split):
      np.testing.assert_array_equal(e["labels"], by_id[e["id"]]["labels"])
      np.testing.assert_array_equal(e["label_mask"],
                                    by_id[e["id"]]["label_mask"])


# ------------------------------------------------------------------- VG ----

VG_CATEGORIES = ["man", "shirt", "tree", "window"]


def write_vg(base, train_lines, test_lines, author_format=False,
             categories=True, images=("1.jpg", "2.jpg", "3.jpg", "4.jpg")):
  root = os.path.join(base, "vg200")
  for k, name in enumerate(images):
    folder = "VG_100K" if k % 2 == 0 else "VG_100K_2"   # both folders used
    write_jpeg(os.path.join(root, folder, name), size=(5 + k, 7))
  if categories:
    write(os.path.join(root, "categories.txt"),
          "".join(f"{n}\n" for n in VG_CATEGORIES))
  if author_format:
    index = {}
    for split, lines in (("train", train_lines), ("test", test_lines)):
      names = [line.split()[0] for line in lines]
      for line in lines:
        index[line.split()[0]] = [int(i) for i in line.split()[1:]]
      write(os.path.join(root, f"{split}_list_500.txt"),
            "".join(f"{n}\n" for n in names))
    write(os.path.join(root, "vg_category_200_labels_index.json"),
          json.dumps(index))
  else:
    write(os.path.join(root, "train_list.txt"), "\n".join(train_lines) + "\n")
    write(os.path.join(root, "test_list.txt"), "\n".join(test_lines) + "\n")
  return root


@pytest.mark.parametrize("author_format", [False, True])
def test_vg_labels_in_list_order(tmp_path, author_format):
  write_vg(tmp_path, ["3.jpg 0 2", "1.jpg\t3", "2.jpg 1 1"], ["4.jpg 2"],
           author_format=author_format)
  source = vg200.load_vg200(data_config(tmp_path))
  info = source.info
  assert info.class_names == tuple(VG_CATEGORIES)
  assert info.num_examples == {"train": 3, "test": 1}
  np.testing.assert_array_equal(
      info.train_labels, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
  assert info.train_label_mask.all()
  examples = check_examples_agree_with_info(source, "train")
  assert [e["id"] for e in examples] == [b"3", b"1", b"2"]
  assert [e["image"].shape[1] for e in examples] == [7, 5, 6]
  check_examples_agree_with_info(source, "test")


def test_vg_author_files_without_category_names(tmp_path, caplog):
  write_vg(tmp_path, ["1.jpg 0 199"], ["2.jpg 5"], author_format=True,
           categories=False)
  source = vg200.load_vg200(data_config(tmp_path))
  assert source.info.num_classes == 200
  assert source.info.class_names[199] == "category_199"
  assert "categories.txt" in caplog.text
  assert source.info.train_labels[0, [0, 199]].tolist() == [1, 1]


def test_vg_missing_dataset_fails_fast_with_the_layout(tmp_path):
  write(tmp_path / "vg200" / "train_list.txt", "1.jpg 0\n")  # lists only
  start = time.perf_counter()
  with pytest.raises(DatasetNotFoundError) as error:
    vg200.load_vg200(data_config(tmp_path))
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  for expected in ("VG_100K/", "categories.txt", "train_list.txt",
                   "<image file name> <0-based category index>",
                   "vg_category_200_labels_index.json", "images.zip",
                   "images2.zip", "train_list.txt"):
    assert expected in message


@pytest.mark.parametrize("problem", ["class_outside", "missing_image",
                                     "not_an_index", "listed_twice"])
def test_vg_bad_examples_fail_or_skip(tmp_path, problem, caplog):
  bad_line = {"class_outside": "2.jpg 1 4", "missing_image": "9.jpg 1",
              "not_an_index": "2.jpg one", "listed_twice": "1.jpg 2"}[problem]
  write_vg(tmp_path, ["1.jpg 0", bad_line, "3.jpg 2"], ["4.jpg 1"])
  with pytest.raises(BadExampleError, match="train_list.txt"):
    vg200.load_vg200(data_config(tmp_path))
  source = vg200.load_vg200(data_config(tmp_path, on_bad_example="skip"))
  assert source.info.num_examples["train"] == 2
  assert "skipped 1 bad example" in caplog.text
  check_examples_agree_with_info(source, "train")


def test_vg_image_deleted_after_indexing(tmp_path, capfd):
  root = write_vg(tmp_path, ["1.jpg 0", "2.jpg 1", "3.jpg 2"], ["4.jpg 1"])
  strict = vg200.load_vg200(data_config(tmp_path))
  lenient = vg200.load_vg200(data_config(tmp_path, on_bad_example="skip"))
  os.remove(os.path.join(root, "VG_100K_2", "2.jpg"))
  examples = all_examples(lenient, "train")
  assert [e["index"] for e in examples] == [0, 1, 2]
  assert [e["label_mask"].sum() for e in examples] == [4, 0, 4]
  # Each pass counts afresh.
  all_examples(lenient, "train")
  assert capfd.readouterr().err.count("1 so far in this pass") == 2
  with pytest.raises(tf.errors.InvalidArgumentError, match="2.jpg"):
    all_examples(strict, "train")


def test_unknown_policy_and_split_are_clear_errors(tmp_path):
  write_vg(tmp_path, ["1.jpg 0"], ["4.jpg 1"])
  with pytest.raises(ValueError, match="on_bad_example"):
    vg200.load_vg200(data_config(tmp_path, on_bad_example="ignore"))
  source = vg200.load_vg200(data_config(tmp_path))
  with pytest.raises(ValueError, match="'unlabeled'"):
    source.examples("unlabeled")


@pytest.mark.parametrize("name", ["coco2014", "voc2007", "vg200"])
def test_registered_and_missing_fails_fast_through_load(tmp_path, name):
  from jaxmlc.data import info
  config = data_config(tmp_path / "absent")
  config.name = name
  start = time.perf_counter()
  with pytest.raises(DatasetNotFoundError, match="does not exist"):
    info.load(config)
  assert time.perf_counter() - start < 1.0


def test_the_pipeline_reads_a_real_layout(tmp_path):
  # The contract with data/pipeline.py: image_size None (sizes differ), and
  # encoded_examples() whose bytes it decodes and resizes.
  from jaxmlc.data import pipeline
  write_voc(tmp_path)
  config = base_config()
  config.data.dir, config.data.name = str(tmp_path), "voc2007"
  config.data.image_size, config.train.global_batch_size = 16, 2
  source = voc.load_voc2007(config.data)
  batches = list(pipeline.eval_batches(config, source, "test"))
  assert len(batches) == 1
  batch = batches[0]["labeled"]
  assert batch["image"].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch["label_mask"].sum(axis=1), [19, 20])
  train = next(pipeline.train_batches(config, source, None))["labeled"]
  assert train["image"].shape == (2, 16, 16, 3)


# ---------------------------------------------------- parser fuzzing -------

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
policies = st.sampled_from(["fail", "skip"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 100)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def mostly(good, damaged):
  """`good` 8 times in 10, else `damaged`."""
  return st.integers(0, 9).flatmap(lambda k: good if k < 8 else damaged)


def coco_like():
  """Mostly well-formed COCO structures with random damage."""
  ids = mostly(st.integers(1, 4), json_values)
  image = st.fixed_dictionaries(
      {"id": ids, "file_name": mostly(st.sampled_from(["a.jpg", "b.jpg"]),
                                      json_values)})
  annotation = st.fixed_dictionaries(
      {"id": ids, "image_id": ids, "category_id": ids})
  categories = mostly(
      st.just([{"id": 2, "name": "car"}, {"id": 1, "name": "person"}]),
      st.lists(st.fixed_dictionaries({"id": ids, "name": st.text(max_size=3)})
               | json_values, max_size=3))
  return mostly(st.fixed_dictionaries({
      "images": st.lists(mostly(image, json_values), max_size=5),
      "annotations": st.lists(mostly(annotation, json_values), max_size=8),
      "categories": categories}), json_values)


@FUZZ
@given(document=coco_like(), policy=policies,
       garble=mostly(st.none(), st.integers(0, 200)))
def test_fuzz_coco_instances_parser(document, policy, garble):
  text = json.dumps(document)
  if garble is not None:
    text = text[:garble] + "}{" + text[garble:]
  bad = BadExamples("coco2014", "train", policy)
  try:
    result = coco.parse_instances(text, "instances_train2014.json", bad)
  except AnnotationError as e:
    assert "instances_train2014.json" in str(e)
    return
  assert result.labels.shape == (len(result.file_names),
                                 len(result.class_names))
  assert set(np.unique(result.labels)) <= {0, 1}
  assert result.labels.sum(axis=1).min(initial=1) >= 1   # annotated images only


xml_names = st.sampled_from(["dog", "Cat", " person ", "unicorn", "", "&amp;",
                             "&e;"])
xml_flags = st.sampled_from(["0", "1", "", "2", " 1 "])


@st.composite
def voc_like(draw):
  objects = draw(st.lists(st.tuples(xml_names, xml_flags, st.booleans()),
                          max_size=4))
  body = "".join(
      f"<object><name>{n}</name>"
      + (f"<difficult>{f}</difficult>" if has else "")
      + "</object>" for n, f, has in objects)
  declaration = draw(st.sampled_from(
      ["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-8"?>',
       '<?xml version="1.0" encoding="no-such-codec"?>',
       '<!DOCTYPE a [<!ENTITY e "dog">]>']))
  text = f"{declaration}<annotation>{body}</annotation>"
  cut = draw(st.none() | st.integers(0, len(text)))
  if cut is not None:
    text = text[:cut] + draw(st.text(max_size=5)) + text[cut:]
  return text


@FUZZ
@given(text=voc_like() | st.text(max_size=40) | st.binary(max_size=40),
       as_negative=st.booleans())
def test_fuzz_voc_annotation_parser(text, as_negative):
  try:
    positive, difficult_only = voc.parse_annotation(text, "000001.xml")
  except AnnotationError as e:
    assert "000001.xml" in str(e)
    return
  assert not positive & difficult_only
  labels, mask = voc.labels_and_mask(positive, difficult_only, 20, as_negative)
  assert ((labels == 1) <= (mask == 1)).all()
  assert mask.sum() == 20 - (0 if as_negative else len(difficult_only))


list_lines = st.lists(
    st.one_of(st.text(max_size=12),
              st.builds(lambda name, idx: " ".join([name, *map(str, idx)]),
                        st.sampled_from(["1.jpg", "2.jpg", "a b"]),
                        st.lists(st.integers(-2, 5) | st.just("9" * 5000),
                                 max_size=3))),
    max_size=6).map("\n".join)


@FUZZ
@given(text=list_lines | st.binary(max_size=30), policy=policies)
def test_fuzz_vg_split_list_parser(text, policy):
  bad = BadExamples("vg200", "train", policy)
  try:
    entries = vg200.parse_split_list(text, "train_list.txt", 4, bad)
  except AnnotationError as e:
    assert "train_list.txt" in str(e)
    return
  names = [name for name, _ in entries]
  assert len(names) == len(set(names))
  assert all(0 <= c < 4 for _, columns in entries for c in columns)


@FUZZ
@given(names=list_lines,
       labels=mostly(st.dictionaries(
           st.sampled_from(["1.jpg", "2.jpg", "a b"]),
           mostly(st.lists(st.integers(-1, 5), max_size=3), json_values)),
           json_values),
       policy=policies, garble=mostly(st.just(False), st.just(True)))
def test_fuzz_vg_author_files_parser(names, labels, policy, garble):
  bad = BadExamples("vg200", "train", policy)
  labels_text = json.dumps(labels) + ("]" if garble else "")
  try:
    entries = vg200.parse_author_lists(names, "train_list_500.txt",
                                       labels_text, "labels.json", 4, bad)
  except AnnotationError as e:
    assert "train_list_500.txt" in str(e) or "labels.json" in str(e)
    return
  assert all(0 <= c < 4 for _, columns in entries for c in columns)


@FUZZ
@given(text=st.text(max_size=40) | st.binary(max_size=40), policy=policies)
def test_fuzz_category_and_image_set_parsers(text, policy):
  try:
    names = vg200.parse_categories(text, "categories.txt")
    assert len(names) == len(set(names)) and all(names)
  except AnnotationError as e:
    assert "categories.txt" in str(e)
  try:
    ids = voc.parse_image_set(text, "trainval.txt",
                              BadExamples("voc2007", "train", policy))
    assert all(i and " " not in i for i in ids)
  except AnnotationError as e:
    assert "trainval.txt" in str(e)
