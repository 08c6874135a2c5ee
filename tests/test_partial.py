"""Known-label masks."""
import numpy as np
import pytest

from jaxmlc.data.partial import known_label_mask


def test_exactly_the_documented_formula():
  mask = known_label_mask((100, 7), 0.3, seed=5)
  expected = np.random.default_rng(5).random((100, 7)) < 0.3
  np.testing.assert_array_equal(mask, expected.astype(np.uint8))
  assert mask.dtype == np.uint8 and mask.shape == (100, 7)


def test_labels_or_shape_give_the_same_mask():
  labels = np.zeros((40, 5), np.uint8)
  np.testing.assert_array_equal(known_label_mask(labels, 0.5, seed=1),
                                known_label_mask(labels.shape, 0.5, seed=1))


@pytest.mark.parametrize("proportion", [0.1, 0.5, 0.9])
def test_hits_the_requested_proportion(proportion):
  mask = known_label_mask((4000, 20), proportion)
  assert abs(mask.mean() - proportion) < 0.01


def test_identical_across_calls_and_seed_dependent():
  a = known_label_mask((500, 20), 0.4, seed=0)
  np.testing.assert_array_equal(a, known_label_mask((500, 20), 0.4, seed=0))
  assert not np.array_equal(a, known_label_mask((500, 20), 0.4, seed=1))


def test_proportion_one_keeps_everything():
  assert known_label_mask((50, 3), 1.0).all()


@pytest.mark.parametrize("proportion", [0.0, -0.1, 1.5, float("nan")])
def test_bad_proportion_names_the_config_key(proportion):
  with pytest.raises(ValueError, match="config.data.known_label_proportion"):
    known_label_mask((10, 3), proportion)


def test_bad_shape():
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    known_label_mask((10,), 0.5)
