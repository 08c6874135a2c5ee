"""MSCNN: MFB, attention estimators, label GCN, module switches, loss, and one
end-to-end run on the tiny embedded data."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmlc import losses
from jaxmlc.data.info import DatasetInfo
from jaxmlc.methods import base, mscnn
from jaxmlc.models.fusion import MFB
from jaxmlc.models.label_gcn import LeakyLabelGCN
from jaxmlc.models.mscnn_nets import (MSCNN, AttentionEstimator,
                                      MultiStageAttentionCNN, attention_pool)

from _configs import tiny_config

KEY = jax.random.PRNGKey(0)
SIZE = 32


def _dense(params, x):
  return np.asarray(x, np.float64) @ np.asarray(params["kernel"], np.float64) \
      + np.asarray(params["bias"], np.float64)


# ----------------------------------------------------------------- MFB ----

@pytest.mark.parametrize("normalize", [False, True])
def test_mfb_equals_per_class_loop(normalize):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(3, 7)).astype(np.float32)
  embeddings = rng.normal(size=(4, 5)).astype(np.float32)
  mfb = MFB(factor_dim=6, group=3, normalize=normalize, dropout=0.5)
  params = mfb.init(KEY, features, embeddings, train=False)["params"]
  logits = np.asarray(mfb.apply({"params": params}, features, embeddings,
                                train=False))
  expected = np.zeros((3, 4))
  for i in range(4):                       # one class at a time, as the paper
    m1 = _dense(params["label_proj"], embeddings[i])
    for b in range(3):
      m = m1 * _dense(params["image_proj"], features[b])
      pooled = np.array([m[0:3].sum(), m[3:6].sum()])
      if normalize:
        pooled = np.sign(pooled) * np.sqrt(np.abs(pooled))
        pooled = pooled / np.linalg.norm(pooled)
      expected[b, i] = _dense(params["classifier"], pooled)[0]
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_mfb_rejects_indivisible_group():
  with pytest.raises(ValueError, match="divisible"):
    MFB(factor_dim=7, group=2).init(KEY, jnp.ones((1, 3)), jnp.ones((2, 3)),
                                    train=False)


# ----------------------------------------------------------- attention ----

def test_attention_pool_matches_numpy_and_sums_to_one():
  rng = np.random.default_rng(1)
  local = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  g = rng.normal(size=(2, 5)).astype(np.float32)
  pooled, a = attention_pool(jnp.asarray(local), jnp.asarray(g))
  flat = local.reshape(2, 12, 5).astype(np.float64)
  c = np.einsum("bnc,bc->bn", flat, g)                     # eq. 3
  expected_a = np.exp(c - c.max(1, keepdims=True))
  expected_a /= expected_a.sum(1, keepdims=True)          # eq. 4
  np.testing.assert_allclose(np.asarray(a), expected_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pooled),          # eq. 5
                             np.einsum("bn,bnc->bc", expected_a, flat),
                             rtol=1e-5, atol=1e-5)


def test_estimator_projects_global_vector_when_widths_differ():
  local, g = jnp.ones((2, 2, 2, 4)), jnp.ones((2, 6))
  est = AttentionEstimator()
  params = est.init(KEY, local, g)["params"]
  assert params["project"]["kernel"].shape == (6, 4)
  same = est.init(KEY, local, jnp.ones((2, 4)))
  assert "params" not in same or not same["params"]


def _cnn(multistage=True, attention=True):
  return MultiStageAttentionCNN(backbone="vgg16_bn", width=4, fc_features=12,
                                pool_size=1, multistage=multistage,
                                attention=attention)


def test_cnn_attention_maps_sum_to_one():
  images = jax.random.normal(KEY, (2, SIZE, SIZE, 3))
  cnn = _cnn()
  variables = cnn.init(KEY, images, train=False)
  out = cnn.apply(variables, images, train=False)
  # conv7/10/13 maps at 1/4, 1/8, 1/16 of the input; width 4 -> 16, 32, 32.
  assert [a.shape for a in out["attention"]] == [(2, 64), (2, 16), (2, 4)]
  for a in out["attention"]:
    np.testing.assert_allclose(np.asarray(a).sum(-1), 1.0, rtol=1e-5)
  assert out["features"].shape == (2, 16 + 32 + 32)


# ----------------------------------------------------------------- GCN ----

def test_leaky_gcn_equals_numpy():
  rng = np.random.default_rng(2)
  nodes = rng.normal(size=(4, 3)).astype(np.float32)
  adjacency = rng.random((4, 4)).astype(np.float32)
  gcn = LeakyLabelGCN(widths=(5, 2))
  params = gcn.init(KEY, nodes, adjacency)["params"]
  out = np.asarray(gcn.apply({"params": params}, nodes, adjacency))
  h = adjacency @ nodes @ np.asarray(params["h0"])
  h = np.where(h > 0, h, 0.2 * h)
  np.testing.assert_allclose(out, adjacency @ h @ np.asarray(params["h1"]),
                             rtol=1e-4, atol=1e-5)


# ------------------------------------------------------ module switches ----

def _model(ms=True, att=True, gcn=True, mfb=True):
  return MSCNN(num_classes=5, cnn=_cnn(ms, att), gcn=gcn, mfb=mfb,
               gcn_widths=(8, 0), mfb_factor_dim=6, mfb_dropout=0.0)


def _apply(model):
  images = jax.random.normal(KEY, (2, SIZE, SIZE, 3))
  nodes = jax.random.normal(jax.random.PRNGKey(1), (5, 7))
  adjacency = jnp.eye(5) * 0.5 + 0.1
  variables = model.init(KEY, images, nodes, adjacency, train=False)
  out = model.apply(variables, images, nodes, adjacency, train=False)
  return variables, out, nodes, adjacency


def test_switches_change_the_model_as_expected():
  full_vars, full, _, _ = _apply(_model())
  assert set(full_vars["params"]) == {"cnn", "gcn", "mfb"}
  assert {"attention_conv10", "attention_conv13"} <= set(
      full_vars["params"]["cnn"])
  assert len(full["attention"]) == 3 and full["features"].shape == (2, 80)
  # multistage off: only the conv13 estimator, F = g_a^3.
  _, single, _, _ = _apply(_model(ms=False))
  assert len(single["attention"]) == 1 and single["features"].shape == (2, 32)
  # attention off: uniform weights, F = GAP of every stage.
  _, flat, _, _ = _apply(_model(att=False))
  for a in flat["attention"]:
    np.testing.assert_allclose(np.asarray(a), 1.0 / a.shape[-1])
  # both off: a plain VGG, F = g (fc7).
  plain_vars, plain, _, _ = _apply(_model(ms=False, att=False, gcn=False,
                                          mfb=False))
  assert plain["features"].shape == (2, 12) and plain["attention"] == ()
  assert set(plain_vars["params"]) == {"cnn", "head_0"}


def test_no_fusion_averages_the_stage_heads():
  variables, out, _, _ = _apply(_model(gcn=False, mfb=False))
  params = variables["params"]
  assert set(params) == {"cnn", "head_0", "head_1", "head_2"}
  expected = np.mean([_dense(params[f"head_{i}"], f)
                      for i, f in enumerate(out["stage_features"])], axis=0)
  np.testing.assert_allclose(np.asarray(out["logits"]), expected, rtol=1e-4,
                             atol=1e-5)


def test_gcn_without_mfb_is_the_dot_product():
  model = _model(mfb=False)
  variables, out, nodes, adjacency = _apply(model)
  assert set(variables["params"]) == {"cnn", "gcn"}
  w = LeakyLabelGCN(widths=(8, 80)).apply(
      {"params": variables["params"]["gcn"]}, nodes, adjacency)
  np.testing.assert_allclose(np.asarray(out["logits"]),
                             np.asarray(out["features"]) @ np.asarray(w).T,
                             rtol=1e-4, atol=1e-4)


def test_mfb_without_gcn_fuses_the_node_inputs():
  variables, out, _, _ = _apply(_model(gcn=False))
  assert set(variables["params"]) == {"cnn", "mfb"}
  assert variables["params"]["mfb"]["label_proj"]["kernel"].shape == (7, 6)


# ---------------------------------------------------------------- loss ----

def test_semi_supervised_loss_is_weighted_eq9():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 3))
  labels = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  u_logits = rng.normal(size=(2, 3))
  pseudo = np.array([[0, 0, 1], [1, 1, 0]], np.float32)
  confidence = np.array([0.5, 0.25], np.float32)
  # eq. 9 by hand over 4 rows: P, N counted over all known entries.
  x = np.concatenate([logits, u_logits])
  t = np.concatenate([labels, pseudo])
  m = np.concatenate([mask, np.ones((2, 3))])
  w = np.array([1, 1, 0.5, 0.25])[:, None]
  p_count, n_count = (m * t).sum(), (m * (1 - t)).sum()
  wp = (p_count + n_count + 1) / (p_count + 1)
  wn = (p_count + n_count + 1) / (n_count + 1)
  sig = 1 / (1 + np.exp(-x))
  expected = -(w * m * (wp * t * np.log(sig)
                        + wn * (1 - t) * np.log(1 - sig))).sum() / 4
  got = mscnn.semi_supervised_loss(logits, labels, mask, u_logits, pseudo,
                                   confidence)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # Before the first propagation the unlabeled rows contribute nothing.
  before = mscnn.semi_supervised_loss(logits, labels, mask, u_logits, pseudo,
                                      confidence, ready=0.0)
  labeled_only = losses.batch_balanced_bce(logits, labels, mask) * 2 / 4
  np.testing.assert_allclose(float(before), float(labeled_only), rtol=1e-5)


# ------------------------------------------------------- the method ----

def _info(num_unlabeled=12):
  rng = np.random.default_rng(4)
  labels = (rng.random((16, 4)) < 0.4).astype(np.uint8)
  return DatasetInfo(
      name="fake", class_names=tuple("abcd"), input_kind="image",
      num_examples={"train": 16, "unlabeled": num_unlabeled, "test": 8},
      train_labels=labels, train_label_mask=np.ones_like(labels),
      image_size=SIZE)


def _method_config(**mscnn_overrides):
  c = tiny_config("unused", method="mscnn", global_batch_size=8)
  c.data.unlabeled_batch_size = 8
  c.model.backbone = "vgg16_bn"
  c.model.width = 4
  c.mscnn = ml_collections.ConfigDict(dict(
      fc_features=12, pool_size=1, gcn_hidden=8, mfb_factor_dim=6,
      label_embedding_dim=5, label_embedding_steps=5, **mscnn_overrides))
  return c


def test_label_propagation_switch_and_pseudo_label_gather():
  off = _method_config(label_propagation=False)
  off.data.unlabeled_batch_size = 0
  supervised = base.build(off, _info())
  assert not supervised.uses_unlabeled and not supervised.epoch_hooks
  with pytest.raises(ValueError, match="unlabeled_batch_size"):
    bad = _method_config()
    bad.data.unlabeled_batch_size = 0
    base.build(bad, _info())

  method = base.build(_method_config(), _info())
  assert method.uses_unlabeled and len(method.epoch_hooks) == 1
  rng = np.random.default_rng(5)
  batch = {"labeled": {"image": rng.normal(size=(2, SIZE, SIZE, 3)),
                       "labels": np.array([[1, 0, 0, 1], [0, 1, 0, 0]]),
                       "label_mask": np.ones((2, 4)),
                       "index": np.array([0, 1])},
           "unlabeled": {"image": rng.normal(size=(2, SIZE, SIZE, 3)),
                         "index": np.array([3, 7])}}
  batch = jax.tree.map(jnp.asarray, batch)
  # Without LP the state holds no pseudo-label arrays (orbax cannot
  # checkpoint zero-size arrays).
  plain = supervised.init(KEY, {"labeled": batch["labeled"]})
  assert set(plain["state"]) == {"pseudo_ready"}
  assert all(x.size for x in jax.tree.leaves(plain))
  variables = method.init(KEY, batch)
  assert variables["state"]["pseudo_labels"].shape == (12, 4)
  assert variables["state"]["confidence"].shape == (12,)

  def loss_with(pseudo):
    state = {"pseudo_labels": jnp.asarray(pseudo, jnp.float32),
             "confidence": jnp.full((12,), 0.7),
             "pseudo_ready": jnp.ones(())}
    loss, aux, _ = method.loss_fn({**variables, "state": state}, batch, KEY,
                                  0)
    return float(loss), aux

  pseudo = np.zeros((12, 4))
  base_loss, aux = loss_with(pseudo)
  assert float(aux["pseudo_confidence"]) == pytest.approx(0.7)
  elsewhere = pseudo.copy()
  elsewhere[[0, 5, 11]] = 1                # rows not in the batch
  assert loss_with(elsewhere)[0] == pytest.approx(base_loss, rel=1e-6)
  inside = pseudo.copy()
  inside[7, 2] = 1                          # a row the batch gathers
  assert loss_with(inside)[0] != pytest.approx(base_loss, rel=1e-6)


def test_unknown_key_is_a_clear_error():
  with pytest.raises(ValueError, match="did you mean 'knn'"):
    base.build(_method_config(knnn=5), _info())


def test_end_to_end_tiny(data_dir, tmp_path):
  from jaxmlc import train
  c = _method_config(knn=5, cg_iterations=10)
  c.data.dir = data_dir
  c.data.known_label_proportion = 1.0
  c.data.unlabeled_batch_size = 16
  c.optim.lr = 2e-3
  c.train.global_batch_size = 32
  c.train.steps = 0
  c.train.epochs = 2                  # the hook runs after epoch 0
  c.train.log_every = 4
  c.train.checkpoint_every = 0
  c.train.eval_batch_size = 64
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(c, workdir)
  assert 0.0 <= out["test"]["mAP"] <= 1.0
  assert os.path.exists(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"loss"' in line]
  # Pseudo labels are in use from the second epoch on.
  assert rows[0]["pseudo_confidence"] == 0.0
  assert rows[-1]["pseudo_confidence"] > 0.0
  # The loss gains pseudo-labelled terms then; its labeled part must fall.
  assert rows[-1]["labeled_loss"] < rows[0]["labeled_loss"]
  assert np.isfinite(rows[-1]["loss"])
