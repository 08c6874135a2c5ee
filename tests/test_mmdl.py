"""MMDL: EG fusion, similarity heads, triplets, and one real training run."""
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmlc.methods import base, mmdl


# ----------------------------------------------------------------------------
# Exponentiated gradient (eq. 8-11).

def numpy_eg(alpha, s, eta, gamma):
  """The seed's Algorithm 1 update, written out in float64."""
  alpha = np.asarray(alpha, np.float64)
  s = np.asarray(s, np.float64)
  if gamma - alpha @ s <= 0:
    return alpha
  w = alpha * np.exp(eta * s)
  return w / w.sum()


def test_eg_update_stays_on_simplex():
  rng = np.random.default_rng(0)
  cases, n = 64, 7
  alpha = rng.dirichlet(np.ones(n), cases)
  s = rng.uniform(-1, 1, (cases, n)) * rng.choice([1.0, 30.0], (cases, 1))
  eta, gamma = rng.uniform(0.01, 5, cases), rng.uniform(0, 2, cases)
  new = np.asarray(jax.vmap(mmdl.eg_update)(alpha, s, eta, gamma))
  assert np.all(new >= 0)
  np.testing.assert_allclose(new.sum(-1), 1.0, atol=1e-6)
  for i in range(cases):                    # and equals Algorithm 1
    np.testing.assert_allclose(new[i], numpy_eg(alpha[i], s[i], eta[i],
                                                gamma[i]), atol=1e-5)


def test_eg_update_no_change_when_margin_holds():
  alpha = np.array([0.5, 0.3, 0.2], np.float32)
  s = np.array([1.0, 0.5, 0.0], np.float32)  # alpha^T s = 0.65
  np.testing.assert_array_equal(mmdl.eg_update(alpha, s, 1.0, 0.6), alpha)
  # h = max(0, gamma - alpha^T s) = 0 exactly: no update either.
  alpha = np.array([0.5, 0.5], np.float32)
  s = np.array([0.5, 0.5], np.float32)
  np.testing.assert_array_equal(mmdl.eg_update(alpha, s, 2.0, 0.5), alpha)


def test_eg_update_hand_computed():
  # alpha^T s = 0.1 < gamma = 1: update. alpha_0 = e^.4 / (e^.4 + e^-.2)
  # = 1 / (1 + e^-0.6) = 0.645656306..., toward modality 0, which ranks
  # l+ above l- (s_0 > 0) while modality 1 ranks them the wrong way.
  new = np.asarray(mmdl.eg_update([0.5, 0.5], [0.4, -0.2], 1.0, 1.0))
  np.testing.assert_allclose(new, [0.645656306, 0.354343694], atol=1e-6)
  # Three modalities, eta 0.5: weights prop. to (0.2 e^0.3, 0.3 e^-0.1, 0.5).
  new = np.asarray(mmdl.eg_update([0.2, 0.3, 0.5], [0.6, -0.2, 0.0], 0.5, 0.5))
  w = np.array([0.2 * 1.3498588, 0.3 * 0.9048374, 0.5])
  np.testing.assert_allclose(new, w / w.sum(), atol=1e-6)
  assert new[0] > 0.2 and new[1] < 0.3


def test_eg_batch_scan_equals_loop_of_single_updates():
  rng = np.random.default_rng(1)
  n, t = 6, 40
  margins = rng.uniform(-1, 1, (t, n)).astype(np.float32)
  margins[::5] = 0.0                        # invalid triplets: no-ops
  margins[3::7] = 0.9                       # margin already met
  alpha0 = np.full(n, 1.0 / n)
  expected, updated = alpha0, []
  for s in margins:
    updated.append(0.4 - expected @ s > 0)
    expected = numpy_eg(expected, s, 0.3, 0.4)
  got, active = mmdl.eg_update_batch(alpha0, margins, 0.3, 0.4,
                                     return_active=True)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_array_equal(active, updated)
  assert 0 < np.sum(updated) < t
  jitted = jax.jit(lambda a, m: mmdl.eg_update_batch(a, m, 0.3, 0.4))
  np.testing.assert_allclose(jitted(alpha0, margins), expected, atol=1e-5)


# ----------------------------------------------------------------------------
# Similarity heads (eq. 4).

def test_similarity_scores_equal_numpy_formulas():
  rng = np.random.default_rng(2)
  f, b, m, c, d = 2, 3, 3, 4, 5
  phi = rng.normal(size=(f, b, d)).astype(np.float32)
  phi[1, 2] = 0.0                            # a zero embedding
  t = rng.normal(size=(f, m, c, d)).astype(np.float32)
  measures = ("linear", "cosine", "rbf")
  got = np.asarray(mmdl.similarity_scores(phi, t, measures, sigma=2.0))
  assert got.shape == (b, f * m, c)
  for fi in range(f):
    for mi, measure in enumerate(measures):
      for bi in range(b):
        for ci in range(c):
          x, y = phi[fi, bi].astype(np.float64), t[fi, mi, ci]
          if measure == "linear":
            want = x @ y
          elif measure == "cosine":
            nx = np.linalg.norm(x)
            want = 0.0 if nx == 0 else x @ y / (nx * np.linalg.norm(y))
          else:
            want = np.exp(-np.sum((x - y) ** 2) / 8.0)
          np.testing.assert_allclose(got[bi, fi * m + mi, ci], want,
                                     rtol=1e-4, atol=1e-5)
  # A subset of measures keeps its order; gradients are finite at phi = 0.
  got = np.asarray(mmdl.similarity_scores(phi, t[:, :1], ("rbf",), 1.0))
  np.testing.assert_allclose(
      got[0, 0], np.exp(-((phi[0, 0][None] - t[0, 0]) ** 2).sum(-1) / 2),
      rtol=1e-5)
  grad = jax.grad(lambda p: mmdl.similarity_scores(p, t, measures).sum())(phi)
  assert np.all(np.isfinite(grad))


def test_similarity_rejects_unknown_measure():
  with pytest.raises(ValueError, match="euclid"):
    mmdl.similarity_scores(np.zeros((1, 2, 3)), np.zeros((1, 1, 2, 3)),
                           ("euclid",))


def test_finetune_loss_is_sum_of_eq5_6_over_modalities():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 3, 5)) * 3
  targets = (rng.random((4, 5)) < 0.4).astype(np.float32)
  targets[0] = 0                            # a row without positives
  want = 0.0
  for j in range(3):
    z = logits[:, j]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = targets / np.maximum(targets.sum(-1, keepdims=True), 1)
    want += np.mean(-np.sum(q * np.log(p) + (1 - q) * np.log(1 - p), -1))
  got = mmdl.finetune_loss(jnp.asarray(logits, jnp.float32), targets)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_finetune_loss_sample_weights_leave_rows_out():
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(6, 2, 4)), jnp.float32)
  targets = (rng.random((6, 4)) < 0.5).astype(np.float32)
  weight = np.array([1, 0, 1, 1, 0, 0], np.float32)
  kept = weight > 0
  np.testing.assert_allclose(
      mmdl.finetune_loss(logits, targets, weight),
      mmdl.finetune_loss(logits[kept], targets[kept]), rtol=1e-5)
  np.testing.assert_allclose(mmdl.finetune_loss(logits, targets, np.ones(6)),
                             mmdl.finetune_loss(logits, targets), rtol=1e-6)


def test_fusion_holdout_every_kth_index():
  np.testing.assert_array_equal(mmdl.fusion_holdout(np.arange(7), 3),
                                [1, 0, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(mmdl.fusion_holdout(np.arange(3), 0), [1, 1, 1])


# ----------------------------------------------------------------------------
# Thresholds.

def test_choose_thresholds_hand_computed():
  # Class 0: positives 0.9, 0.6; negatives 0.7, 0.2. Cuts (desc 0.9 .7 .6 .2):
  # k=0: 2 errors, k=1: 1, k=2: 2, k=3: 1, k=4: 2 -> first best k=1, theta
  # midway between 0.9 and 0.7 = 0.8.
  # Class 1: perfectly separated at 0.4 | 0.3 -> theta 0.35.
  # Class 2: no positive among known entries -> predict none: theta above
  # the highest known score 0.5: (1 + 0.5) / 2 = 0.75 (0.95 is unknown).
  scores = np.array([[0.9, 0.8, 0.5], [0.7, 0.4, 0.1],
                     [0.6, 0.3, 0.2], [0.2, 0.1, 0.95]], np.float32)
  labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
  np.testing.assert_allclose(mmdl.choose_thresholds(scores, labels, mask),
                             [0.8, 0.35, 0.75], atol=1e-6)
  # Ties: 0.5 (positive), 0.5 (negative) cannot be split; none or both
  # predicted make one error each, the first (none) wins: (1 + 0.5) / 2.
  # A class with nothing known keeps 0.5.
  theta = mmdl.choose_thresholds(np.array([[0.5, 0.2], [0.5, 0.9]]),
                                 np.array([[1, 1], [0, 0]]),
                                 np.array([[1, 0], [1, 0]]))
  np.testing.assert_allclose(theta, [0.75, 0.5], atol=1e-6)


def test_thresholds_minimise_training_errors_against_brute_force():
  rng = np.random.default_rng(6)
  scores = rng.random((40, 5)).round(2)                  # ties included
  labels = (rng.random((40, 5)) < scores).astype(int)
  theta = mmdl.choose_thresholds(scores, labels)
  candidates = np.unique(np.concatenate([scores.ravel(), [0.0, 1.0]]))
  for c in range(5):
    best = min(np.sum((scores[:, c] >= t) != labels[:, c]) for t in
               np.concatenate([candidates, [1.01]]))
    assert np.sum((scores[:, c] >= theta[c]) != labels[:, c]) == best


def test_apply_thresholds_is_monotone_and_moves_theta_to_half():
  theta = np.array([0.2, 0.5, 0.9], np.float32)
  p = np.array([[0.1, 0.1, 0.1], [0.2, 0.5, 0.9], [0.6, 0.75, 0.95]],
               np.float32)
  got = np.asarray(mmdl.apply_thresholds(p, theta))
  # 0.1/0.4 = 0.25, 0.1/1 = 0.1, 0.1/1.8; 0.5 at theta; above:
  # 0.5 + 0.4/1.6 = 0.75, 0.5 + 0.25/1 = 0.75, 0.5 + 0.05/0.2 = 0.75.
  np.testing.assert_allclose(got, [[0.25, 0.1, 0.1 / 1.8], [0.5] * 3,
                                   [0.75] * 3], atol=1e-6)
  grid = np.linspace(0, 1, 101, dtype=np.float32)[:, None].repeat(3, 1)
  mapped = np.asarray(mmdl.apply_thresholds(grid, theta))
  assert np.all(np.diff(mapped, axis=0) > 0) and mapped.min() >= 0
  assert mapped.max() <= 1 + 1e-6
  np.testing.assert_array_equal(mapped >= 0.5, grid >= theta)


# ----------------------------------------------------------------------------
# Triplets and the combination.

def test_sample_triplets_use_known_positives_and_negatives():
  labels = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0]], np.float32)
  mask = np.array([[1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
  rows, pos, neg, valid = map(np.asarray, mmdl.sample_triplets(
      jax.random.PRNGKey(0), labels, mask, 200))
  assert valid.all()
  assert set(rows) == {0, 2}                # row 1 has no negative
  assert np.all(labels[rows, pos] * mask[rows, pos] == 1)
  assert np.all((1 - labels[rows, neg]) * mask[rows, neg] == 1)
  assert set(pos[rows == 0]) == {0} and set(neg[rows == 0]) == {1, 3}
  # No usable row: every triplet invalid, and its margin is 0.
  _, _, _, valid = mmdl.sample_triplets(jax.random.PRNGKey(1),
                                        np.ones((2, 3)), np.ones((2, 3)), 5)
  assert not np.asarray(valid).any()


def test_triplet_margins_hand_computed():
  scores = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 10
  margins = mmdl.triplet_margins(
      scores, np.array([1, 0]), np.array([3, 0]), np.array([0, 2]),
      np.array([True, False]))
  # Row 1: S_j(3) - S_j(0) = 0.3 for every modality; triplet 2 is invalid.
  np.testing.assert_allclose(margins, [[0.3, 0.3, 0.3], [0, 0, 0]], atol=1e-6)


def test_combination_weights_and_scores():
  names = ("image/linear", "image/cosine", "modality2/rbf")
  alpha = np.array([0.2, 0.5, 0.3], np.float32)
  np.testing.assert_allclose(mmdl.combination_weights("eg", alpha, names),
                             alpha)
  np.testing.assert_allclose(mmdl.combination_weights("uniform", alpha, names),
                             [1 / 3] * 3)
  np.testing.assert_allclose(
      mmdl.combination_weights("single:modality2/rbf", alpha, names), [0, 0, 1])
  np.testing.assert_allclose(
      mmdl.combination_weights("single:1", alpha, names), [0, 1, 0])
  with pytest.raises(ValueError, match="single:<j>"):
    mmdl.combination_weights("single:7", alpha, names)
  with pytest.raises(ValueError, match="expected"):
    mmdl.parse_single("best", names)
  p = np.random.default_rng(4).random((2, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(mmdl.combined_scores(p, alpha),
                             np.einsum("bnc,n->bc", p, alpha), rtol=1e-6)


def test_feature_types_follow_the_dataset():
  from jaxmlc.data.info import DatasetInfo

  def info(kind, dims):
    return DatasetInfo(
        name="x", class_names=("a", "b"), input_kind=kind,
        num_examples={"train": 1}, train_labels=np.zeros((1, 2), np.uint8),
        train_label_mask=np.ones((1, 2), np.uint8), feature_dims=dims)

  scenes = info("image", {"modality2": 256, "feat_view2": 64})
  assert mmdl.feature_types_of(scenes) == ("image", "modality2", "feat_view2")
  assert mmdl.feature_types_of(scenes, ("feat_view2",)) == ("feat_view2",)
  nuswide = info("features", {"features": 1134, "feat_wt": 128, "feat_ch": 64,
                              "feat_bow": 500})
  assert mmdl.feature_types_of(nuswide) == ("feat_bow", "feat_ch", "feat_wt")
  with pytest.raises(ValueError, match="not offered"):
    mmdl.feature_types_of(nuswide, ("image",))
  assert mmdl.modality_names(("image", "feat_ch"), ("linear", "rbf")) == (
      "image/linear", "image/rbf", "feat_ch/linear", "feat_ch/rbf")


def _config_module(name):
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", ["mmdl_synthetic", "mmdl_nuswide"])
def test_configs_name_every_key_and_valid_sweep_rows(name):
  module = _config_module(name)
  config = module.get_config()
  assert set(config.mmdl) == set(mmdl.DEFAULTS)
  mmdl.mmdl_config(config)                  # no unknown keys
  rows = module.get_sweeps()["modalities"]["rows"]
  names = [r[1]["mmdl.combine"][len("single:"):] for r in rows[:-2]]
  assert len(names) == len(set(names)) == len(rows) - 2
  assert all(mmdl.parse_single("single:" + n, names) == j
             for j, n in enumerate(names))


def test_nuswide_config_builds_on_feature_vectors():
  """The NUS-WIDE path: only feat_<name> vectors (MLPs, no BatchNorm)."""
  from jaxmlc.data.info import DatasetInfo
  rng = np.random.default_rng(7)
  labels = (rng.random((40, 4)) < 0.3).astype(np.uint8)
  info = DatasetInfo(
      name="nuswide", class_names=tuple("abcd"), input_kind="features",
      num_examples={"train": 40, "test": 8}, train_labels=labels,
      train_label_mask=np.ones_like(labels),
      feature_dims={"features": 20, "feat_ch": 8, "feat_wt": 12})
  config = _config_module("mmdl_nuswide").get_config()
  config.train.global_batch_size = 8
  config.mmdl.embedding_dim, config.mmdl.mlp_hidden = 8, (16,)
  method = base.build(config, info)
  batch = {"labeled": {
      "feat_ch": rng.random((8, 8), np.float32),
      "feat_wt": rng.random((8, 12), np.float32),
      "labels": labels[:8].astype(np.float32),
      "label_mask": np.ones((8, 4), np.float32), "index": np.arange(8)}}
  variables = method.init(jax.random.PRNGKey(0), batch)
  assert variables["params"]["label_embeddings"].shape == (2, 3, 4, 8)
  loss, aux, new_state = jax.jit(method.loss_fn)(
      variables, batch, jax.random.PRNGKey(1), 10_000)
  assert np.isfinite(loss) and set(new_state) == {"batch_stats", "state"}
  assert "alpha_feat_wt_rbf" in aux
  scores = method.predict_fn(variables, batch["labeled"])
  assert scores.shape == (8, 4)
  assert np.all((np.asarray(scores) >= 0) & (np.asarray(scores) <= 1))


def test_config_rejects_unknown_keys():
  c = ml_collections.ConfigDict({"mmdl": {"eg_etta": 0.1}})
  with pytest.raises(ValueError, match="eg_eta"):
    mmdl.mmdl_config(c)


# ----------------------------------------------------------------------------
# End to end: pre-training phase, fine-tuning with EG, on the tiny data.

def tiny_mmdl_config(data_dir):
  from tests._configs import tiny_config
  c = tiny_config(data_dir, method="mmdl", steps=0, epochs=2)
  c.model.backbone = "alexnet8"
  c.data.known_label_proportion = 1.0
  c.optim.lr = 3e-3
  c.train.global_batch_size = 32            # 8 steps an epoch
  c.train.log_every = 4
  c.train.checkpoint_every = 0
  c.mmdl = ml_collections.ConfigDict(dict(
      conv_features=(8, 8, 16, 16, 16), dense_features=32, embedding_dim=16,
      mlp_hidden=(32,), dropout=0.1, pretrain_epochs=1, eg_eta=0.5,
      holdout_every=2))
  return c


def test_end_to_end_tiny_training(data_dir, tmp_path):
  from jaxmlc import train
  config = tiny_mmdl_config(data_dir)
  workdir = str(tmp_path / "mmdl")
  out = train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "results.json"))
  assert 0.0 <= out["test"]["hamming_loss"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  pretrain = [r for r in rows if r.get("dae_image", 0) > 0]
  finetune = [r for r in rows if r.get("loss_ce", 0) > 0]
  assert pretrain and finetune              # both phases ran
  assert pretrain[-1]["loss"] < pretrain[0]["loss"]
  assert finetune[-1]["loss_ce"] < finetune[0]["loss_ce"]
  alphas = [k for k in finetune[-1] if k.startswith("alpha_")
            and k != "alpha_entropy"]
  assert len(alphas) == 9                   # 3 feature types x 3 measures
  alpha = np.array([finetune[-1][k] for k in alphas])
  assert math.isclose(alpha.sum(), 1.0, abs_tol=1e-4)
  assert np.ptp(alpha) > 1e-4               # EG moved away from 1/N
  # alpha and the thresholds of the epoch hook are in the checkpoint.
  state = train.restore_for_inference(config, workdir)[1]["state"]
  thresholds = np.asarray(state["thresholds"])
  assert thresholds.shape == (20,) and np.any(thresholds != 0.5)
  assert math.isclose(float(np.sum(state["alpha"])), 1.0, abs_tol=1e-5)
