"""The DMACN readers on fixture files in the real formats: "mirflickr25k"
(MIRFLICKR-25K images, tag files, v080 annotation files, a MIRFLICKR-1M
folder) and "paired_features" (.npz files)."""
import time

import numpy as np
import pytest
from PIL import Image

from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data import pipeline
from jaxmlc.data.builders import image_files as files
from jaxmlc.data.builders import mirflickr


def _data_config(path, **extra):
  c = base_config().data
  c.dir = str(path)
  with c.unlocked():
    for k, v in extra.items():
      c[k] = v
  return c


def _examples(source, split):
  return list(source.examples(split).as_numpy_iterator())


# ----------------------------------------------------------------------------
# MIRFLICKR-25K.

NUM_FIXTURE_IMAGES = 30


def _fixture_tags(n):
  """Image n's tags: 'common' everywhere, 'dog' on even, 'sky' on n % 3 == 0,
  'rare' on 25..30 only (too rare for the vocabulary at min count 3)."""
  if n > 24:
    return ["rare"]
  tags = ["common"]
  if n % 2 == 0:
    tags.append("dog")
  if n % 3 == 0:
    tags.append("sky")
  return tags


def _fixture_labels(n):
  """Image n's concepts: 1..24 labeled (animals / sky / people by n % 3),
  25..27 no label, 28..30 labeled but without a vocabulary tag."""
  if 25 <= n <= 27:
    return []
  return [("animals", "sky", "people")[n % 3]]


def write_mirflickr(root, with_1m=0):
  images = root / "mirflickr25k" / "mirflickr"
  tags = images / "meta" / "tags"
  tags.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for n in range(1, NUM_FIXTURE_IMAGES + 1):
    size = (8 + n % 3, 10)
    Image.fromarray(rng.integers(0, 255, size + (3,), np.uint8)).save(
        images / f"im{n}.jpg", "JPEG")
    # Tags files end with a newline and may repeat a tag.
    (tags / f"tags{n}.txt").write_text(
        "\n".join(_fixture_tags(n) + _fixture_tags(n)[:1]) + "\n")
  annotations = root / "mirflickr25k" / "mirflickr25k_annotations_v080"
  annotations.mkdir()
  for concept in mirflickr.CONCEPTS:
    numbers = [n for n in range(1, NUM_FIXTURE_IMAGES + 1)
               if concept in _fixture_labels(n)]
    (annotations / f"{concept}.txt").write_text(
        "".join(f"{n}\n" for n in numbers))
  (annotations / "sky_r1.txt").write_text("3\n")     # a subset, not a label
  (annotations / "README.txt").write_text("MIRFLICKR annotations\n")
  if with_1m:
    for k in range(with_1m):
      folder = root / "mirflickr25k" / "mirflickr1m" / "images" / str(k // 5)
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(
          folder / f"{k}.jpg", "JPEG")
  return root


def test_mirflickr_parsers():
  assert mirflickr.parse_image_numbers("3\n17\n\n", "f").tolist() == [3, 17]
  with pytest.raises(files.AnnotationError, match="line 2"):
    mirflickr.parse_image_numbers("3\nim4\n", "f")
  assert mirflickr.parse_tags("sky\n\nsky\nsea \n") == ["sky", "sea"]
  vocabulary = mirflickr.tag_vocabulary([["b", "a"], ["a"], ["c", "a"]], 2)
  assert vocabulary == ("a",)
  np.testing.assert_array_equal(
      mirflickr.bag_of_words([["b", "a"], ["c"]], ("a", "b")),
      [[1, 1], [0, 0]])
  np.testing.assert_array_equal(
      mirflickr.concept_labels([np.array([1, 3]), np.array([3])], 3),
      [[1, 0], [0, 0], [1, 1]])
  with pytest.raises(files.AnnotationError, match="outside"):
    mirflickr.concept_labels([np.array([4])], 3)
  assert sorted(["i/10/100.jpg", "i/9/99.jpg"], key=mirflickr.natural_key) == [
      "i/9/99.jpg", "i/10/100.jpg"]


def test_mirflickr_reader_filters_builds_bow_and_splits(tmp_path):
  write_mirflickr(tmp_path)
  config = _data_config(tmp_path, name="mirflickr25k",
                        mirflickr_min_tag_count=3, mirflickr_test_size=4)
  source = data_info.load(config)
  info = source.info
  # 24 concepts from the 24 files (sky_r1 and README are not labels).
  assert info.class_names == mirflickr.CONCEPTS
  assert info.input_kind == "image" and info.image_size is None
  # 'rare' is in 6 >= 3 images, so it is a word and 28..30 keep a tag;
  # the vocabulary is sorted.
  vocabulary = ("common", "dog", "rare", "sky")
  assert info.feature_dims == {"modality2": len(vocabulary)}
  kept = [n for n in range(1, 31) if _fixture_labels(n)]   # all have tags
  assert info.num_examples["train"] + info.num_examples["test"] == len(kept)
  assert info.num_examples["test"] == 4
  # The 3 unlabeled 25K images are the unlabeled pool without 1M.
  assert info.num_examples["unlabeled"] == 3
  seen = []
  for split in ("train", "test"):
    for ex in _examples(source, split):
      n = int(ex["id"].decode()[2:])
      seen.append(n)
      expected_bow = [float(w in _fixture_tags(n)) for w in vocabulary]
      np.testing.assert_array_equal(ex["modality2"], expected_bow)
      expected_labels = [int(c in _fixture_labels(n))
                         for c in mirflickr.CONCEPTS]
      np.testing.assert_array_equal(ex["labels"], expected_labels)
      assert ex["image"].shape == (8 + n % 3, 10, 3)
  assert sorted(seen) == kept
  unlabeled = _examples(source, "unlabeled")
  assert sorted(ex["id"].decode() for ex in unlabeled) == [
      "im25", "im26", "im27"]
  assert "modality2" not in unlabeled[0]


def test_mirflickr_vocabulary_threshold_drops_untagged_pairs(tmp_path):
  write_mirflickr(tmp_path)
  # min count 7: 'rare' (6 images) leaves the vocabulary, so 28..30 have no
  # vocabulary tag and are dropped like the unlabeled 25..27.
  config = _data_config(tmp_path, name="mirflickr25k",
                        mirflickr_min_tag_count=7, mirflickr_test_size=4,
                        mirflickr_train_size=10)
  info = data_info.load(config).info
  assert info.feature_dims == {"modality2": 3}           # common, dog, sky
  assert info.num_examples == {"train": 10, "test": 4, "unlabeled": 6}


def test_mirflickr_1m_folder_is_the_unlabeled_pool(tmp_path):
  write_mirflickr(tmp_path, with_1m=12)
  config = _data_config(tmp_path, name="mirflickr25k",
                        mirflickr_min_tag_count=3, mirflickr_test_size=4,
                        mirflickr_unlabeled_limit=7)
  source = data_info.load(config)
  ids = [ex["id"].decode() for ex in _examples(source, "unlabeled")]
  assert ids == [str(k) for k in range(7)]               # natural order
  # Through the pipeline: encoded bytes, resized, tags on the paired stream.
  run = base_config()
  run.data = config
  run.data.image_size = 16
  run.data.unlabeled_batch_size = 4
  run.train.global_batch_size = 4
  batch = next(pipeline.train_batches(run, source, None))
  assert batch["labeled"]["image"].shape == (4, 16, 16, 3)
  assert batch["labeled"]["modality2"].shape == (4, 4)
  assert batch["unlabeled"]["image"].shape == (4, 16, 16, 3)


def test_mirflickr_missing_fails_fast_with_layout(tmp_path):
  start = time.perf_counter()
  with pytest.raises(files.DatasetNotFoundError) as error:
    data_info.load(_data_config(tmp_path / "nowhere", name="mirflickr25k"))
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  for needle in ("im1.jpg", "meta/tags", "mirflickr25k_annotations_v080",
                 "mirflickr25k.zip", "mirflickr1m"):
    assert needle in message
  write_mirflickr(tmp_path)
  with pytest.raises(files.DatasetNotFoundError, match="not a directory"):
    data_info.load(_data_config(tmp_path, name="mirflickr25k",
                                mirflickr_min_tag_count=3,
                                mirflickr_test_size=4,
                                mirflickr1m_dir=str(tmp_path / "no1m")))


# ----------------------------------------------------------------------------
# Paired features (.npz).

def _paired(rng, n, m=6, d=5, c=3):
  labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
  return dict(x1=rng.normal(size=(n, m)).astype(np.float32),
              x2=rng.normal(size=(n, d)).astype(np.float32), labels=labels)


def test_paired_features_reader(tmp_path):
  rng = np.random.default_rng(0)
  train, test = _paired(rng, 10), _paired(rng, 4)
  unlabeled = rng.normal(size=(7, 6)).astype(np.float32)
  np.savez(tmp_path / "train.npz", class_names=np.array(["a", "b", "c"]),
           **train)
  np.savez(tmp_path / "test.npz", **test)
  np.savez(tmp_path / "unlabeled.npz", x1=unlabeled)
  source = data_info.load(_data_config(tmp_path, name="paired_features"))
  info = source.info
  assert info.input_kind == "features"
  assert info.class_names == ("a", "b", "c")
  assert info.feature_dims == {"features": 6, "modality2": 5}
  assert info.num_examples == {"train": 10, "test": 4, "unlabeled": 7}
  np.testing.assert_array_equal(info.train_labels, train["labels"])
  rows = _examples(source, "train")
  np.testing.assert_allclose(np.stack([r["features"] for r in rows]),
                             train["x1"])
  np.testing.assert_allclose(np.stack([r["modality2"] for r in rows]),
                             train["x2"])
  assert [int(r["index"]) for r in rows] == list(range(10))
  unl = _examples(source, "unlabeled")
  np.testing.assert_allclose(np.stack([r["features"] for r in unl]),
                             unlabeled)
  assert "modality2" not in unl[0]


def test_paired_features_single_file_is_split(tmp_path):
  rng = np.random.default_rng(1)
  paired = _paired(rng, 20)
  np.savez(tmp_path / "paired.npz", **paired)
  config = _data_config(tmp_path, name="paired_features",
                        paired_test_fraction=0.25, paired_split_seed=3)
  source = data_info.load(config)
  assert source.info.num_examples == {"train": 15, "test": 5}
  test_order = np.sort(np.random.default_rng(3).permutation(20)[:5])
  got = np.stack([r["modality2"] for r in _examples(source, "test")])
  np.testing.assert_allclose(got, paired["x2"][test_order])


def test_paired_features_refuses_mismatched_arrays(tmp_path):
  rng = np.random.default_rng(2)
  train = _paired(rng, 10)
  train["x2"] = train["x2"][:9]
  np.savez(tmp_path / "train.npz", **train)
  np.savez(tmp_path / "test.npz", **_paired(rng, 4))
  with pytest.raises(files.AnnotationError) as error:
    data_info.load(_data_config(tmp_path, name="paired_features"))
  message = str(error.value)
  assert "x1 has 10 rows" in message and "x2 has 9 rows" in message
  assert "labels has 10 rows" in message
  # Widths must agree across splits.
  np.savez(tmp_path / "train.npz", **_paired(rng, 10))
  np.savez(tmp_path / "test.npz", **_paired(rng, 4, d=7))
  with pytest.raises(files.AnnotationError, match="test x2 is 7-d but train"):
    data_info.load(_data_config(tmp_path, name="paired_features"))
  # Labels must be multi-hot; a missing array is named.
  bad = _paired(rng, 4)
  bad["labels"] = bad["labels"] * 2
  np.savez(tmp_path / "test.npz", **bad)
  with pytest.raises(files.AnnotationError, match="multi-hot"):
    data_info.load(_data_config(tmp_path, name="paired_features"))
  np.savez(tmp_path / "test.npz", x1=bad["x1"], labels=bad["labels"])
  with pytest.raises(files.AnnotationError, match=r"no array\(s\) \['x2'\]"):
    data_info.load(_data_config(tmp_path, name="paired_features"))


def test_paired_features_missing_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(files.DatasetNotFoundError) as error:
    data_info.load(_data_config(tmp_path, name="paired_features"))
  assert time.perf_counter() - start < 1.0
  for needle in ("train.npz", "test.npz", "unlabeled.npz", "x1", "x2",
                 "labels", "paired.npz"):
    assert needle in str(error.value)
