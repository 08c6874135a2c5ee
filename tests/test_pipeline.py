"""The input pipeline's determinism, sharding, resume and eval contracts."""
import itertools

import numpy as np
import pytest

from jaxmlc.config_base import base_config
from jaxmlc.data import info as data_info
from jaxmlc.data import partial, pipeline

N_TRAIN, N_UNLABELED, N_TEST = 256, 256, 128


def make_config(data_dir, name="synthetic_scenes", variant="tiny", **data):
  c = base_config()
  c.data.name, c.data.variant, c.data.dir = name, variant, data_dir
  c.data.image_size = 32
  c.data.normalize = "none"
  c.data.flip = False
  c.data.prefetch = 1
  c.train.global_batch_size = 32
  for key, value in data.items():
    c.data[key] = value
  return c


def take(config, source, known_mask=None, n=4, **kwargs):
  return list(itertools.islice(
      pipeline.train_batches(config, source, known_mask, **kwargs), n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for stream in x:
      assert x[stream].keys() == y[stream].keys()
      for key in x[stream]:
        np.testing.assert_array_equal(x[stream][key], y[stream][key],
                                      err_msg=f"{stream}/{key}")


@pytest.fixture(scope="module")
def source(data_dir):
  return data_info.load(make_config(data_dir).data)


@pytest.fixture(scope="module")
def raw_train(source):
  """The train split straight from TFDS, index order."""
  examples = list(source.examples("train").as_numpy_iterator())
  return {k: np.stack([e[k] for e in examples])
          for k in ("image", "labels", "label_mask", "modality2", "index")}


def test_steps_per_epoch(data_dir, source):
  c = make_config(data_dir)
  assert pipeline.steps_per_epoch(c, source.info) == 8
  c.train.global_batch_size = 48
  assert pipeline.steps_per_epoch(c, source.info) == 5   # remainder dropped


def test_schema_and_dtypes(data_dir, source):
  c = make_config(data_dir, unlabeled_batch_size=16, normalize="imagenet")
  batch = take(c, source, n=1)[0]
  lab, unl = batch["labeled"], batch["unlabeled"]
  assert set(lab) == {"image", "modality2", "feat_view2", "labels",
                      "label_mask", "index"}
  assert set(unl) == {"image", "modality2", "feat_view2", "index"}
  assert lab["image"].shape == (32, 32, 32, 3)
  assert lab["image"].dtype == np.float32
  assert unl["image"].shape == (16, 32, 32, 3)
  assert lab["labels"].shape == (32, 20) and lab["labels"].dtype == np.float32
  assert lab["label_mask"].dtype == np.float32
  assert lab["modality2"].shape == (32, 256)
  assert lab["modality2"].dtype == np.float32
  assert lab["index"].dtype == np.int32 and unl["index"].dtype == np.int32
  assert -2.2 < lab["image"].min() and lab["image"].max() < 2.7   # ImageNet
  c.data.unlabeled_batch_size = 0
  assert set(take(c, source, n=1)[0]) == {"labeled"}


def test_batches_follow_the_epoch_permutation(data_dir, source, raw_train):
  c = make_config(data_dir)
  c.seed = 7
  batches = take(c, source, n=11)          # 8 steps per epoch: crosses one
  seen = []
  for step, b in enumerate(batches):
    epoch, j = divmod(step, 8)
    perm = pipeline.epoch_permutation(7, epoch, N_TRAIN)
    np.testing.assert_array_equal(b["labeled"]["index"],
                                  perm[j * 32:(j + 1) * 32])
    seen.append(b["labeled"]["index"])
  first_epoch = np.concatenate(seen[:8])
  assert len(set(first_epoch.tolist())) == N_TRAIN        # no repeats
  # Content is the example at that index (no augmentation configured).
  b = batches[0]["labeled"]
  idx = b["index"]
  np.testing.assert_array_equal(b["labels"], raw_train["labels"][idx])
  np.testing.assert_array_equal(b["modality2"], raw_train["modality2"][idx])
  np.testing.assert_allclose(b["image"], raw_train["image"][idx] / 255.0,
                             atol=1e-6)


def test_label_mask_applies_the_known_mask(data_dir, source, raw_train):
  c = make_config(data_dir)
  known = partial.known_label_mask(source.info.train_labels, 0.3, seed=0)
  b = take(c, source, known, n=1)[0]["labeled"]
  idx = b["index"]
  np.testing.assert_array_equal(
      b["label_mask"], raw_train["label_mask"][idx] * known[idx])
  assert 0.2 < b["label_mask"].mean() < 0.4


def test_same_seed_same_batches_other_seed_other(data_dir, source):
  c = make_config(data_dir, crop_scales=(1.0, 0.75), flip=True,
                  unlabeled_batch_size=16)
  assert_batches_equal(take(c, source, n=3), take(c, source, n=3))
  c.seed = 1
  other = take(c, source, n=1)[0]["labeled"]["index"]
  c.seed = 0
  assert not np.array_equal(other, take(c, source, n=1)[0]["labeled"]["index"])


def test_resume_replays_the_uninterrupted_run(data_dir, source):
  c = make_config(data_dir, crop_scales=(1.0, 0.75, 0.5), flip=True,
                  unlabeled_batch_size=48, normalize="imagenet")
  known = partial.known_label_mask(source.info.train_labels, 0.5)
  full = take(c, source, known, n=12)   # labeled epochs of 8, unlabeled of 5
  resumed = take(c, source, known, n=6, start_step=6)
  assert_batches_equal(full[6:], resumed)


def test_resume_computes_indices_only():
  # A far start step yields at once: nothing before it is produced.
  rows = pipeline._stream_rows(0, pipeline.LABELED, 1000, 10, 10, 0,
                               start_step=10**9)
  epoch, idx = next(rows)
  assert epoch == 10**7
  np.testing.assert_array_equal(idx, pipeline.epoch_permutation(
      0, 10**7, 1000)[:10])


def test_unlabeled_stream_repeats_on_its_own(data_dir, source):
  c = make_config(data_dir, unlabeled_batch_size=48)   # 5 steps per epoch
  batches = take(c, source, n=7)
  for step, b in enumerate(batches):
    epoch, j = divmod(step, N_UNLABELED // 48)
    perm = pipeline.epoch_permutation(0, epoch, N_UNLABELED, pipeline.UNLABELED)
    np.testing.assert_array_equal(b["unlabeled"]["index"],
                                  perm[j * 48:(j + 1) * 48])
    assert b["unlabeled"]["image"].shape[0] == 48
    assert b["labeled"]["image"].shape[0] == 32


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shards_partition_the_global_batch(data_dir, source, processes):
  c = make_config(data_dir, crop_scales=(0.5, 1.0), flip=True,
                  unlabeled_batch_size=16)
  known = partial.known_label_mask(source.info.train_labels, 0.5)
  single = take(c, source, known, n=3, start_step=7)
  shards = [take(c, source, known, n=3, start_step=7, process_index=p,
                 process_count=processes) for p in range(processes)]
  for step in range(3):
    for stream, rows in (("labeled", 32), ("unlabeled", 16)):
      parts = [s[step][stream] for s in shards]
      assert all(len(p["index"]) == rows // processes for p in parts)
      indices = np.concatenate([p["index"] for p in parts])
      assert len(set(indices.tolist())) == rows             # disjoint
      for key in single[step][stream]:                      # and covering
        np.testing.assert_array_equal(
            np.concatenate([p[key] for p in parts]),
            single[step][stream][key], err_msg=f"{stream}/{key}")


def test_augmentation_crops_and_flips_per_index(data_dir, source, raw_train):
  c = make_config(data_dir, flip=True)
  b = take(c, source, n=2)
  flipped = 0
  for batch in b:
    lab = batch["labeled"]
    raw = raw_train["image"][lab["index"]] / 255.0
    same = np.isclose(lab["image"], raw, atol=1e-6).all(axis=(1, 2, 3))
    mirror = np.isclose(lab["image"], raw[:, :, ::-1], atol=1e-6).all(
        axis=(1, 2, 3))
    assert (same | mirror).all()
    flipped += int((mirror & ~same).sum())
  assert 16 < flipped < 48                   # about half of 64
  c.data.flip, c.data.crop_scales = False, (0.5,)
  crop = take(c, source, n=1)[0]["labeled"]
  raw = raw_train["image"][crop["index"]] / 255.0
  assert not np.isclose(crop["image"], raw, atol=1e-3).all(axis=(1, 2, 3)).any()
  # The draws are a function of (seed, stream, epoch, index) only.
  idx = np.arange(10)
  a = pipeline._augment_draws(c, pipeline.LABELED, 3, idx)
  np.testing.assert_array_equal(a[0], pipeline._augment_draws(
      c, pipeline.LABELED, 3, idx)[0])
  assert not np.array_equal(a[0], pipeline._augment_draws(
      c, pipeline.LABELED, 4, idx)[0])


def test_eval_pads_the_last_batch(data_dir, source):
  c = make_config(data_dir)
  batches = list(pipeline.eval_batches(c, source, "test", batch_size=48))
  valid = [b["labeled"]["valid"] for b in batches]
  assert [int(v.sum()) for v in valid] == [48, 48, 32]
  assert all(len(v) == 48 and v.dtype == np.float32 for v in valid)
  index = np.concatenate([b["labeled"]["index"] for b in batches])
  np.testing.assert_array_equal(index[:N_TEST], np.arange(N_TEST))
  last = batches[-1]["labeled"]
  assert (last["label_mask"][32:] == 0).all()
  assert (last["label_mask"][:32] == 1).all()
  expected = source.examples("test").skip(96).take(1).as_numpy_iterator()
  np.testing.assert_allclose(last["image"][0],
                             next(expected)["image"] / 255.0, atol=1e-6)


def test_eval_shards_are_slices_of_the_global_batch(data_dir, source):
  c = make_config(data_dir)
  single = list(pipeline.eval_batches(c, source, "test", batch_size=48))
  parts = [list(pipeline.eval_batches(c, source, "test", batch_size=48,
                                      process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(single)
  for j, whole in enumerate(single):
    for key in whole["labeled"]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][j]["labeled"][key],
                          parts[1][j]["labeled"][key]]),
          whole["labeled"][key], err_msg=key)


def test_eval_with_known_mask_and_resize(data_dir, source):
  c = make_config(data_dir, image_size=48)
  known = partial.known_label_mask(source.info.train_labels, 0.5)
  batches = list(pipeline.eval_batches(c, source, "train", batch_size=64,
                                       known_mask=known))
  lab = batches[0]["labeled"]
  assert lab["image"].shape == (64, 48, 48, 3)
  np.testing.assert_array_equal(lab["label_mask"], known[:64])


def test_encoded_images_give_the_same_batches(data_dir, monkeypatch):
  c = make_config(data_dir, name="digits_mosaic", crop_scales=(1.0, 0.5),
                  flip=True, unlabeled_batch_size=16)
  src = data_info.load(c.data)
  decoded = take(c, src, n=2)
  decoded_eval = next(pipeline.eval_batches(c, src, "test"))
  monkeypatch.setattr(pipeline, "DECODED_CACHE_BYTES", 0)
  src = data_info.load(c.data)         # a new source: a fresh store
  assert pipeline._materialise(src, "train")["_encoded"]
  encoded = take(c, src, n=2)
  for x, y in zip(decoded, encoded):
    for stream in x:
      for key in x[stream]:
        np.testing.assert_allclose(x[stream][key], y[stream][key], atol=1e-4)
  encoded_eval = next(pipeline.eval_batches(c, src, "test"))
  np.testing.assert_allclose(decoded_eval["labeled"]["image"],
                             encoded_eval["labeled"]["image"], atol=1e-4)


def test_video_frames(data_dir):
  c = make_config(data_dir, variant="video_tiny", unlabeled_batch_size=16)
  src = data_info.load(c.data)
  b = take(c, src, n=1)[0]
  lab = b["labeled"]
  assert lab["frames"].shape == (32, 32, 64)
  assert lab["frames"].dtype == np.float32
  assert lab["segment_labels"].shape == (32, 4, 20)
  assert "image" not in lab and set(b["unlabeled"]) == {"frames", "index"}
  np.testing.assert_array_equal(lab["labels"], lab["segment_labels"].max(1))


@pytest.mark.parametrize("change, match", [
    (dict(global_batch_size=30, process_count=4), "does not divide by the 4"),
    (dict(global_batch_size=512), "larger than split 'train'"),
    (dict(unlabeled_batch_size=1000), "unlabeled_batch_size=1000 is larger"),
    (dict(shuffle_buffer=100), "shuffle_buffer"),
    (dict(crop_scales=(1.5,)), "crop_scales"),
    (dict(process_index=2, process_count=2), "process_index=2"),
    (dict(known_mask_rows=10), "known_mask has shape"),
])
def test_clear_errors(data_dir, source, change, match):
  c = make_config(data_dir)
  change = dict(change)
  if "global_batch_size" in change:
    c.train.global_batch_size = change.pop("global_batch_size")
  kwargs = {k: change.pop(k) for k in ("process_index", "process_count")
            if k in change}
  known = None
  if "known_mask_rows" in change:
    known = np.ones((change.pop("known_mask_rows"), 20), np.uint8)
  for key, value in change.items():
    c.data[key] = value
  with pytest.raises(ValueError, match=match):
    next(pipeline.train_batches(c, source, known, **kwargs))


def test_eval_errors(data_dir, source):
  c = make_config(data_dir)
  with pytest.raises(ValueError, match="no split 'valid'"):
    next(pipeline.eval_batches(c, source, "valid"))
  with pytest.raises(ValueError, match="divide by the 3 processes"):
    next(pipeline.eval_batches(c, source, "test", batch_size=32,
                               process_count=3))


def test_crop_resize_matches_tf_crop_and_resize():
  import tensorflow as tf
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 40, 30, 3)).astype(np.uint8)
  # Edges kept off 1.0: there TF's rounding can put the last sample past the
  # image and fill it with 0, where ours clamps (the identity case below).
  boxes = np.array([[0.02, 0.03, 0.96, 0.95], [0.1, 0.2, 0.7, 0.9],
                    [0.3, 0.8, 0.9, 0.1], [0.5, 0.5, 0.97, 0.97]],
                   np.float32)                              # row 2 mirrored
  ours = pipeline._crop_resize(tf.constant(images), tf.constant(boxes), 24)
  ref = tf.image.crop_and_resize(images, boxes, tf.range(4), (24, 24))
  np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=0.05)
  full = np.tile(np.float32([0, 0, 1, 1]), (4, 1))
  same = pipeline._crop_resize(tf.constant(images[:, :24, :24]),
                               tf.constant(full), 24)
  np.testing.assert_array_equal(same.numpy(), images[:, :24, :24])  # identity


class _FilesSource:
  """Encoded images of different sizes, as the real-dataset readers give."""

  def __init__(self):
    import tensorflow as tf
    from jaxmlc.data.info import DatasetInfo
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (40, 24), (17, 17), (50, 60)] * 8
    self.images = [rng.integers(0, 256, s + (3,), dtype=np.uint8)
                   for s in sizes]
    self.encoded = [tf.io.encode_png(im).numpy() for im in self.images]
    self.labels = rng.integers(0, 2, (32, 5)).astype(np.uint8)
    self.info = DatasetInfo(
        name="files", class_names=tuple("abcde"), input_kind="image",
        num_examples={"train": 32, "test": 32}, train_labels=self.labels,
        train_label_mask=np.ones_like(self.labels), image_size=None)

  def encoded_examples(self, split):
    import tensorflow as tf
    return tf.data.Dataset.from_tensor_slices({
        "image": self.encoded, "labels": self.labels,
        "label_mask": np.ones_like(self.labels), "index": np.arange(32),
        "id": [f"{split}{i}" for i in range(32)]})

  def examples(self, split):
    raise AssertionError("variable sizes: the pipeline must use the bytes")


def test_variable_size_encoded_images(data_dir):
  import tensorflow as tf
  source = _FilesSource()
  c = make_config(data_dir, crop_scales=(1.0, 0.5), flip=True, resize_size=40)
  lab = take(c, source, n=2)[1]["labeled"]
  assert lab["image"].shape == (32, 32, 32, 3)
  np.testing.assert_array_equal(lab["labels"], source.labels[lab["index"]])
  batch = next(pipeline.eval_batches(c, source, "test", batch_size=8))
  for row in range(8):
    want = tf.image.resize(source.images[row].astype(np.float32), (32, 32),
                           antialias=True).numpy() / 255.0
    np.testing.assert_allclose(batch["labeled"]["image"][row], want,
                               atol=1e-5)


def test_raw_images_stay_decoded_when_large(data_dir, source, monkeypatch):
  monkeypatch.setattr(pipeline, "DECODED_CACHE_BYTES", 0)
  fresh = data_info.load(make_config(data_dir).data)
  assert not pipeline._materialise(fresh, "test")["_encoded"]


def test_train_examples_keeps_the_first_rows(data_dir, raw_train):
  c = make_config(data_dir, train_examples=64)
  cut = data_info.load(c.data)
  assert cut.info.num_examples["train"] == 64
  assert cut.info.num_examples["test"] == N_TEST
  np.testing.assert_array_equal(cut.info.train_labels,
                                raw_train["labels"][:64])
  assert pipeline.steps_per_epoch(c, cut.info) == 2
  seen = np.concatenate([b["labeled"]["index"] for b in take(c, cut, n=6)])
  assert set(seen.tolist()) == set(range(64))     # 3 epochs of rows 0..63
  batch = take(c, cut, n=1)[0]["labeled"]
  np.testing.assert_allclose(batch["image"] * 255.0,
                             raw_train["image"][batch["index"]], atol=1e-3)
  for bad in (-1, N_TRAIN + 1):
    with pytest.raises(ValueError, match="config.data.train_examples"):
      data_info.load(make_config(data_dir, train_examples=bad).data)
