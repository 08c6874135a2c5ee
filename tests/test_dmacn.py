"""DMACN (methods/dmacn.py, models/dmacn_nets.py, models/gcn.py).

Unit tests run on image *feature vectors* (MLP image generators, small
widths) so they compile in seconds; every loss term is re-derived in numpy
from the intermediate features. The end-to-end test trains the pixel
version (tiny ResNets) through all three phases on the embedded tiny data.
"""
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmlc.config_base import base_config
from jaxmlc.data.info import DatasetInfo
from jaxmlc.methods import dmacn
from jaxmlc.models.dmacn_nets import DMACNNets
from jaxmlc.models.gcn import LabelGCN

B, BU, C, M, D2, DIM = 6, 4, 5, 7, 12, 8
PRETRAIN_DROP_EPOCHS, STEPS_PER_EPOCH = 1, 3


# ----------------------------------------------------------------------------
# numpy references.

def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_logits(features, rows):
  """features [B, d], rows [C, d+1] -> [B, C]."""
  return features @ rows[:, :-1].T + rows[:, -1]


def np_bce(logits, labels):
  p = np_sigmoid(logits.astype(np.float64))
  return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def np_entropy(p):
  return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def np_js(logits1, logits2):
  p1, p2 = np_sigmoid(logits1.astype(np.float64)), np_sigmoid(
      logits2.astype(np.float64))
  return float(np.mean(np_entropy((p1 + p2) / 2)
                       - (np_entropy(p1) + np_entropy(p2)) / 2))


def np_mean_norm(a, b):
  return float(np.mean(np.linalg.norm(a.astype(np.float64) - b, axis=-1)))


def np_cosines(w1, w2):
  return np.sum(w1 * w2, 1) / (np.linalg.norm(w1, axis=1)
                               * np.linalg.norm(w2, axis=1))


def np_terms(f, labels, absolute=True):
  """Every term of eq. 10 from the features dict `f` (numpy arrays)."""
  r = f["rows"]
  bce = lambda feats: sum(np_bce(np_logits(feats[v], r[v]), labels)
                          for v in range(2)) / 2
  cos = np_cosines(r[0], r[1])
  out = dict(v_image=bce(f["image"]), mv=float(np.mean(
      np.abs(cos) if absolute else cos)))
  if "nonimage" in f:
    out["v_nonimage"] = bce(f["nonimage"])
    out["sp"] = 0.5 * sum(
        np_mean_norm(f["image_to_nonimage"][i], f["nonimage"][i])
        + np_mean_norm(f["nonimage_to_image"][i], f["image"][i])
        for i in range(2))
  if "image_u" in f:
    out["cr1"] = np_js(np_logits(f["image_u"][0], r[0]),
                       np_logits(f["image_u"][1], r[1]))
  if "cycle_u" in f:
    out["su"] = sum(np_mean_norm(f["image_u"][i], f["cycle_u"][i])
                    for i in range(2))
    out["cr2"] = np_js(np_logits(f["imputed_u"][0], r[0]),
                       np_logits(f["imputed_u"][1], r[1]))
  return out


# ----------------------------------------------------------------------------
# A small setup on feature vectors.

def make_info(num_train=STEPS_PER_EPOCH * B):
  rng = np.random.default_rng(0)
  labels = (rng.random((num_train, C)) < 0.4).astype(np.uint8)
  labels[:, 1] = labels[:, 0]                # a co-occurring pair for eq. 12
  return DatasetInfo(
      name="fake_pairs", class_names=tuple(f"c{i}" for i in range(C)),
      input_kind="features",
      num_examples={"train": num_train, "test": 4, "unlabeled": 10},
      train_labels=labels, train_label_mask=np.ones_like(labels),
      feature_dims={"features": M, "modality2": D2})


def make_config(**dmacn_overrides):
  c = base_config()
  c.method = "dmacn"
  c.data.unlabeled_batch_size = BU
  c.train.global_batch_size = B
  c.dmacn = ml_collections.ConfigDict(dict(
      features=DIM, nonimage_hidden=16, nonimage_bins=(1, 2, 4),
      image_mlp_hidden=(16,), warmup_epochs=1, pretrain_epochs=2,
      pretrain_lr_drop_epochs=PRETRAIN_DROP_EPOCHS, retrain_epochs=1))
  for k, v in dmacn_overrides.items():
    c.dmacn[k] = v
  return c


def make_batch(seed=1):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  labels = jnp.asarray(rng.random((B, C)) < 0.4, jnp.float32)
  return {"labeled": {"features": f32(B, M),
                      "modality2": jnp.abs(f32(B, D2)), "labels": labels,
                      "label_mask": jnp.ones((B, C), jnp.float32)},
          "unlabeled": {"features": f32(BU, M)}}


def build(**overrides):
  config, info = make_config(**overrides), make_info()
  method = dmacn.build(config, info)
  cfg = dmacn.dmacn_config(config)
  model = dmacn.build_model(config, info, cfg)
  return method, model, cfg, config, info


@pytest.fixture(scope="module")
def setup():
  method, model, cfg, config, info = build()
  batch = make_batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  adjacency = jnp.asarray(dmacn.adjacency_of(config, info, cfg))
  return types.SimpleNamespace(method=method, model=model, cfg=cfg,
                               config=config, info=info, batch=batch,
                               variables=variables, adjacency=adjacency)


def separate_features(s, variables=None, use_gcn_rows=False):
  """Every feature computed by its own `apply` (not through loss_fn)."""
  variables = variables or s.variables
  mv = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  apply = lambda method, *args: np.asarray(
      s.model.apply(mv, *args, method=method))
  labeled = s.batch["labeled"]
  f = {"image": apply(DMACNNets.image_features, labeled["features"]),
       "image_u": apply(DMACNNets.image_features,
                        s.batch["unlabeled"]["features"]),
       "nonimage": apply(DMACNNets.nonimage_features, labeled["modality2"])}
  sft1 = lambda x: apply(DMACNNets.sft1_image_to_nonimage, x)
  sft2 = lambda x: apply(DMACNNets.sft2_nonimage_to_image, x)
  f["image_to_nonimage"] = sft1(f["image"])
  f["nonimage_to_image"] = sft2(f["nonimage"])
  f["imputed_u"] = sft1(f["image_u"])
  f["cycle_u"] = sft2(f["imputed_u"])
  if use_gcn_rows:
    f["rows"] = np_gcn_rows(variables, np.asarray(s.adjacency))
  else:
    f["rows"] = apply(DMACNNets.classifier_rows)
  return f


def np_gcn(nodes, adjacency, h0, h1):
  """Eq. 11: A ReLU(A X H0) H1."""
  return adjacency @ np.maximum(adjacency @ nodes @ h0, 0.0) @ h1


def np_gcn_rows(variables, adjacency):
  gcn = variables["params"]["gcn"]
  w0 = np.asarray(variables["state"]["w0"])
  return np.stack([np_gcn(w0[v], adjacency, np.asarray(gcn["h0"]),
                          np.asarray(gcn["h1"])) for v in range(2)])


def loss_of(method, variables, batch, phase):
  loss, aux, _ = method.loss_fn(variables, batch, jax.random.PRNGKey(3), 0,
                                phase=phase)
  return float(loss), {k: float(v) for k, v in aux.items()}


# ----------------------------------------------------------------------------
# Eq. 11 and 12.

def test_gcn_matches_eq11_and_identity_init_smooths():
  rng = np.random.default_rng(0)
  nodes = rng.normal(size=(C, 3)).astype(np.float32)
  adjacency = rng.random((C, C)).astype(np.float32)
  gcn = LabelGCN(hidden=4, weight_init="random")
  params = gcn.init(jax.random.PRNGKey(0), nodes, adjacency)["params"]
  assert params["h0"].shape == (3, 4) and params["h1"].shape == (4, 3)
  # ML-GCN's U(-1/sqrt(out), 1/sqrt(out)).
  assert np.abs(params["h0"]).max() <= 0.5 and np.abs(params["h1"]).max() <= (
      1 / np.sqrt(3))
  np.testing.assert_allclose(
      gcn.apply({"params": params}, nodes, adjacency),
      np_gcn(nodes, adjacency, np.asarray(params["h0"]),
             np.asarray(params["h1"])), rtol=1e-5, atol=1e-5)
  identity = LabelGCN(weight_init="identity")
  out, params = identity.init_with_output(jax.random.PRNGKey(0), nodes,
                                          adjacency)
  np.testing.assert_allclose(out, adjacency @ adjacency @ nodes, rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="identity"):
    LabelGCN(hidden=5, weight_init="identity").init(jax.random.PRNGKey(0),
                                                    nodes, adjacency)


def test_residual_gcn_starts_at_the_input_rows_and_learns_eq11_on_top():
  rng = np.random.default_rng(1)
  nodes = rng.normal(size=(C, 3)).astype(np.float32)
  adjacency = rng.random((C, C)).astype(np.float32)
  gcn = LabelGCN(weight_init="identity", residual=True)
  out, variables = gcn.init_with_output(jax.random.PRNGKey(0), nodes,
                                        adjacency)
  np.testing.assert_allclose(out, nodes, rtol=1e-6, atol=1e-6)
  assert not np.any(np.asarray(variables["params"]["h1"]))
  # With any weights: X + eq. 11 (numpy), and H1 gets a gradient at zero.
  h0 = rng.normal(size=(3, 6)).astype(np.float32)
  h1 = rng.normal(size=(6, 3)).astype(np.float32)
  np.testing.assert_allclose(
      gcn.apply({"params": {"h0": h0, "h1": h1}}, nodes, adjacency),
      nodes + np_gcn(nodes, adjacency, h0, h1), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(gcn.apply({"params": p}, nodes,
                                               adjacency) ** 2))(
                                                   variables["params"])
  assert np.abs(np.asarray(grads["h1"])).max() > 0
  with pytest.raises(ValueError, match="features"):
    LabelGCN(features=2, residual=True).init(jax.random.PRNGKey(0), nodes,
                                             adjacency)


def test_adjacency_is_eq12_of_the_training_labels(setup):
  labels = setup.info.train_labels.astype(np.float64)
  counts = labels.T @ labels
  probability = counts / np.maximum(np.diag(counts)[:, None], 1)
  binary = (probability >= 0.4) & ~np.eye(C, dtype=bool)
  expected = np.where(binary, 0.2 / np.maximum(binary.sum(1, keepdims=True),
                                               1), 0.0)
  np.fill_diagonal(expected, 0.8)
  np.testing.assert_allclose(setup.adjacency, expected, atol=1e-6)
  assert expected[0, 1] > 0 and expected[1, 0] > 0     # the co-occurring pair


# ----------------------------------------------------------------------------
# Wiring: which loss sees which features.

def test_every_term_matches_numpy_from_intermediate_features(setup):
  active = dmacn.active_terms("pretrain", setup.cfg)
  assert set(active) == set(dmacn.TERMS)
  v = setup.variables
  out, _ = dmacn.compute_features(
      setup.model, {"params": v["params"], "batch_stats": v["batch_stats"]},
      setup.batch, active, image_key="features", nonimage_key="modality2",
      w0=v["state"]["w0"], adjacency=setup.adjacency, use_gcn_rows=False,
      train=True)
  labels = np.asarray(setup.batch["labeled"]["labels"])
  terms = dmacn.loss_terms(out, labels, setup.batch["labeled"]["label_mask"],
                           active)
  expected = np_terms({k: np.asarray(x) for k, x in out.items()}, labels)
  for t in dmacn.TERMS:
    np.testing.assert_allclose(float(terms[t]), expected[t], rtol=2e-5,
                               atol=1e-6, err_msg=t)
  signed = dmacn.loss_terms(out, labels, None, ("mv",), absolute=False)
  np.testing.assert_allclose(
      float(signed["mv"]), np_terms({k: np.asarray(x) for k, x in out.items()},
                                    labels, absolute=False)["mv"], rtol=1e-5)


def test_translation_targets_are_constants_only_when_switched(setup):
  rng = np.random.default_rng(7)
  shapes = dict(image=(2, B, DIM), nonimage=(2, B, DIM),
                image_to_nonimage=(2, B, DIM), nonimage_to_image=(2, B, DIM),
                image_u=(2, BU, DIM), imputed_u=(2, BU, DIM),
                cycle_u=(2, BU, DIM), rows=(2, C, DIM + 1))
  out = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
         for k, s in shapes.items()}
  labels = jnp.zeros((B, C))

  def grads(stop):
    def both(o):
      terms = dmacn.loss_terms(o, labels, None, ("sp", "su"),
                               stop_target_gradient=stop)
      return terms["sp"] + terms["su"]
    return jax.grad(both)(out)

  stopped, literal = grads(True), grads(False)
  for target in ("image", "nonimage", "image_u"):
    assert np.abs(stopped[target]).max() == 0.0
    assert np.abs(literal[target]).max() > 0.0
  for translated in ("image_to_nonimage", "nonimage_to_image", "cycle_u"):
    np.testing.assert_allclose(stopped[translated], literal[translated])
    assert np.abs(stopped[translated]).max() > 0.0


@pytest.mark.parametrize("translators_only", [False, True])
def test_translators_only_keeps_eq6_7_out_of_the_generators(setup,
                                                             translators_only):
  active = ("v_image", "v_nonimage", "sp", "su", "cr1", "cr2")

  def sp_su(params):
    variables = {"params": params,
                 "batch_stats": setup.variables["batch_stats"]}
    out, _ = dmacn.compute_features(
        setup.model, variables, setup.batch, active, image_key="features",
        nonimage_key="modality2", w0=None, adjacency=None,
        use_gcn_rows=False, train=True,
        stop_translator_inputs=translators_only)
    terms = dmacn.loss_terms(out, setup.batch["labeled"]["labels"], None,
                             active, stop_target_gradient=translators_only)
    return terms["sp"] + terms["su"]

  grads = jax.grad(sp_su)(setup.variables["params"])
  largest = {g: max(float(jnp.abs(x).max()) for x in jax.tree.leaves(grads[g]))
             for g in ("g1", "g2", "g3", "g4", "sft1", "sft2")}
  assert largest["sft1"] > 0 and largest["sft2"] > 0
  for generator in ("g1", "g2", "g3", "g4"):
    assert (largest[generator] == 0) == translators_only, (generator, largest)


def test_loss_fn_feeds_each_term_its_features(setup):
  """loss_fn's eq. 10 = numpy eq. 10 on features computed one by one."""
  f = separate_features(setup)
  labels = np.asarray(setup.batch["labeled"]["labels"])
  expected = np_terms(f, labels)
  weights = dmacn.term_weights(setup.cfg)
  for phase in ("warmup", "pretrain"):
    loss, aux = loss_of(setup.method, setup.variables, setup.batch, phase)
    active = dmacn.active_terms(phase, setup.cfg)
    np.testing.assert_allclose(
        loss, sum(weights[t] * expected[t] for t in active), rtol=2e-5)
    for t in dmacn.TERMS:
      np.testing.assert_allclose(aux[f"loss_{t}"],
                                 expected[t] if t in active else 0.0,
                                 rtol=2e-5, atol=1e-6, err_msg=f"{phase} {t}")
  # Re-training: eq. 11's classifiers, no L_mv.
  state = dict(setup.variables["state"], gcn_active=jnp.ones(()))
  variables = dict(setup.variables, state=state)
  f = separate_features(setup, variables, use_gcn_rows=True)
  expected = np_terms(f, labels)
  loss, aux = loss_of(setup.method, variables, setup.batch, "retrain")
  active = dmacn.active_terms("retrain", setup.cfg)
  assert "mv" not in active and aux["loss_mv"] == 0.0
  np.testing.assert_allclose(
      loss, sum(weights[t] * expected[t] for t in active), rtol=2e-5)


def test_phases_use_the_terms_of_the_paper(setup):
  cfg = setup.cfg
  assert dmacn.active_terms("warmup", cfg) == ("v_image", "mv", "cr1")
  assert dmacn.active_terms("pretrain", cfg) == dmacn.TERMS
  assert dmacn.active_terms("retrain", cfg) == tuple(
      t for t in dmacn.TERMS if t != "mv")


@pytest.mark.parametrize("switch, removed", [
    ("use_translators", {"sp", "su", "cr2"}),
    ("use_multiview_loss", {"mv"}),
    ("use_coregularization", {"cr1", "cr2"}),
    ("use_imputed_coregularization", {"cr2"}),
    ("use_unlabeled", {"su", "cr1", "cr2"}),
])
def test_each_switch_removes_exactly_its_terms(setup, switch, removed):
  method, _, cfg, _, _ = build(**{switch: False})
  full = set(dmacn.active_terms("pretrain", setup.cfg))
  assert full - set(dmacn.active_terms("pretrain", cfg)) == removed
  # Same init (the switches leave the networks alone), so the losses differ
  # by exactly the removed weighted terms, computed in numpy.
  variables = method.init(jax.random.PRNGKey(0), setup.batch)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(
      setup.variables)):
    np.testing.assert_array_equal(a, b)
  expected = np_terms(separate_features(setup),
                      np.asarray(setup.batch["labeled"]["labels"]))
  weights = dmacn.term_weights(setup.cfg)
  full_loss, _ = loss_of(setup.method, setup.variables, setup.batch,
                         "pretrain")
  batch = setup.batch if switch != "use_unlabeled" else {
      "labeled": setup.batch["labeled"]}          # no unlabeled stream at all
  loss, aux = loss_of(method, variables, batch, "pretrain")
  np.testing.assert_allclose(
      full_loss - loss, sum(weights[t] * expected[t] for t in removed),
      rtol=1e-4, atol=1e-5)
  for t in removed:
    assert aux[f"loss_{t}"] == 0.0


def test_shared_classifiers_one_entry_gradients_from_both_modalities(setup):
  params = setup.variables["params"]
  assert set(params) == set(dmacn.GROUPS)          # no per-modality heads
  assert params["classifier1"]["kernel"].shape == (DIM, C)
  v = setup.variables

  def term(p, name):
    out, _ = dmacn.compute_features(
        setup.model, {"params": p, "batch_stats": v["batch_stats"]},
        setup.batch, (name,), image_key="features",
        nonimage_key="modality2", w0=v["state"]["w0"],
        adjacency=setup.adjacency, use_gcn_rows=False, train=True)
    return dmacn.loss_terms(out, setup.batch["labeled"]["labels"], None,
                            (name,))[name]

  image = jax.grad(term)(params, "v_image")
  nonimage = jax.grad(term)(params, "v_nonimage")
  for head in ("classifier1", "classifier2"):
    for leaf in ("kernel", "bias"):
      assert np.abs(image[head][leaf]).max() > 1e-4
      assert np.abs(nonimage[head][leaf]).max() > 1e-4
  # Each modality's BCE reaches only its own generators.
  assert np.abs(image["g1"]["mlp"]["dense0"]["kernel"]).max() > 0
  assert np.abs(image["g2"]["hidden"]["kernel"]).max() == 0
  assert np.abs(nonimage["g3"]["hidden"]["kernel"]).max() > 0
  assert np.abs(nonimage["g4"]["mlp"]["dense0"]["kernel"]).max() == 0
  # The two views' generators start apart (different random inits).
  assert not np.allclose(params["g2"]["out"]["kernel"],
                         params["g3"]["out"]["kernel"])


# ----------------------------------------------------------------------------
# Phases: trainable sets and learning rates through each phase's optimizer.

def _first_update_scale(tx, params, steps=1):
  """max |update| per group after `steps` Adam steps with a fixed gradient:
  Adam's step is then exactly the learning rate."""
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return {g: max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(
      updates[g])) for g in dmacn.GROUPS}


@pytest.mark.parametrize("overrides, phase, expected", [
    ({}, "warmup", dict(g1=1e-3, g4=1e-3, classifier1=1e-3,
                        classifier2=1e-3)),
    ({}, "pretrain", {g: 1e-3 for g in dmacn.GROUPS if g != "gcn"}),
    ({}, "retrain", dict(gcn=1e-3, g1=1e-4, g4=1e-4, g2=1e-5, g3=1e-5,
                         sft1=1e-5, sft2=1e-5)),
    ({"use_gcn": False}, "retrain", dict(
        classifier1=1e-3, classifier2=1e-3, g1=1e-4, g4=1e-4, g2=1e-5,
        g3=1e-5, sft1=1e-5, sft2=1e-5)),
    ({"use_translators": False}, "pretrain", {
        g: 1e-3 for g in dmacn.GROUPS if g not in ("gcn", "sft1", "sft2")}),
    ({"baseline_only": True}, "baseline", dict(g2=1e-3, classifier1=1e-3)),
])
def test_phase_optimizers_freeze_and_scale_groups(setup, overrides, phase,
                                                  expected):
  method = build(**overrides)[0]
  phases = {p.name: p for p in method.phases}
  scale = _first_update_scale(phases[phase].optimizer,
                              setup.variables["params"])
  for group in dmacn.GROUPS:
    np.testing.assert_allclose(scale[group], expected.get(group, 0.0),
                               rtol=1e-3, err_msg=f"{phase}: {group}")


def test_pretrain_learning_rate_drops_after_its_epochs(setup):
  phases = {p.name: p for p in setup.method.phases}
  tx, params = phases["pretrain"].optimizer, setup.variables["params"]
  drop = PRETRAIN_DROP_EPOCHS * STEPS_PER_EPOCH
  before = _first_update_scale(tx, params, steps=drop)
  after = _first_update_scale(tx, params, steps=drop + 1)
  np.testing.assert_allclose(before["g2"], 1e-3, rtol=1e-3)
  np.testing.assert_allclose(after["g2"], 1e-4, rtol=1e-3)
  assert after["gcn"] == 0.0
  assert [(p.name, p.epochs) for p in setup.method.phases] == [
      ("warmup", 1), ("pretrain", 2), ("retrain", 1)]


def test_hook_freezes_w0_at_the_end_of_pretraining(setup):
  hook, = setup.method.epoch_hooks
  env = types.SimpleNamespace(log=lambda message: None)
  variables = dict(setup.variables, params=jax.tree.map(
      lambda p: p + 1.0, setup.variables["params"]))
  assert float(variables["state"]["gcn_active"]) == 0.0
  unchanged = hook(variables, 1, env)            # pretrain's first epoch
  assert unchanged is variables
  frozen = hook(variables, 2, env)               # warmup 1 + pretrain 2 - 1
  rows = np.asarray(setup.model.apply({"params": variables["params"]},
                                      method=DMACNNets.classifier_rows))
  np.testing.assert_allclose(frozen["state"]["w0"], rows)
  np.testing.assert_allclose(
      rows[0], np.concatenate([variables["params"]["classifier1"]["kernel"].T,
                               variables["params"]["classifier1"]["bias"][
                                   :, None]], axis=1))
  assert float(frozen["state"]["gcn_active"]) == 1.0


@pytest.mark.parametrize("residual", [True, False])
def test_residual_gcn_keeps_predictions_at_the_switch(residual):
  method, _, _, _, _ = build(gcn_residual=residual)
  batch = make_batch()
  variables = method.init(jax.random.PRNGKey(0), batch)
  params = dict(variables["params"])     # rows away from their init, GCN not
  params.update({k: jax.tree.map(lambda p: p + 0.1, v)
                 for k, v in params.items() if k != "gcn"})
  variables = dict(variables, params=params)
  hook, = method.epoch_hooks
  env = types.SimpleNamespace(log=lambda message: None)
  before = np.asarray(method.predict_fn(variables, batch["labeled"]))
  after = np.asarray(method.predict_fn(hook(variables, 2, env),
                                       batch["labeled"]))
  # Residual: W^0 + A ReLU(A W^0 H0) 0 = W^0. Eq. 11: A A W^0 != W^0.
  assert np.allclose(before, after, atol=1e-6) == residual


# ----------------------------------------------------------------------------
# Fig. 3: prediction.

def test_head_probabilities_are_fig3_heads_before_the_average(setup):
  f = separate_features(setup)
  r = f["rows"]
  heads = dmacn.head_probabilities(
      setup.model, setup.variables, setup.batch["labeled"], setup.cfg,
      setup.adjacency, image_key="features", nonimage_key="modality2",
      with_gcn=True)
  assert heads.shape == (2, 2, B, C)
  for h, key in enumerate(("nonimage", "nonimage_to_image")):
    for v in range(2):
      np.testing.assert_allclose(heads[h, v],
                                 np_sigmoid(np_logits(f[key][v], r[v])),
                                 rtol=1e-5)


def test_predict_averages_four_nonimage_heads(setup):
  examples = setup.batch["labeled"]
  f = separate_features(setup)
  r = f["rows"]
  four = [np_sigmoid(np_logits(f["nonimage"][0], r[0])),
          np_sigmoid(np_logits(f["nonimage_to_image"][0], r[0])),
          np_sigmoid(np_logits(f["nonimage"][1], r[1])),
          np_sigmoid(np_logits(f["nonimage_to_image"][1], r[1]))]
  scores = setup.method.predict_fn(setup.variables, examples)
  np.testing.assert_allclose(scores, np.mean(four, axis=0), rtol=1e-5)
  # The image is never read: predictions from x2 alone.
  no_image = {k: v for k, v in examples.items() if k != "features"}
  np.testing.assert_allclose(setup.method.predict_fn(setup.variables,
                                                     no_image), scores)
  # After the hook: the GCN's classifiers.
  state = dict(setup.variables["state"], gcn_active=jnp.ones(()))
  variables = dict(setup.variables, state=state)
  r = np_gcn_rows(variables, np.asarray(setup.adjacency))
  four = [np_sigmoid(np_logits(f[k][v], r[v]))
          for k in ("nonimage", "nonimage_to_image") for v in range(2)]
  np.testing.assert_allclose(setup.method.predict_fn(variables, examples),
                             np.mean(four, axis=0), rtol=1e-4, atol=1e-6)


def test_our_m_adds_image_heads_and_ablations_drop_sft_heads(setup):
  examples = setup.batch["labeled"]
  f = separate_features(setup)
  r = f["rows"]
  heads = lambda keys: np.mean([np_sigmoid(np_logits(f[k][v], r[v]))
                                for k in keys for v in range(2)], axis=0)
  our_m = build(predict_with_image=True)[0]
  np.testing.assert_allclose(
      our_m.predict_fn(setup.variables, examples),
      heads(("nonimage", "nonimage_to_image", "image_to_nonimage")),
      rtol=1e-5)
  plain = build(use_translators=False)[0]
  np.testing.assert_allclose(plain.predict_fn(setup.variables, examples),
                             heads(("nonimage",)), rtol=1e-5)
  baseline = build(baseline_only=True)[0]
  np.testing.assert_allclose(
      baseline.predict_fn(setup.variables, examples),
      np_sigmoid(np_logits(f["nonimage"][0], r[0])), rtol=1e-5)


def test_pretrained_image_backbone_loads_into_both_views(tmp_path):
  """dmacn.pretrained_image fills g1/backbone and g4/backbone."""
  from jaxmlc.models import pretrained
  info = make_info()
  info = DatasetInfo(**{**info.__dict__, "input_kind": "image",
                        "feature_dims": {"modality2": D2}})

  def method_with(**overrides):
    config = make_config(**overrides)
    config.model.backbone, config.model.width = "resnet_tiny", 4
    return dmacn.build(config, info)

  batch = {"labeled": {"image": jnp.zeros((2, 16, 16, 3)),
                       "modality2": jnp.zeros((2, D2))}}
  scratch = method_with().init(jax.random.PRNGKey(0), batch)
  # A "pretrained" ResNet: g4's backbone at init, shifted so it is new.
  weights = {c: jax.tree.map(lambda x: np.asarray(x) + 1.0,
                             scratch[c]["g4"]["backbone"])
             for c in ("params", "batch_stats")}
  path = str(tmp_path / "tiny.msgpack")
  pretrained.save_converted(weights, path)
  method = method_with(pretrained_image=path)
  # Traced as the trainer does (eval_shape, then jit): loading must not
  # need concrete arrays.
  abstract = jax.eval_shape(method.init, jax.random.PRNGKey(0), batch)
  variables = method.init(jax.random.PRNGKey(0), batch)
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  for view in ("g1", "g4"):
    for collection in ("params", "batch_stats"):
      for got, want in zip(
          jax.tree.leaves(variables[collection][view]["backbone"]),
          jax.tree.leaves(weights[collection])):
        np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(variables["params"]["g2"]),
                       jax.tree.leaves(scratch["params"]["g2"])):
    np.testing.assert_array_equal(got, want)      # the rest: unchanged
  assert "project" in variables["params"]["g1"]   # 32 channels -> d = 8


# ----------------------------------------------------------------------------
# Config errors.

def test_config_errors_are_for_people():
  with pytest.raises(ValueError, match="lambda_mv"):
    build(lambda_mvv=1.0)
  config = make_config()
  config.data.unlabeled_batch_size = 0
  with pytest.raises(ValueError, match="use_unlabeled=False"):
    dmacn.build(config, make_info())
  with pytest.raises(ValueError, match="nonimage_key"):
    dmacn.build(make_config(nonimage_key="tags"), make_info())
  with pytest.raises(ValueError, match="Our-m"):
    build(predict_with_image=True, use_translators=False)
  config = make_config()
  config.model.pretrained = "/some/resnet34.pth"
  with pytest.raises(ValueError, match="pretrained_image"):
    dmacn.build(config, make_info())


# ----------------------------------------------------------------------------
# End to end: three phases on the embedded tiny data (pixels, tiny ResNets).

def end_to_end_config(data_dir):
  from tests._configs import tiny_config
  config = tiny_config(data_dir, method="dmacn", steps=0)
  config.data.known_label_proportion = 1.0
  config.data.unlabeled_batch_size = 16
  config.train.log_every = 4
  config.train.checkpoint_every = 0
  config.dmacn = ml_collections.ConfigDict(dict(
      features=16, nonimage_hidden=32, nonimage_bins=(1, 4, 9),
      warmup_epochs=1, pretrain_epochs=2, pretrain_lr_drop_epochs=1,
      retrain_epochs=1, lambda_mv=10.0))
  return config


def test_end_to_end_three_phases(data_dir, tmp_path):
  from jaxmlc import checkpoint, train
  config = end_to_end_config(data_dir)
  workdir = str(tmp_path / "dmacn")
  out = train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "results.json"))
  assert 0.0 <= out["test"]["mAP"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"loss"' in line]
  steps_per_epoch = 256 // 16
  warmup = [r for r in rows if r["step"] <= steps_per_epoch]
  pretrain = [r for r in rows if steps_per_epoch < r["step"]
              <= 3 * steps_per_epoch]
  retrain = [r for r in rows if r["step"] > 3 * steps_per_epoch]
  assert warmup and pretrain and retrain
  assert all(r["loss_v_nonimage"] == 0 and r["loss_sp"] == 0 for r in warmup)
  assert all(r["loss_sp"] > 0 and r["loss_cr2"] > 0 for r in pretrain)
  assert all(r["loss_mv"] == 0 and r["loss_sp"] > 0 for r in retrain)
  assert warmup[-1]["loss"] < warmup[0]["loss"]
  assert pretrain[-1]["loss"] < pretrain[0]["loss"]
  assert pretrain[-1]["loss_sp"] < pretrain[0]["loss_sp"]
  ckpt = checkpoint.Checkpointer(workdir)
  meta = ckpt.read_meta(ckpt.latest_step())
  assert meta["phase"] == "retrain" and meta["step"] == 4 * steps_per_epoch
  # launch/dmacn_heads.py scores each head; their average is the run's.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config_file = tmp_path / "e2e_config.py"
  config_file.write_text(
      f"import sys\nsys.path.insert(0, {repo!r})\n"
      "from tests.test_dmacn import end_to_end_config\n"
      f"def get_config():\n  return end_to_end_config({data_dir!r})\n")
  heads = subprocess.run(
      [sys.executable, os.path.join(repo, "launch", "dmacn_heads.py"),
       f"--config={config_file}", f"--workdir={workdir}"], cwd=repo,
      capture_output=True, text=True, timeout=300)
  assert heads.returncode == 0, heads.stderr[-3000:]
  with open(os.path.join(workdir, "dmacn_heads.json")) as f:
    table = json.load(f)
  assert len(table) == 2 * 2 + 2       # 2 heads x 2 views + 2 averages
  assert abs(table[-1]["mAP"] - out["test"]["mAP"]) < 1e-6
