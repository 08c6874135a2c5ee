"""NUS-WIDE and YouTube-8M Segments readers on fixture files in the real formats."""
import json
import os
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from jaxmlc.data import info as data_info
from jaxmlc.data.builders import image_files as files
from jaxmlc.data.builders import nuswide, yt8m

RNG = np.random.default_rng(0)


def data_config(directory, name, **keys):
  return ml_collections.ConfigDict(dict(
      name=name, dir=str(directory), on_bad_example="fail", parallel_calls=1,
      image_size=32, **keys))


def all_examples(source, split):
  return list(source.examples(split).as_numpy_iterator())


# ----------------------------------------------------------------------------
# NUS-WIDE.

CONCEPTS = ("animal", "sky", "water")
LABELS = {   # rows in list order; row 2 of train and row 1 of test are empty
    "train": np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]),
    "test": np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]])}
LISTS = {"train": ["animal\\0001_1.jpg", "sky\\0002_2.jpg", "sky\\0003_3.jpg",
                   "water\\0004_4.jpg"],
         "test": ["water\\0005_5.jpg", "sky\\0006_6.jpg", "animal\\0007_7.jpg"]}


def write_nuswide(root, features=True, images=False, concepts_file=True):
  label_dir = root / "Groundtruth" / "TrainTestLabels"
  label_dir.mkdir(parents=True)
  if concepts_file:
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
  arrays = {}
  for split, tag in (("train", "Train"), ("test", "Test")):
    for k, concept in enumerate(CONCEPTS):
      (label_dir / f"Labels_{concept}_{tag}.txt").write_text(
          "".join(f"{v}\n" for v in LABELS[split][:, k]))
    n = len(LABELS[split])
    arrays[split] = {}
    if features:
      feature_dir = root / "Low_Level_Features"
      feature_dir.mkdir(exist_ok=True)
      for name, dim in nuswide.FEATURES.items():
        if name == "bow":
          values = RNG.integers(0, 5, (n, dim)).astype(np.float32)
          file_name = f"{tag}_BoW_int.dat"
          text = "\n".join(" ".join(str(int(v)) for v in row)
                           for row in values)
        else:
          values = RNG.random((n, dim)).astype(np.float32)
          file_name = f"{tag}_Normalized_{name.upper()}.dat"
          text = "\n".join(" ".join(f"{v:.6f}" for v in row) + " "
                           for row in values)
          values = np.round(values, 6)
        (feature_dir / file_name).write_text(text + "\n")
        arrays[split][name] = values
    if images:
      (root / "ImageList").mkdir(exist_ok=True)
      (root / "ImageList" / f"{tag}Imagelist.txt").write_text(
          "\r\n".join(LISTS[split]) + "\r\n")
      for entry in LISTS[split]:
        folder, name = entry.split("\\")
        (root / "Flickr" / folder).mkdir(parents=True, exist_ok=True)
        pixels = RNG.integers(0, 255, (6, 5, 3)).astype(np.uint8)
        (root / "Flickr" / folder / name).write_bytes(
            tf.io.encode_png(pixels).numpy())
  return arrays


def test_nuswide_features_drop_unlabelled_and_concatenate(tmp_path):
  arrays = write_nuswide(tmp_path / "nuswide")
  source = data_info.load(data_config(tmp_path, "nuswide"))
  info = source.info
  assert info.input_kind == "features"
  assert info.class_names == CONCEPTS
  assert info.num_examples == {"train": 3, "test": 2}
  np.testing.assert_array_equal(info.train_labels, LABELS["train"][[0, 1, 3]])
  assert info.feature_dims["features"] == 64 + 225 + 144 + 73 + 128 + 500
  assert info.feature_dims["feat_edh"] == 73
  test = all_examples(source, "test")
  assert [int(e["index"]) for e in test] == [0, 1]
  kept = [0, 2]
  for e, row in zip(test, kept):
    expected = np.concatenate([arrays["test"][n][row]
                               for n in ("ch", "cm55", "corr", "edh", "wt",
                                         "bow")])
    np.testing.assert_allclose(e["features"], expected, atol=1e-6)
    np.testing.assert_allclose(e["feat_bow"], arrays["test"]["bow"][row])
    np.testing.assert_array_equal(e["labels"], LABELS["test"][row])
    np.testing.assert_array_equal(e["label_mask"], 1)


def test_nuswide_feature_subset_and_sorted_concepts(tmp_path):
  write_nuswide(tmp_path, concepts_file=False)
  source = data_info.load(data_config(tmp_path, "nuswide",
                                      nuswide_features=("ch", "wt")))
  assert source.info.class_names == tuple(sorted(CONCEPTS))
  assert source.info.feature_dims == {"features": 192, "feat_ch": 64,
                                      "feat_wt": 128}


def test_nuswide_images(tmp_path):
  write_nuswide(tmp_path / "NUS-WIDE", features=False, images=True)
  source = data_info.load(data_config(tmp_path, "nuswide"))
  assert source.info.input_kind == "image"
  train = all_examples(source, "train")
  assert [e["id"].decode() for e in train] == [
      "animal/0001_1.jpg", "sky/0002_2.jpg", "water/0004_4.jpg"]
  assert train[0]["image"].shape == (6, 5, 3)
  np.testing.assert_array_equal(train[2]["labels"], [1, 1, 1])


def test_nuswide_bad_files_are_named(tmp_path):
  write_nuswide(tmp_path)
  bad = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt"
  bad.write_text("0\n2\n1\n")
  with pytest.raises(files.AnnotationError, match="Labels_sky_Test.txt"):
    data_info.load(data_config(tmp_path, "nuswide"))
  bad.write_text("0\n0\n")
  with pytest.raises(files.AnnotationError, match="different lengths"):
    data_info.load(data_config(tmp_path, "nuswide"))
  with pytest.raises(files.AnnotationError, match="line 2 has 2 numbers"):
    nuswide.parse_numbers("1 2 3\n4 5\n", "x.dat")


def test_nuswide_missing_fails_fast_with_layout(tmp_path):
  start = time.perf_counter()
  with pytest.raises(files.DatasetNotFoundError) as e:
    data_info.load(data_config(tmp_path / "nowhere", "nuswide"))
  assert time.perf_counter() - start < 1.0
  assert "TrainTestLabels" in str(e.value)
  assert "Low_Level_Features" in str(e.value)


# ----------------------------------------------------------------------------
# YouTube-8M Segments.

def quantize(x):
  """Inverse of YouTube-8M's Dequantize (x in [-2, 2])."""
  return np.clip(np.round((x + 2 - 4 / 512) * 255 / 4), 0, 255).astype(
      np.uint8)


def sequence_example(video_id, labels, segments, num_frames):
  """segments: [(class, start, score)]; returns (serialized, rgb codes)."""
  rgb = RNG.integers(0, 256, (num_frames, 1024)).astype(np.uint8)
  audio = RNG.integers(0, 256, (num_frames, 128)).astype(np.uint8)
  ex = tf.train.SequenceExample()
  ctx = ex.context.feature
  ctx["id"].bytes_list.value.append(video_id.encode())
  ctx["labels"].int64_list.value.extend(labels)
  ctx["segment_labels"].int64_list.value.extend([s[0] for s in segments])
  ctx["segment_start_times"].int64_list.value.extend([s[1] for s in segments])
  ctx["segment_scores"].float_list.value.extend([s[2] for s in segments])
  for name, codes in (("rgb", rgb), ("audio", audio)):
    feature_list = ex.feature_lists.feature_list[name]
    for row in codes:
      feature_list.feature.add().bytes_list.value.append(row.tobytes())
  return ex.SerializeToString(), rgb, audio


def write_records(path, examples):
  path.parent.mkdir(parents=True, exist_ok=True)
  out = []
  with tf.io.TFRecordWriter(str(path)) as writer:
    for args in examples:
      serialized, rgb, audio = sequence_example(*args)
      writer.write(serialized)
      out.append((rgb, audio))
  return out


def dequantized(codes):
  return codes.astype(np.float32) * (4 / 255) + (4 / 512 - 2)


def yt8m_fixture(root):
  train = write_records(root / "train" / "a.tfrecord", [
      ("vid1", [3, 7], [(7, 0, 1.0), (3, 5, 0.0), (7, 5, 1.0)], 12),
      ("vid2", [3], [], 4)]) + write_records(root / "train" / "b.tfrecord", [
          ("vid3", [9], [(9, 10, 1.0)], 12)])
  test = write_records(root / "test" / "c.tfrecord", [
      ("vid4", [3, 9], [(3, 0, 1.0)], 7)])
  return train, test


def test_dequantize_matches_youtube8m():
  codes = np.array([0, 1, 128, 255], np.uint8)
  np.testing.assert_allclose(yt8m.dequantize(codes).numpy(),
                             codes * (4 / 255) + 4 / 512 - 2, atol=1e-6)
  x = np.linspace(-1.9, 1.9, 11)
  np.testing.assert_allclose(dequantized(quantize(x)), x, atol=4 / 255)


def test_yt8m_segments(tmp_path):
  (train, test) = yt8m_fixture(tmp_path / "yt8m_segments")
  source = data_info.load(data_config(tmp_path, "yt8m_segments"))
  info = source.info
  assert info.input_kind == "frames" and info.frames_shape == (5, 1024)
  assert info.class_names == ("class_3", "class_7", "class_9")
  # vid1: start 0 (7 pos), start 5 (3 neg, 7 pos); vid3: start 10 (9 pos).
  assert info.num_examples == {"train": 3, "test": 1}
  np.testing.assert_array_equal(info.train_labels,
                                [[0, 1, 0], [0, 1, 0], [0, 0, 1]])
  np.testing.assert_array_equal(info.train_label_mask,
                                [[0, 1, 0], [1, 1, 0], [0, 0, 1]])
  ex = all_examples(source, "train")
  assert [e["id"].decode() for e in ex] == ["vid1:0", "vid1:5", "vid3:10"]
  assert [int(e["index"]) for e in ex] == [0, 1, 2]
  np.testing.assert_allclose(ex[1]["frames"], dequantized(train[0][0][5:10]),
                             atol=1e-5)
  # vid3 has 12 frames: the segment at 10 has 2, padded with zeros.
  np.testing.assert_allclose(ex[2]["frames"][:2],
                             dequantized(train[2][0][10:12]), atol=1e-5)
  np.testing.assert_array_equal(ex[2]["frames"][2:], 0.0)
  assert os.path.exists(tmp_path / "yt8m_segments" / "yt8m_index_cache.json")


def test_yt8m_videos_with_audio_and_cache(tmp_path):
  root = tmp_path / "yt8m"
  train, _ = yt8m_fixture(root)
  config = data_config(tmp_path, "yt8m_segments", yt8m_unit="video",
                       max_frames=8, yt8m_features=("rgb", "audio"))
  source = data_info.load(config)
  info = source.info
  assert info.frames_shape == (8, 1152)
  assert info.class_names == ("class_3", "class_7", "class_9")
  np.testing.assert_array_equal(info.train_labels,
                                [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
  ex = all_examples(source, "train")
  np.testing.assert_allclose(ex[0]["frames"][:, :1024],
                             dequantized(train[0][0][:8]), atol=1e-5)
  np.testing.assert_allclose(ex[0]["frames"][:, 1024:],
                             dequantized(train[0][1][:8]), atol=1e-5)
  np.testing.assert_array_equal(ex[1]["frames"][4:], 0.0)   # 4 frames only
  # The index comes from the cache the second time (the records are not
  # parsed again): a marker in the cache shows through.
  cache = root / "yt8m_index_cache.json"
  stored = json.loads(cache.read_text())
  stored["train"]["records"][1]["labels"] = [9]
  cache.write_text(json.dumps(stored))
  again = data_info.load(config).info
  np.testing.assert_array_equal(again.train_labels[1], [0, 0, 1])


def test_yt8m_official_validate_files_split_by_file(tmp_path):
  for i in range(11):
    write_records(tmp_path / f"validate{i:04d}.tfrecord",
                  [(f"v{i}", [1], [(1, 0, 1.0)], 5)])
  paths = yt8m.split_files(str(tmp_path))
  assert [os.path.basename(p) for p in paths["test"]] == [
      "validate0000.tfrecord", "validate0010.tfrecord"]
  assert len(paths["train"]) == 9


def test_yt8m_missing_fails_fast_with_layout(tmp_path):
  start = time.perf_counter()
  with pytest.raises(files.DatasetNotFoundError) as e:
    data_info.load(data_config(tmp_path, "yt8m_segments"))
  assert time.perf_counter() - start < 1.0
  assert "partition=3/frame/validate" in str(e.value)
  assert "train/ and test/" in str(e.value)
