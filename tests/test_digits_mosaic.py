"""digits_mosaic: real digit scans, disjoint pools, TFDS source."""
import numpy as np
import pytest
import tensorflow as tf

from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data.builders import digits_mosaic as dm


@pytest.fixture(scope="module")
def source(data_dir):
  c = base_config().data
  c.name, c.variant, c.dir = "digits_mosaic", "tiny", data_dir
  return data_info.load(c)


def test_pools_are_disjoint_and_cover_every_scan():
  pools = dm.source_pools()
  train, test = set(pools["train"]), set(pools["test"])
  assert not train & test
  assert len(train) + len(test) == 1797
  assert 0.65 < len(train) / 1797 < 0.75


def test_splits_draw_from_their_own_pool():
  pools = dm.source_pools()
  for split, pool in (("train", "train"), ("unlabeled", "train"),
                      ("test", "test")):
    ids = dm.generate_split(split, 300, 32)["source_ids"]
    used = set(ids[ids >= 0].tolist())
    assert used <= set(pools[pool].tolist()), split


def test_labels_are_the_digits_present():
  a = dm.generate_split("train", 200, 32, seed=3)
  _, target = dm._digits()
  for row in range(200):
    ids = a["source_ids"][row]
    expected = np.zeros(10, np.uint8)
    expected[target[ids[ids >= 0]]] = 1
    np.testing.assert_array_equal(a["labels"][row], expected)
  assert (a["labels"].sum(1) >= 1).all() and (a["labels"].sum(1) <= 4).all()


def test_images_are_upsampled_scans():
  a = dm.generate_split("test", 20, 64, seed=0)
  assert a["image"].shape == (20, 64, 64, 3) and a["image"].dtype == np.uint8
  assert (a["image"][..., 0] == a["image"][..., 2]).all()      # grey RGB
  cells = dm._upsampled(32)
  for row in range(20):
    ids = a["source_ids"][row]
    top_left = a["image"][row, :32, :32, 0]
    want = cells[ids[0]] if ids[0] >= 0 else np.zeros_like(top_left)
    np.testing.assert_array_equal(top_left, want)


def test_deterministic_per_seed():
  a = dm.generate_split("train", 50, 32, seed=0)
  b = dm.generate_split("train", 50, 32, seed=0)
  c = dm.generate_split("train", 50, 32, seed=1)
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a["labels"].tobytes() == b["labels"].tobytes()
  assert a["image"].tobytes() != c["image"].tobytes()


def test_tfds_source(source):
  info = source.info
  assert info.class_names == tuple("0123456789")
  assert dict(info.num_examples) == {"train": 256, "unlabeled": 128,
                                     "test": 128}
  assert info.image_size == 32 and info.input_kind == "image"
  expected = dm.generate_split("train", 256, 32)
  np.testing.assert_array_equal(info.train_labels, expected["labels"])
  decoded = next(source.examples("train").as_numpy_iterator())
  encoded = next(source.encoded_examples("train").as_numpy_iterator())
  assert decoded["image"].tobytes() == expected["image"][0].tobytes()
  assert isinstance(encoded["image"], bytes)
  assert encoded["image"][:4] == b"\x89PNG"
  np.testing.assert_array_equal(
      tf.io.decode_png(encoded["image"], channels=3).numpy(), decoded["image"])
