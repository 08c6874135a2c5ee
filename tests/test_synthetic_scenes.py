"""synthetic_scenes: world, numpy generation, TFDS builder and source."""
import numpy as np
import pytest

from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data.builders import synthetic_scenes as ss

C = len(ss.CLASSES)


def _data_config(data_dir, variant="tiny"):
  c = base_config().data
  c.name, c.variant, c.dir = "synthetic_scenes", variant, data_dir
  return c


@pytest.fixture(scope="module")
def source(data_dir):
  return data_info.load(_data_config(data_dir))


def _lift(labels):
  """P(a, b) / (P(a) P(b)) [C, C] and the pair counts independence predicts."""
  y = labels.astype(np.float64)
  p = y.mean(0)
  joint = y.T @ y / len(y)
  return joint / np.outer(p, p), len(y) * np.outer(p, p)


def test_classes_need_all_three_attributes():
  assert C == 20 and len(set(ss.CLASSES)) == C
  for attribute in range(3):   # every colour, texture and shape is shared
    values = [c[attribute] for c in ss.CLASSES]
    assert all(values.count(v) >= 2 for v in values if v != "white")
  differ_in = set()
  for i in range(C):
    for j in range(i + 1, C):
      diff = [a for a in range(3) if ss.CLASSES[i][a] != ss.CLASSES[j][a]]
      if len(diff) == 1:
        differ_in.add(diff[0])
  assert differ_in == {0, 1, 2}   # pairs told apart by one attribute each


def test_generation_is_deterministic_per_seed():
  a = ss.generate_split("train", 40, 32, seed=0)
  b = ss.generate_split("train", 40, 32, seed=0)
  c = ss.generate_split("train", 40, 32, seed=1)
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key
  assert a["image"].tobytes() != c["image"].tobytes()
  assert not np.array_equal(a["labels"], c["labels"])
  test = ss.generate_split("test", 40, 32, seed=0)
  assert not np.array_equal(a["image"], test["image"])   # splits differ


def test_schema_and_ranges():
  a = ss.generate_split("train", 30, 32)
  assert a["image"].shape == (30, 32, 32, 3) and a["image"].dtype == np.uint8
  for key, width in (("modality2", 256), ("feat_view2", 64)):
    assert a[key].shape == (30, width) and a[key].dtype == np.float32
  assert a["labels"].shape == (30, C) and a["labels"].dtype == np.uint8
  assert set(np.unique(a["labels"])) <= {0, 1}
  counts = a["labels"].sum(1)
  assert counts.min() >= 1 and counts.max() <= 5
  assert (a["label_mask"] == 1).all()
  assert a["image"].std() > 20        # clutter and objects, not a flat field
  unlabeled = ss.generate_split("unlabeled", 10, 32)
  assert (unlabeled["labels"] == 0).all()
  assert (unlabeled["label_mask"] == 0).all()


def test_labels_co_occur_far_from_independence():
  rng = np.random.default_rng(0)
  _, classes = ss.sample_objects(rng, 6000)
  labels = ss.multi_hot(classes, C)
  assert 1.8 < labels.sum(1).mean() < 2.6
  lift, expected = _lift(labels)
  supported = (expected >= 30) & ~np.eye(C, dtype=bool)
  assert lift[supported].max() > 2.5       # pairs from one context
  assert lift[supported].min() < 0.4       # pairs from disjoint contexts
  # Every class has a context partner b with P(b | a) > 2 P(b).
  p = labels.mean(0)
  conditional = (labels.T.astype(float) @ labels) / labels.sum(0)[:, None]
  np.fill_diagonal(conditional, 0)
  assert ((conditional / p[None, :]).max(axis=1) > 2).all()


def test_tags_and_view2_carry_the_labels():
  a = ss.generate_split("train", 1500, 8)
  labels = a["labels"].astype(bool)
  for c in range(C):    # each class emits its own words
    own = a["modality2"][:, 8 * c:8 * c + 8].sum(1)
    assert own[labels[:, c]].mean() > 3 * own[~labels[:, c]].mean()
  assert (a["modality2"].sum(1) > 0).mean() > 0.95
  # A linear read-out of view2 ranks the labels well above chance, not
  # perfectly (it is a noisy view).
  x = np.c_[a["feat_view2"], np.ones(len(labels))]
  w, *_ = np.linalg.lstsq(x[:1000], labels[:1000].astype(float), rcond=None)
  scores = x[1000:] @ w
  held = labels[1000:]
  aucs = []
  for c in range(C):
    pos, neg = scores[held[:, c], c], scores[~held[:, c], c]
    aucs.append((pos[:, None] > neg[None, :]).mean())
  assert 0.75 < np.mean(aucs) < 0.999


def test_video_segments_carry_labels():
  v = ss.generate_video_split("train", 200, seed=0)
  assert v["frames"].shape == (200, 32, 64) and v["frames"].dtype == np.float32
  assert v["segment_labels"].shape == (200, 4, C)
  np.testing.assert_array_equal(v["labels"], v["segment_labels"].max(1))
  assert (v["labels"].sum(1) >= 1).all()
  # A segment's frames point towards the prototypes of its classes.
  proto = ss._world()["frame_class"]
  seg = v["frames"].reshape(200, 4, 8, 64).mean(2) @ proto.T    # [N, 4, C]
  on = v["segment_labels"].astype(bool)
  assert seg[on].mean() > seg[~on].mean() + 10
  again = ss.generate_video_split("train", 200, seed=0)
  assert again["frames"].tobytes() == v["frames"].tobytes()


def test_tfds_source_matches_numpy_generation(source):
  info = source.info
  assert info.name == "synthetic_scenes" and info.input_kind == "image"
  assert info.class_names == ss.CLASS_NAMES and info.num_classes == C
  assert dict(info.num_examples) == {"train": 256, "unlabeled": 256,
                                     "test": 128}
  assert info.image_size == 32
  assert dict(info.feature_dims) == {"feat_view2": 64, "modality2": 256}
  expected = ss.generate_split("train", 256, 32, seed=0)
  np.testing.assert_array_equal(info.train_labels, expected["labels"])
  np.testing.assert_array_equal(info.train_label_mask, expected["label_mask"])
  examples = list(source.examples("train").take(5).as_numpy_iterator())
  for i, ex in enumerate(examples):
    assert ex["index"] == i and ex["id"] == f"train_{i:06d}".encode()
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    assert ex["image"].tobytes() == expected["image"][i].tobytes()
    assert ex["modality2"].tobytes() == expected["modality2"][i].tobytes()
    assert ex["labels"].dtype == np.uint8
  unlabeled = next(source.examples("unlabeled").as_numpy_iterator())
  assert unlabeled["labels"].sum() == 0 and unlabeled["label_mask"].sum() == 0


def test_video_variant_source(data_dir):
  info = data_info.load(_data_config(data_dir, "video_tiny")).info
  assert info.input_kind == "frames" and info.frames_shape == (32, 64)
  assert info.image_size is None
  assert info.train_labels.shape == (256, C)


def test_unknown_variant_is_a_clear_error(data_dir):
  with pytest.raises(ValueError, match="variant='huge'.*Known variants: "
                                       "default, tiny"):
    data_info.load(_data_config(data_dir, "huge"))


def test_summary_cli_writes_the_plots(data_dir, tmp_path):
  from jaxmlc.data import summary
  out = tmp_path / "summary"
  summary.main(["--name", "synthetic_scenes", "--variant", "tiny", "--dir",
                data_dir, "--out", str(out), "--examples", "4"])
  assert (out / "examples.png").stat().st_size > 1000
  assert (out / "cooccurrence.png").stat().st_size > 1000
  text = summary.format_summary(
      data_info.load(_data_config(data_dir)).info,
      summary.label_statistics(ss.generate_split("train", 256, 8)["labels"]))
  assert "top co-occurring pairs" in text and "lift" in text
