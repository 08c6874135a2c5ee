"""CMA: attention and category features against numpy, multi-scale shapes,
eq. 12 weighting, label embeddings, and one tiny end-to-end run."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmlc.config_base import base_config
from jaxmlc.data.info import DatasetInfo
from jaxmlc.methods import base, cma
from jaxmlc.models import attention as attn

RNG = np.random.default_rng(0)


def numpy_attention(projected, embeddings, eps=attn.ATTENTION_EPS):
  """Eq. 7-8 location by location."""
  b, m, _ = projected.shape
  c = embeddings.shape[0]
  out = np.zeros((b, c, m))
  for n in range(b):
    for k in range(c):
      z = np.zeros(m)
      for i in range(m):
        v, e = projected[n, i], embeddings[k]
        z[i] = max(0.0, v @ e / (np.linalg.norm(v) * np.linalg.norm(e)))
      out[n, k] = z / (z.sum() + eps)
  return out


def test_attention_rows_are_distributions_and_match_numpy():
  projected = RNG.normal(size=(2, 7, 5)).astype(np.float32)
  embeddings = RNG.normal(size=(4, 5)).astype(np.float32)
  a = np.asarray(attn.cross_modality_attention(projected, embeddings))
  assert a.shape == (2, 4, 7)
  assert np.all(a >= 0)
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-4)
  np.testing.assert_allclose(a, numpy_attention(projected, embeddings),
                             atol=1e-5)


def test_attention_of_a_class_facing_away_is_zero_and_finite():
  projected = np.ones((1, 3, 2), np.float32)
  embeddings = np.array([[-1.0, -1.0], [1.0, 0.0]], np.float32)
  a = np.asarray(attn.cross_modality_attention(projected, embeddings))
  np.testing.assert_array_equal(a[0, 0], 0.0)
  np.testing.assert_allclose(a[0, 1], 1 / 3, atol=1e-5)
  grad = jax.grad(lambda p: attn.cross_modality_attention(
      p, embeddings).sum())(jnp.zeros((1, 3, 2)))
  assert np.all(np.isfinite(grad))


def test_category_features_equal_numpy_weighted_sums():
  a = RNG.random((2, 3, 6)).astype(np.float32)
  visual = RNG.normal(size=(2, 6, 4)).astype(np.float32)
  h = np.asarray(attn.category_features(a, visual))
  expected = np.zeros((2, 3, 4))
  for n in range(2):
    for k in range(3):
      for i in range(6):
        expected[n, k] += a[n, k, i] * visual[n, i]
  np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-5)


def test_class_wise_classifier_and_head_shapes():
  features = RNG.normal(size=(2, 3, 4)).astype(np.float32)
  clf = attn.ClassWiseClassifier(3)
  params = clf.init(jax.random.PRNGKey(0), features)
  w = np.asarray(params["params"]["kernel"])
  b = np.asarray(params["params"]["bias"]) + 0.5
  params = {"params": {"kernel": w, "bias": b}}
  np.testing.assert_allclose(clf.apply(params, features),
                             np.einsum("bcv,cv->bc", features, w) + b,
                             rtol=1e-5)
  visual = RNG.random((2, 9, 8)).astype(np.float32)
  embeddings = RNG.normal(size=(3, 16)).astype(np.float32)
  for kind, rows in (("cma", 3), ("self", 1)):
    head = attn.CMAHead(3, attention=kind)
    v = head.init(jax.random.PRNGKey(0), visual, embeddings, train=False)
    logits, a = head.apply(v, visual, embeddings, train=False)
    assert logits.shape == (2, 3) and a.shape == (2, rows, 9)
    np.testing.assert_allclose(np.asarray(a).sum(-1), 1.0, atol=1e-4)


def info_for(kind="image", num_classes=5, n=40, image_size=448):
  labels = (RNG.random((n, num_classes)) < 0.3).astype(np.uint8)
  labels[:, 0] = 1
  return DatasetInfo(
      name="fake", class_names=tuple(f"c{k}" for k in range(num_classes)),
      input_kind=kind, num_examples={"train": n, "test": n},
      train_labels=labels, train_label_mask=np.ones_like(labels),
      image_size=image_size if kind == "image" else None,
      frames_shape=(32, 16) if kind == "frames" else None)


def cma_config(**cma_keys):
  c = base_config()
  c.method = "cma"
  c.cma = ml_collections.ConfigDict({"asge_steps": 50, **cma_keys})
  return c


def abstract_outputs(config, info, x_shape):
  model = cma.build_model(config, info)
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  e = jax.ShapeDtypeStruct((info.num_classes, 256), jnp.float32)
  variables = jax.eval_shape(
      lambda x, e: model.init(jax.random.PRNGKey(0), x, e, train=False), x, e)
  return jax.eval_shape(lambda v, x, e: model.apply(v, x, e, train=False),
                        variables, x, e)


def test_multiscale_shapes_at_448_without_compute():
  c = cma_config()
  c.model.backbone = "resnet101"
  logits, maps = abstract_outputs(c, info_for(), (2, 448, 448, 3))
  assert logits.shape == (3, 2, 5)
  # layer3 28x28x1024, layer4 14x14x2048, extra block 7x7x512.
  assert {k: v.shape for k, v in maps.items()} == {
      "layer3": (2, 5, 28 * 28), "layer4": (2, 5, 14 * 14),
      "extra": (2, 5, 7 * 7)}


def test_extra_block_channels():
  x = jax.ShapeDtypeStruct((1, 14, 14, 2048), jnp.float32)
  block = cma.extra_block(2048, jnp.float32, "extra")
  out = jax.eval_shape(lambda x: block.apply(
      block.init(jax.random.PRNGKey(0), x, True), x, True), x)
  assert out.shape == (1, 7, 7, 512)


def test_small_inputs_and_video_shapes():
  c = cma_config(reduce_channels=32)
  c.model.backbone, c.model.width = "resnet_tiny", 8
  logits, maps = abstract_outputs(c, info_for(image_size=64), (4, 64, 64, 3))
  assert logits.shape == (3, 4, 5)
  assert {k: v.shape[-1] for k, v in maps.items()} == {
      "layer3": 16, "layer4": 4, "extra": 1}
  c.cma.multiscale = False
  logits, maps = abstract_outputs(c, info_for(image_size=64), (4, 64, 64, 3))
  assert logits.shape == (1, 4, 5) and maps["layer4"].shape == (4, 5, 4)
  c = cma_config(snet_features=(8, 8, 8, 8), reduce_channels=0,
                 attention="self")
  logits, maps = abstract_outputs(c, info_for("frames"), (3, 32, 16))
  assert logits.shape == (1, 3, 5) and maps["time"].shape == (3, 1, 2)


def test_frequency_weighted_loss_per_scale_matches_eq_12():
  logits = RNG.normal(size=(3, 4, 5)).astype(np.float32)
  targets = (RNG.random((4, 5)) < 0.4).astype(np.float32)
  mask = (RNG.random((4, 5)) < 0.8).astype(np.float32)
  labels = (RNG.random((50, 5)) < 0.3).astype(np.uint8)
  train_mask = (RNG.random((50, 5)) < 0.9).astype(np.uint8)
  p = cma.positive_frequency(labels, train_mask)
  np.testing.assert_allclose(
      p, [sum(labels[n, k] * train_mask[n, k] for n in range(50))
          / sum(train_mask[n, k] for n in range(50)) for k in range(5)],
      rtol=1e-6)
  beta = 0.4
  expected = []
  for s in range(3):
    y = 1 / (1 + np.exp(-logits[s].astype(np.float64)))
    w = targets * np.exp(beta * (1 - p)) + (1 - targets) * np.exp(beta * p)
    bce = -(targets * np.log(y) + (1 - targets) * np.log(1 - y))
    expected.append(np.sum(mask * w * bce) / 4)
  loss, per_scale = cma.multiscale_loss(logits, targets, mask, p, beta)
  np.testing.assert_allclose(per_scale, expected, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  # Rare classes weigh their positives up: beta > 0 raises a positive's loss.
  plain, _ = cma.multiscale_loss(logits, targets, mask, p, 0.0)
  assert float(loss) != pytest.approx(float(plain))
  np.testing.assert_allclose(
      cma.fused_probabilities(logits),
      np.mean(1 / (1 + np.exp(-logits.astype(np.float64))), 0), rtol=1e-5)


def test_label_embeddings_of_each_kind(tmp_path):
  info = info_for(num_classes=4)
  e, _ = cma.label_embeddings_for(cma_config(label_embedding="onehot"), info)
  np.testing.assert_array_equal(e, np.eye(4))
  e, source = cma.label_embeddings_for(cma_config(asge_steps=20), info)
  assert e.shape == (4, 256) and "alpha=None" in source
  # Video graphs get the relaxation by default (sec. 4.2).
  _, source = cma.label_embeddings_for(cma_config(asge_steps=20),
                                       info_for("frames", num_classes=4))
  assert "alpha=0.1" in source
  vectors = RNG.normal(size=(4, 7)).astype(np.float32)
  np.save(tmp_path / "v.npy", vectors)
  e, _ = cma.label_embeddings_for(cma_config(
      label_embedding="glove", word_vectors=str(tmp_path / "v.npy")), info)
  np.testing.assert_array_equal(e, vectors)


def test_word2vec_places_co_occurring_labels_together():
  labels = np.zeros((400, 6), np.uint8)
  labels[:200, :3] = RNG.random((200, 3)) < 0.7      # group {0, 1, 2}
  labels[200:, 3:] = RNG.random((200, 3)) < 0.7      # group {3, 4, 5}
  e = cma.word2vec_embeddings(labels, dim=16, steps=300, seed=0)
  again = cma.word2vec_embeddings(labels, dim=16, steps=300, seed=0)
  np.testing.assert_array_equal(e, again)
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  s = unit @ unit.T
  within = np.mean([s[i, j] for g in (range(3), range(3, 6))
                    for i in g for j in g if i != j])
  across = np.mean([s[i, j] for i in range(3) for j in range(3, 6)])
  assert within > across + 0.2


def test_config_errors():
  info = info_for()
  with pytest.raises(ValueError, match="did you mean 'attention'"):
    cma.cma_config(cma_config(atention="self"))
  with pytest.raises(ValueError, match="label_embedding"):
    cma.cma_config(cma_config(label_embedding="bert"))
  with pytest.raises(ValueError, match="word_vectors"):
    cma.cma_config(cma_config(label_embedding="glove"))
  with pytest.raises(ValueError, match="attends over"):
    cma.build_model(cma_config(), info_for("features"))
  assert "cma" in base.available()
  del info


def test_video_loss_fn_runs_and_has_finite_grads():
  c = cma_config(snet_features=(8, 8, 8, 8), reduce_channels=0,
                 asge_alpha=0.1)
  c.train.global_batch_size = 4
  info = info_for("frames")
  method = base.build(c, info)
  batch = {"labeled": {
      "frames": RNG.normal(size=(4, 32, 16)).astype(np.float32),
      "labels": info.train_labels[:4].astype(np.float32),
      "label_mask": np.ones((4, 5), np.float32)}}
  variables = method.init(jax.random.PRNGKey(0), batch)

  def loss_of(params):
    return method.loss_fn({**variables, "params": params}, batch,
                          jax.random.PRNGKey(1), 0)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_of))(variables["params"])
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  scores = method.predict_fn(variables, batch["labeled"])
  assert scores.shape == (4, 5)
  assert np.all((np.asarray(scores) >= 0) & (np.asarray(scores) <= 1))


def test_tiny_training_run_learns_and_writes_attention_maps(data_dir,
                                                            tmp_path):
  from _configs import tiny_config
  from jaxmlc import train
  from jaxmlc.data import pipeline
  c = tiny_config(data_dir, method="cma", steps=12, log_every=3,
                  checkpoint_every=0)
  c.cma = ml_collections.ConfigDict(dict(asge_steps=100, reduce_channels=16))
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(c, workdir)
  assert 0.0 <= out["test"]["mAP"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0]
  assert {"loss_layer3", "loss_layer4", "loss_extra"} <= set(rows[0])
  assert os.path.exists(os.path.join(workdir, "results.json"))
  # Attention maps of the trained model for a few test images.
  s, variables, _ = train.restore_for_inference(c, workdir)
  batch = next(pipeline.eval_batches(c, s.source, "test", batch_size=4))
  images = batch["labeled"]["image"]
  scores, maps = cma.attention_maps(c, s.info, variables, images)
  assert scores.shape == (4, s.info.num_classes)
  assert maps["layer3"].shape == (4, s.info.num_classes, 2, 2)
  paths = cma.save_attention_maps(images, scores, maps, s.info.class_names,
                                  os.path.join(workdir, "plots"),
                                  batch["labeled"]["labels"])
  assert len(paths) == 4 and all(os.path.getsize(p) > 0 for p in paths)
