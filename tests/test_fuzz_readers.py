"""Fuzzing the readers' parsers: garbage and mutated files give a valid
result or a ValueError (AnnotationError) naming the file -- never another
exception type.

test_readers.py fuzzes the COCO / VOC / VG-200 parsers on generated
structures; here every text parser also gets byte-level mutations of a
valid file, and the NUS-WIDE, MIRFLICKR, paired-features, YouTube-8M and
image-file checks get their own. Examples are few (a run is < 30 s).
"""
import io
import json
import os
import tempfile
import warnings

from hypothesis import HealthCheck, example, given, settings, strategies as st
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from jaxmlc.data.builders import coco, mirflickr, nuswide, paired_features
from jaxmlc.data.builders import vg200, voc, yt8m
from jaxmlc.data.builders import image_files as files
from jaxmlc.data.builders.image_files import AnnotationError, BadExamples

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
SLOW_FUZZ = settings(FUZZ, max_examples=10)   # each builds a tf.data graph


@st.composite
def mutated(draw, valid: bytes):
  """`valid` with a few random byte edits: replace, insert, delete, cut."""
  data = bytearray(valid)
  for _ in range(draw(st.integers(1, 4))):
    kind = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "replace" and data:
      data[at] = draw(st.integers(0, 255))
    elif kind == "insert":
      data[at:at] = draw(st.binary(min_size=1, max_size=4))
    elif kind == "delete":
      del data[at:at + draw(st.integers(1, 4))]
    else:
      del data[at:]
  return bytes(data)


def garbage_or_mutated(valid: bytes):
  return st.binary(max_size=60) | mutated(valid)


def expect_named(call, where):
  """call() returns, or raises a ValueError whose message names `where`."""
  try:
    return call()
  except ValueError as e:
    assert where in str(e), f"{type(e).__name__}: {e}"
    return None


# ------------------------------------------- text parsers, mutated files

COCO_VALID = json.dumps({
    "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
    "annotations": [{"id": 5, "image_id": 1, "category_id": 3},
                    {"id": 6, "image_id": 2, "category_id": 1}],
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
}).encode()
VOC_VALID = (b'<?xml version="1.0"?><annotation><object><name>dog</name>'
             b"<difficult>0</difficult></object><object><name>cat</name>"
             b"<difficult>1</difficult></object></annotation>")
LIST_VALID = b"1.jpg 0 2\n2.jpg 1\n\n3.jpg\n"
IDS_VALID = b"000005\n000007\n"
NUMBERS_VALID = b"0.5 1 2e-3\n4 5 6\n"
LABELS_VALID = b"0\n1\n1\n"
IMAGE_LIST_VALID = b"actor\\0001_2124494179.jpg\r\nsky/0002_1.jpg\r\n"
MIR_NUMBERS_VALID = b"3\n17\n\n250\n"
TAGS_VALID = b"sky\nsea\n\nsky\n"


def _text(data: bytes) -> str:
  return data.decode("utf-8", errors="replace")


def _policy_bad(name, data):
  """A BadExamples whose policy is drawn from the data (fail or skip)."""
  return BadExamples(name, "train", "fail" if len(data) % 2 else "skip")


PARSERS = {
    "coco instances": (COCO_VALID, "instances_train2014.json",
                       lambda d, w: coco.parse_instances(
                           d, w, _policy_bad("coco2014", d))),
    "voc annotation": (VOC_VALID, "000005.xml",
                       lambda d, w: voc.parse_annotation(d, w)),
    "voc image set": (IDS_VALID, "trainval.txt",
                      lambda d, w: voc.parse_image_set(
                          d, w, _policy_bad("voc2007", d))),
    "vg split list": (LIST_VALID, "train_list.txt",
                      lambda d, w: vg200.parse_split_list(
                          d, w, 3, _policy_bad("vg200", d))),
    "vg categories": (b"man\nshirt\ntree\n", "categories.txt",
                      lambda d, w: vg200.parse_categories(d, w)),
    "nuswide numbers": (NUMBERS_VALID, "Train_Normalized_CH.dat",
                        lambda d, w: nuswide.parse_numbers(d, w, columns=3)),
    "nuswide labels": (LABELS_VALID, "Labels_sky_Train.txt",
                       lambda d, w: nuswide.parse_label_column(d, w)),
    "nuswide image list": (IMAGE_LIST_VALID, "TrainImagelist.txt",
                           lambda d, w: nuswide.parse_image_list(d, w)),
    "mirflickr numbers": (MIR_NUMBERS_VALID, "sky.txt",
                          lambda d, w: mirflickr.parse_image_numbers(
                              _text(d), w)),
    "mirflickr tags": (TAGS_VALID, "tags1.txt",
                       lambda d, w: mirflickr.parse_tags(_text(d))),
}


@pytest.mark.parametrize("name", list(PARSERS))
def test_text_parsers_on_garbage_and_mutations(name):
  valid, where, parse = PARSERS[name]
  assert parse(valid, where) is not None        # the valid file parses

  @FUZZ
  @given(data=garbage_or_mutated(valid))
  def check(data):
    expect_named(lambda: parse(data, where), where)

  check()


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
@example(text="3\n\u00b2\n")     # str.isdigit() but not int(): "²"
def test_mirflickr_numbers_are_ascii_digits_or_named_errors(text):
  numbers = expect_named(lambda: mirflickr.parse_image_numbers(text, "sky.txt"),
                         "sky.txt")
  if numbers is not None:
    assert numbers.dtype == np.int64 and (numbers >= 0).all()


@FUZZ
@given(data=garbage_or_mutated(NUMBERS_VALID),
       columns=st.none() | st.integers(1, 4))
def test_nuswide_numbers_have_one_width(data, columns):
  values = expect_named(
      lambda: nuswide.parse_numbers(data, "x.dat", columns=columns), "x.dat")
  if values is not None:
    assert values.ndim == 2 and values.dtype == np.float32
    if columns is not None and len(values):
      assert values.shape[1] == columns


@FUZZ
@given(data=garbage_or_mutated(LABELS_VALID))
def test_nuswide_labels_are_binary(data):
  values = expect_named(lambda: nuswide.parse_label_column(data, "L.txt"),
                        "L.txt")
  if values is not None:
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1}


@FUZZ
@given(numbers=st.lists(st.lists(st.integers(-3, 12), max_size=4), min_size=1,
                        max_size=3),
       policy=st.sampled_from(["fail", "skip"]))
def test_mirflickr_concept_labels(numbers, policy):
  arrays = [np.asarray(n, np.int64) for n in numbers]
  names = [f"c{k}.txt" for k in range(len(numbers))]
  bad = BadExamples("mirflickr25k", "train", policy)
  try:
    labels = mirflickr.concept_labels(arrays, 10, bad, names)
  except AnnotationError as e:
    assert policy == "fail" and any(n in str(e) for n in names)
    return
  assert labels.shape == (10, len(numbers))
  dropped = sum(int(((a < 1) | (a > 10)).sum()) for a in arrays)
  assert bad.count == dropped
  for c, a in enumerate(arrays):
    kept = a[(a >= 1) & (a <= 10)]
    assert set(np.flatnonzero(labels[:, c]) + 1) == set(kept.tolist())


# --------------------------------------------------------- files on disk

@pytest.fixture(scope="module")
def scratch():
  with tempfile.TemporaryDirectory() as directory:
    yield directory


def _file(scratch, name, data: bytes) -> str:
  path = os.path.join(scratch, name)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _npz(**arrays) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


NPZ_VALID = _npz(x1=np.ones((3, 2), np.float32), x2=np.zeros((3, 4)),
                 labels=np.eye(3, dtype=np.uint8))


@FUZZ
@given(data=garbage_or_mutated(NPZ_VALID))
@example(data=b"PK\x03\x04")           # zipfile.BadZipFile
@example(data=NPZ_VALID[:200])           # cut inside a member
def test_npz_bytes(scratch, data):
  path = _file(scratch, "train.npz", data)
  arrays = expect_named(
      lambda: paired_features.read_npz(path, ("x1", "x2", "labels")), path)
  if arrays is not None:
    expect_named(lambda: paired_features.check_paired(arrays, path), path)


dtypes = st.sampled_from([np.float32, np.float64, np.int8, np.uint8, bool,
                          np.complex64, "U3", "S2", "datetime64[s]"])


@st.composite
def npz_arrays(draw):
  """x1, x2, labels (label_mask) of random shapes, values and dtypes; some
  missing."""
  out = {}
  for key in ("x1", "x2", "labels", "label_mask"):
    if draw(st.integers(0, 5)) == 0:
      continue
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    value = draw(st.sampled_from([0.0, 1.0, 2.0, -1.0, np.nan, np.inf]))
    with np.errstate(all="ignore"), warnings.catch_warnings():
      warnings.simplefilter("ignore")
      out[key] = np.full(shape, value).astype(draw(dtypes))
  return out


@FUZZ
@given(arrays=npz_arrays())
@example(arrays=dict(x1=np.array([["a"]]), x2=np.zeros((1, 1)),
                     labels=np.ones((1, 1), np.uint8)))   # isfinite(str)
@example(arrays=dict(x1=np.ones((1, 1), np.complex64), x2=np.zeros((1, 1)),
                     labels=np.ones((1, 1), np.uint8)))
def test_paired_arrays_of_any_dtype_and_shape(scratch, arrays):
  path = _file(scratch, "test.npz", _npz(**arrays))
  loaded = expect_named(
      lambda: paired_features.read_npz(path, ("x1", "x2", "labels"),
                                       ("label_mask",)), path)
  if loaded is None:
    return
  try:
    paired_features.check_paired(loaded, path)
  except ValueError as e:
    assert path in str(e), str(e)
    return
  # Accepted: what the source builds from it is numeric and finite.
  num_classes = loaded["labels"].shape[1]
  examples = paired_features._examples("train", loaded, num_classes)
  for key in ("features", "modality2"):
    assert examples[key].dtype == np.float32
    assert np.isfinite(examples[key]).all()


CSV_VALID = b"Index,TrainVideoCount,Name\n3,10,Game\n7,5,Car\n"


@FUZZ
@given(data=garbage_or_mutated(CSV_VALID))
def test_yt8m_vocabulary_csv(scratch, data):
  root = os.path.join(scratch, "yt8m")
  os.makedirs(root, exist_ok=True)
  path = _file(root, "vocabulary.csv", data)
  names = expect_named(lambda: yt8m.class_names_for(root, [3, 7, 9]), path)
  if names is not None:
    assert len(names) == 3 and len(set(names)) == 3


def _record_bytes():
  example = tf.train.SequenceExample()
  context = example.context.feature
  context["id"].bytes_list.value.append(b"vid")
  context["labels"].int64_list.value.extend([3])
  context["segment_labels"].int64_list.value.extend([3])
  context["segment_start_times"].int64_list.value.extend([0])
  context["segment_scores"].float_list.value.extend([1.0])
  frames = example.feature_lists.feature_list["rgb"]
  for _ in range(2):
    frames.feature.add().bytes_list.value.append(bytes(1024))
  path = os.path.join(tempfile.mkdtemp(), "a.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example.SerializeToString())
  with open(path, "rb") as f:
    return f.read()


RECORD_VALID = _record_bytes()


@SLOW_FUZZ
@given(data=garbage_or_mutated(RECORD_VALID))
def test_yt8m_record_files(scratch, data):
  path = _file(scratch, "a.tfrecord", data)
  records = expect_named(lambda: yt8m.index_records([path]), path)
  if records is not None:
    for r in records:
      assert isinstance(r["id"], str) and isinstance(r["num_frames"], int)


@pytest.fixture(scope="module")
def indexed(scratch):
  """A one-record YouTube-8M file and its index."""
  root = os.path.join(scratch, "cache_root")
  os.makedirs(root, exist_ok=True)
  path = _file(root, "a.tfrecord", RECORD_VALID)
  return root, path, yt8m.index_records([path])


@SLOW_FUZZ
@given(data=garbage_or_mutated(b'{"version": 1, "train": {"signature": [], '
                               b'"records": []}}'),
       keep_signature=st.booleans())
@example(data=b"[]", keep_signature=False)          # not an object
@example(data=b'[{"id": 5}]', keep_signature=True)  # records of other fields
@example(data=b'[{"id": "v", "labels": 3, "segment_labels": [], '
         b'"segment_start_times": [], "segment_scores": [], "num_frames": 1}]',
         keep_signature=True)                        # labels not a list
def test_yt8m_damaged_index_cache_is_rebuilt(indexed, data, keep_signature):
  root, path, fresh = indexed
  cache = os.path.join(root, "yt8m_index_cache.json")
  text = data.decode("utf-8", errors="replace")
  if keep_signature:   # damage behind a signature that matches the files
    try:
      stored = json.loads(text)
    except ValueError:
      stored = text
    text = json.dumps({"version": 1, "train": {
        "signature": yt8m._signature([path]), "records": stored}})
  with open(cache, "w") as f:
    f.write(text)
  records = yt8m.cached_index(root, "train", [path])
  # Indexed again, unless the damage left a well-formed index behind a
  # matching signature (which only reading the records could tell).
  assert records == fresh or (keep_signature and records == stored)


def _image(fmt) -> bytes:
  buffer = io.BytesIO()
  pixels = np.random.default_rng(0).integers(0, 255, (9, 7, 3), np.uint8)
  Image.fromarray(pixels).save(buffer, fmt,
                               **({"progressive": True} if fmt == "JPEG"
                                  else {}))
  return buffer.getvalue()


IMAGES = {"jpeg": _image("JPEG"), "png": _image("PNG")}


@pytest.mark.parametrize("fmt", list(IMAGES))
def test_image_checks_agree_with_the_pipeline_decode(fmt):
  """What `checked_bytes` passes, the pipeline decodes: an image that would
  fail mid-epoch is always caught when the split is read."""
  @settings(FUZZ, max_examples=100)
  @given(data=mutated(IMAGES[fmt]))
  def check(data):
    with tempfile.TemporaryDirectory() as directory:
      path = _file(directory, "x.jpg", data)
      problem = files.image_file_problem(path)   # never raises
      assert problem is None or path in problem
    try:
      files.checked_bytes(tf.constant(data))
    except tf.errors.InvalidArgumentError:
      return
    image = files.decode_image(tf.constant(data))
    assert image.shape[-1] == 3 and image.shape[0] > 0

  check()


@FUZZ
@given(data=garbage_or_mutated(b"animal\nsky\n"))
def test_nuswide_concept_list(scratch, data):
  root = os.path.join(scratch, "nuswide_root")
  os.makedirs(root, exist_ok=True)
  path = _file(root, "Concepts81.txt", data)
  label_files = {"animal": {}, "sky": {}}
  names = expect_named(lambda: nuswide.concept_names(root, label_files), path)
  if names is not None:
    assert set(names) <= set(label_files)


def test_read_text_names_a_file_that_is_not_utf8(scratch):
  path = _file(scratch, "list.txt", b"\xff\xfe\x00bad")
  with pytest.raises(AnnotationError, match="list.txt is not UTF-8"):
    files.read_text(path)
