"""HST: hand-computed pseudo labels and losses, the SARL model, the method."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlc.config_base import base_config
from jaxmlc.data.info import DatasetInfo
from jaxmlc.methods import hst
from jaxmlc.models import sarl

# ----------------------------------------------------------------------------
# Pure functions.

def inv_sigmoid(p):
  return np.log(p / (1.0 - p))


def test_pair_index_row_major():
  i, j = hst.pair_index(4)
  np.testing.assert_array_equal(i, [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(j, [1, 2, 3, 2, 3, 3])
  assert len(hst.pair_index(80)[0]) == 80 * 79 // 2


def test_ist_pseudo_labels_hand_computed():
  # Pairs (0,1), (0,2), (1,2) co-occur with probabilities 0.8, 0.2, 0.6.
  probs = np.array([0.8, 0.2, 0.6])
  pair_logits = np.tile(inv_sigmoid(probs), (3, 1)).astype(np.float32)
  targets = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], np.float32)
  mask = np.array([[1, 1, 0],      # known: 0 positive, 1 negative
                   [1, 1, 1],      # known: 0, 1 positive
                   [1, 1, 0]], np.float32)   # no known positive
  q = hst.ist_scores(pair_logits, targets, mask)
  np.testing.assert_allclose(q, [[1.0, 0.8, 0.2], [0.9, 0.9, 0.4],
                                 [0.0, 0.0, 0.0]], atol=1e-6)
  r = hst.ist_pseudo_labels(pair_logits, targets, mask, 0.5)
  np.testing.assert_allclose(r, [[0.5, 0.3, 0.0], [0.4, 0.4, 0.0],
                                 [0.0, 0.0, 0.0]], atol=1e-6)


def test_ist_scores_leave_one_out_hand_computed():
  # The same three images: a known positive is scored from the other known
  # positives only; unknown and negative entries keep their IST score.
  probs = np.array([0.8, 0.2, 0.6])
  pair_logits = np.tile(inv_sigmoid(probs), (3, 1)).astype(np.float32)
  targets = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], np.float32)
  mask = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0]], np.float32)
  q = hst.ist_scores_leave_one_out(pair_logits, targets, mask)
  np.testing.assert_allclose(q, [[0.0, 0.8, 0.2],     # lone positive: 0
                                 [0.8, 0.8, 0.4],     # Q_01 for both
                                 [0.0, 0.0, 0.0]], atol=1e-6)


def test_ist_scores_match_dense_co_occurrence_matrix():
  rng = np.random.default_rng(0)
  b, c = 3, 6
  pair_logits = rng.normal(size=(b, c * (c - 1) // 2)).astype(np.float32)
  targets = (rng.random((b, c)) < 0.5).astype(np.float32)
  mask = (rng.random((b, c)) < 0.7).astype(np.float32)
  expected = np.zeros((b, c))
  for n in range(b):
    q = np.eye(c)
    for k, (i, j) in enumerate(zip(*hst.pair_index(c))):
      q[i, j] = q[j, i] = 1 / (1 + np.exp(-pair_logits[n, k]))
    pos = targets[n] * mask[n]
    expected[n] = q @ pos / max(1.0, pos.sum())
  np.testing.assert_allclose(hst.ist_scores(pair_logits, targets, mask),
                             expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      hst.pair_targets(targets, mask),
      (targets * mask)[:, hst.pair_index(c)[0]]
      * (targets * mask)[:, hst.pair_index(c)[1]])


def test_cst_pseudo_labels_hand_computed():
  prototypes = np.array([[[1.0, 0.0], [0.0, 1.0]],      # class 0
                         [[2.0, 0.0], [-3.0, 0.0]]],    # class 1
                        np.float32)
  features = np.array([[[1.0, 0.0], [0.0, 5.0]],
                       [[1.0, 1.0], [4.0, 0.0]]], np.float32)
  similarity = hst.prototype_similarity(features, prototypes)
  np.testing.assert_allclose(similarity, [[0.5, 0.0], [np.sqrt(0.5), 0.0]],
                             atol=1e-6)
  np.testing.assert_allclose(
      hst.cst_pseudo_labels(features, prototypes, 0.2),
      [[0.3, 0.0], [np.sqrt(0.5) - 0.2, 0.0]], atol=1e-6)


def test_complete_targets_only_fills_unknown_entries():
  targets = np.array([[1, 0, 0, 1, 0]], np.float32)
  mask = np.array([[1, 1, 0, 0, 0]], np.float32)
  pseudo = np.array([[0.0, 0.3, 0.5, 0.0, 1.0]], np.float32)
  t, m = hst.complete_targets(targets, mask, pseudo)
  np.testing.assert_array_equal(t, [[1, 0, 1, 1, 1]])   # entry 3 stays unknown
  np.testing.assert_array_equal(m, [[1, 1, 1, 0, 1]])


def test_prototype_loss_hand_computed():
  prototypes = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]], np.float32)
  features = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]], np.float32)
  # d = [1, 0, 1/sqrt 2]: class 0 known positive, 1 known negative, 2 unknown.
  targets = np.array([[1, 0, 1]], np.float32)
  mask = np.array([[1, 1, 0]], np.float32)
  loss = hst.prototype_loss(features, prototypes, targets, mask)
  np.testing.assert_allclose(loss, ((1 - 1.0) + (1 + 0.0)) / 2, atol=1e-6)
  mask = np.array([[1, 1, 1]], np.float32)
  loss = hst.prototype_loss(features, prototypes, targets, mask)
  np.testing.assert_allclose(loss, (0.0 + 1.0 + 1 - np.sqrt(0.5)) / 3,
                             atol=1e-6)
  assert float(hst.prototype_loss(features, prototypes, targets,
                                   np.zeros_like(mask))) == 0.0


def _unit_angles(degrees):
  rad = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(rad), np.sin(rad)], -1).astype(np.float32)


def test_instance_loss_keeps_hardest_twice():
  # One class; images 0, 1 positive, 2 negative: pp (0,1), pn (0,2), (1,2).
  features = _unit_angles([0, 90, 30])[:, None, :]
  targets = np.array([[1], [1], [0]], np.float32)
  mask = np.ones_like(targets)
  d01, d02, d12 = 0.0, np.cos(np.deg2rad(30)), np.cos(np.deg2rad(60))
  # P = 1: both pn entries are drawn (<= 2P), the harder (0,2) again.
  expected = ((1 - d01) + (1 + d02) + (1 + d12) + (1 + d02)) / 4
  for seed in range(3):
    loss = hst.instance_loss(features, targets, mask, jax.random.PRNGKey(seed))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_instance_loss_counts_kept_pairs():
  # Identical features: every pull term is 0 and every push term is 2, so
  # the loss is 2 * kept_other / (P + kept_other) whatever is drawn.
  features = np.ones((6, 2, 3), np.float32)
  targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [1, 1]],
                     np.float32)
  mask = np.ones_like(targets)
  mask[5] = 0.0                 # image 5 is unknown everywhere: no pairs
  mask[:, 1] = 0.0              # class 1 unknown everywhere: no pairs
  # class 0: pp = 1 (P), pn = 2 * 3 = 6, nn = 3. Kept: pn 2 + 1, nn 2 + 1.
  loss = hst.instance_loss(features, targets, mask, jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, 2 * 6 / (1 + 6), rtol=1e-6)
  # P = 0: no balancing, every nn pair kept; nothing known: 0.
  targets[:] = 0.0
  loss = hst.instance_loss(features, targets, mask, jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, 2.0, rtol=1e-6)
  assert float(hst.instance_loss(features, targets, 0 * mask,
                                 jax.random.PRNGKey(0))) == 0.0


def test_instance_loss_jit_matches_eager_and_has_finite_grads():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(8, 4, 5)).astype(np.float32)
  targets = (rng.random((8, 4)) < 0.4).astype(np.float32)
  mask = (rng.random((8, 4)) < 0.8).astype(np.float32)
  key = jax.random.PRNGKey(2)
  eager = hst.instance_loss(features, targets, mask, key)
  jitted = jax.jit(hst.instance_loss)(features, targets, mask, key)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  grads = jax.grad(hst.instance_loss)(features, targets, mask, key)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


@pytest.mark.parametrize("relaxation,learns", [("clip", False),
                                               ("softplus", True)])
def test_threshold_gradients(relaxation, learns):
  rng = np.random.default_rng(3)
  pair_logits = rng.normal(size=(4, 10)).astype(np.float32)
  targets = (rng.random((4, 5)) < 0.5).astype(np.float32)
  mask = (rng.random((4, 5)) < 0.7).astype(np.float32)

  def dtl(theta):   # every q <= 1 < theta: the clip is flat at 0
    r = hst.ist_pseudo_labels(pair_logits, targets, mask, theta,
                              relaxation=relaxation)
    return hst.differential_threshold_loss(r, targets, mask)

  grad = float(jax.grad(dtl)(jnp.float32(1.2)))
  assert np.isfinite(grad) and (grad != 0.0) == learns


def test_dtl_settles_where_half_to_73_percent_of_opened_entries_are_positive():
  # Stationary theta: sum over opened positives of (1 - sigmoid(r)) equals
  # the sum over opened negatives of sigmoid(r); with r in [0, 1] that puts
  # the opened entries' precision in [1 / 2, 1 / (1 + e^-1)] = [0.5, 0.731],
  # even here, where theta in (0.55, 0.6) would separate them perfectly.
  rng = np.random.default_rng(0)
  q = np.concatenate([rng.uniform(0.6, 0.95, 300),
                      rng.uniform(0.0, 0.55, 1700)]).astype(np.float32)
  t = np.concatenate([np.ones(300), np.zeros(1700)]).astype(np.float32)
  q, t, m = q[None], t[None], np.ones_like(t)[None]
  grad = jax.jit(jax.grad(lambda theta: hst.differential_threshold_loss(
      hst.relax_threshold(q, theta), t, m)))
  lo, hi = 0.0, 0.58            # the loss falls as theta rises at lo, not hi
  assert grad(lo) < 0 < grad(hi)
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
  opened = q[0] > hi
  precision = t[0][opened].mean()
  assert 0.5 <= precision <= 1 / (1 + np.exp(-1.0)), precision
  r = q[0][opened] - hi
  sig = 1 / (1 + np.exp(-r))
  np.testing.assert_allclose(np.sum((1 - sig) * t[0][opened]),
                             np.sum(sig * (1 - t[0][opened])), rtol=0.02)


def test_softplus_relaxation_tends_to_clip():
  x = np.linspace(-1.0, 2.0, 31).astype(np.float32)
  smooth = hst.relax_threshold(x, 0.0, "softplus", sharpness=200.0)
  np.testing.assert_allclose(smooth, np.clip(x, 0, 1), atol=5e-3)
  with pytest.raises(ValueError, match="relaxation"):
    hst.relax_threshold(x, 0.0, "sigmoid")


# ----------------------------------------------------------------------------
# Label vectors.

CLASS_NAMES = ("person", "traffic light", "dog", "hair_drier", "car")


def test_word_vectors_from_glove_text_and_npy(tmp_path):
  words = {"person": 1.0, "traffic": 2.0, "light": 4.0, "dog": 5.0,
           "hair": 6.0, "drier": 8.0, "car": 9.0, "unused": 0.0}
  path = tmp_path / "glove.txt"
  path.write_text("".join(f"{w} {v} {-v} 0.5\n" for w, v in words.items()))
  vectors = hst.load_word_vectors(str(path), CLASS_NAMES)
  np.testing.assert_allclose(vectors[:, 0], [1.0, 3.0, 5.0, 7.0, 9.0])
  assert vectors.shape == (5, 3)
  np.save(tmp_path / "v.npy", vectors)
  np.testing.assert_array_equal(
      hst.load_word_vectors(str(tmp_path / "v.npy"), CLASS_NAMES), vectors)
  with pytest.raises(ValueError, match="expected word vectors"):
    hst.load_word_vectors(str(tmp_path / "v.npy"), CLASS_NAMES[:3])
  with pytest.raises(ValueError, match="zebra"):
    hst.load_word_vectors(str(path), ("dog", "zebra"))
  with pytest.raises(FileNotFoundError, match="word_vectors"):
    hst.load_word_vectors(str(tmp_path / "none.txt"), CLASS_NAMES)


def test_graph_label_embeddings_fit_the_graph():
  a = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.1], [0.0, 0.1, 1.0]])
  e = hst.graph_label_embeddings(a, dim=8, steps=300)
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  np.testing.assert_allclose(unit @ unit.T, a, atol=0.05)
  np.testing.assert_array_equal(e, hst.graph_label_embeddings(a, 8, 300))


# ----------------------------------------------------------------------------
# Model and method (tiny shapes).

NUM_CLASSES, BATCH, IMAGE = 5, 4, 64


def _config(**hst_overrides):
  c = base_config()
  c.method = "hst"
  c.data.known_label_proportion = 0.5
  c.data.image_size = IMAGE
  c.model.backbone = "resnet_tiny"
  c.model.width = 8
  c.model.feature_dim = 16
  c.model.attention_dim = 8
  c.model.output_dim = 16
  c.model.gnn_steps = 2
  c.model.word_vectors = ""
  c.optim.lr = 1e-2
  c.train.global_batch_size = BATCH
  c.hst = dict(pseudo_label_epoch=1, prototype_every=2, num_prototypes=2,
               kmeans_iters=5, label_embedding_steps=20, **hst_overrides)
  return c


def _info(n=16):
  rng = np.random.default_rng(0)
  labels = (rng.random((n, NUM_CLASSES)) < 0.4).astype(np.uint8)
  labels[:, 0] = 1     # a frequent class
  return DatasetInfo(name="fake", class_names=CLASS_NAMES, input_kind="image",
                     num_examples={"train": n, "test": 8},
                     train_labels=labels,
                     train_label_mask=np.ones_like(labels), image_size=IMAGE)


def _batch(seed=0, b=BATCH):
  rng = np.random.default_rng(seed)
  labels = (rng.random((b, NUM_CLASSES)) < 0.5).astype(np.float32)
  labels[:, 0] = 1.0
  return {"labeled": {
      "image": rng.normal(size=(b, IMAGE, IMAGE, 3)).astype(np.float32),
      "labels": labels,
      "label_mask": (rng.random((b, NUM_CLASSES)) < 0.6).astype(np.float32),
      "index": np.arange(b, dtype=np.int32)}}


def _grad_fn(method):
  """jit((variables, batch, step) -> (loss, aux, new_state, grads))."""
  @jax.jit
  def run(variables, batch, step):
    def f(params):
      loss, aux, new = method.loss_fn({**variables, "params": params}, batch,
                                      jax.random.PRNGKey(1), step)
      return loss, (aux, new)
    (loss, (aux, new)), grads = jax.value_and_grad(f, has_aux=True)(
        variables["params"])
    return loss, aux, new, grads
  return run


@pytest.fixture(scope="module")
def method():
  return hst.build(_config(threshold_relaxation="softplus"), _info())


@pytest.fixture(scope="module")
def variables(method):
  return jax.jit(method.init)(jax.random.PRNGKey(0), _batch())


@pytest.fixture(scope="module")
def grad_fn(method):
  return _grad_fn(method)


def test_init_layout(method, variables):
  params = variables["params"]
  assert set(variables) == {"params", "batch_stats", "state"}
  assert {"stem", "layer4"} <= set(params["backbone"])
  assert float(params["thresholds"]["ist"]) == 1.0
  state = variables["state"]
  assert state["prototypes"].shape == (NUM_CLASSES, 2, 16)
  assert state["prototype_valid"].shape == (NUM_CLASSES,)
  assert float(state["prototypes_ready"]) == 0.0


def test_pair_head_order_matches_pair_index():
  head = sarl.PairHead(NUM_CLASSES, attention_dim=4, output_dim=6)
  s = np.random.default_rng(0).normal(size=(2, NUM_CLASSES, 3))
  params = head.init(jax.random.PRNGKey(0), s)
  bumped = s.copy()
  bumped[:, 2] += 1.0
  changed = np.any(np.asarray(head.apply(params, s))
                   != np.asarray(head.apply(params, bumped)), axis=0)
  i, j = hst.pair_index(NUM_CLASSES)
  np.testing.assert_array_equal(changed, (i == 2) | (j == 2))


def _ready(variables, seed=1):
  """Variables with random prototypes for every class."""
  protos = np.random.default_rng(seed).normal(
      size=variables["state"]["prototypes"].shape).astype(np.float32)
  return {**variables, "state": {"prototypes": jnp.asarray(protos),
                                 "prototype_valid": jnp.ones((NUM_CLASSES,)),
                                 "prototypes_ready": jnp.ones(())}}


def test_loss_fn_jit_finite_grads_and_schedule(variables, grad_fn):
  ready = _ready(variables)
  # Steps per epoch = 16 // 4 = 4: epoch 0 is steps 0..3.
  for step, on in ((2, 0.0), (4, 1.0), (9, 1.0)):
    loss, aux, new, grads = grad_fn(ready, _batch(), jnp.int32(step))
    assert np.isfinite(float(loss))
    assert float(aux["pseudo_labels_on"]) == on
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert set(new) == {"batch_stats", "state"}
    ramp = min(step / 4, 1.0)
    expected = (aux["loss_bce"] + 10.0 * ramp * aux["loss_cooc"]
                + 0.05 * ramp * aux["loss_instance"])
    if on:
      expected += (aux["loss_bce_ist"] + aux["loss_bce_cst"]
                   + 0.1 * aux["loss_dtl_ist"] + 0.1 * aux["loss_dtl_cst"]
                   + 0.05 * aux["loss_prototype"])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    theta_grad = abs(float(grads["thresholds"]["ist"]))
    assert (theta_grad > 0) == bool(on)     # softplus DTL only once on
  # Before prototypes exist CST stays off even after the switch.
  _, aux, _, _ = grad_fn(variables, _batch(), jnp.int32(9))
  assert float(aux["cst_fill_rate"]) == 0.0
  assert float(aux["loss_bce_cst"]) == float(aux["loss_bce"])


def test_predict_fn_shapes(method, variables):
  scores = jax.jit(method.predict_fn)(variables, _batch(2)["labeled"])
  assert scores.shape == (BATCH, NUM_CLASSES)
  assert np.all((np.asarray(scores) > 0) & (np.asarray(scores) < 1))


class _Env:
  def __init__(self, batches):
    self.batches, self.rng, self.messages = batches, jax.random.PRNGKey(5), []

  def train_batches(self):
    return iter(self.batches)

  def log(self, msg):
    self.messages.append(msg)


def test_prototype_hook(method, variables, grad_fn):
  batches = [_batch(3), _batch(4)]
  batches[1]["labeled"]["valid"] = np.array([1, 1, 0, 0], np.float32)
  env = _Env(batches)
  hook = method.epoch_hooks[0]
  # pseudo_label_epoch=1, prototype_every=2: due before epochs 1, 3, 5.
  assert hook(variables, 1, env) is variables
  out = hook(variables, 0, env)
  state = out["state"]
  assert float(state["prototypes_ready"]) == 1.0
  pos = np.concatenate([b["labeled"]["labels"] * b["labeled"]["label_mask"]
                        for b in batches])[:6]
  np.testing.assert_array_equal(state["prototype_valid"], pos.sum(0) > 0)
  protos = np.asarray(state["prototypes"])
  assert np.all(np.isfinite(protos))
  assert np.all((np.abs(protos).sum((1, 2)) > 0) == (pos.sum(0) > 0))
  assert env.messages and "k-means" in env.messages[0]
  # The hook's prototypes feed the next loss (CST on, same compiled step).
  loss, aux, _, _ = grad_fn(out, _batch(), jnp.int32(4))
  assert np.isfinite(float(loss)) and float(aux["loss_prototype"]) > 0


def test_a_few_steps_reduce_the_loss(method, variables, grad_fn):
  batch, tx = _batch(7), method.optimizer
  params = variables["params"]
  opt_state = tx.init(params)
  update = jax.jit(tx.update)
  current, losses_seen = _ready(variables), []
  for _ in range(6):
    loss, _, new, grads = grad_fn(current, batch, jnp.int32(8))
    updates, opt_state = update(grads, opt_state, current["params"])
    params = jax.tree.map(jnp.add, current["params"], updates)
    current = {**current, **new, "params": params}
    losses_seen.append(float(loss))
  assert losses_seen[-1] < losses_seen[0], losses_seen


def test_ablation_without_sarl_and_dtl():
  method = hst.build(_config(use_sarl=False, use_dtl=False), _info())
  variables = _ready(jax.jit(method.init)(jax.random.PRNGKey(0), _batch()))
  assert "decoupling" not in variables["params"]
  assert "head" in variables["params"]
  loss, aux, _, grads = _grad_fn(method)(variables, _batch(), jnp.int32(6))
  assert np.isfinite(float(loss)) and float(aux["loss_bce_ist"]) > 0
  updates, _ = jax.jit(method.optimizer.update)(
      grads, method.optimizer.init(variables["params"]), variables["params"])
  assert float(updates["thresholds"]["ist"]) == 0.0     # frozen without DTL
  assert float(jnp.abs(updates["ist_head"]["pair_proj"]["kernel"]).sum()) > 0


def test_thresholds_get_no_weight_decay():
  # Coupled decay through Adam would move a threshold whose loss gradient is
  # zero by a full lr step per step; the threshold group has no decay.
  c = _config()
  c.optim.weight_decay = 0.1
  method = hst.build(c, _info())
  params = jax.jit(method.init)(jax.random.PRNGKey(0), _batch())["params"]
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = method.optimizer.update(grads, method.optimizer.init(params),
                                       params)
  assert float(updates["thresholds"]["ist"]) == 0.0
  assert float(updates["thresholds"]["cst"]) == 0.0
  assert float(jnp.abs(updates["backbone"]["stem"]["conv"]["kernel"]).sum()) > 0


def test_cooc_known_pairs_only_and_isolated_aux_heads():
  ready = {}
  for known_only in (False, True):
    c = _config(cooc_known_pairs_only=known_only, use_sarl=False)
    c.model.isolate_aux = True
    method = hst.build(c, _info())
    variables = _ready(jax.jit(method.init)(jax.random.PRNGKey(0), _batch()))
    loss, aux, _, grads = _grad_fn(method)(variables, _batch(), jnp.int32(2))
    ready[known_only] = float(aux["loss_cooc"])
    # L_cooc alone: its gradient reaches the pair head, never the backbone.
    def cooc(params):
      return method.loss_fn({**variables, "params": params}, _batch(),
                            jax.random.PRNGKey(1), 2)[1]["loss_cooc"]
    g = jax.grad(cooc)(variables["params"])
    assert all(float(jnp.abs(x).sum()) == 0
               for x in jax.tree.leaves(g["backbone"]))
    assert float(jnp.abs(g["ist_head"]["pair_proj"]["kernel"]).sum()) > 0
  # Fewer entries (pairs with an unknown label dropped): a different mean.
  assert ready[True] != ready[False]


def test_without_sarl_hst_starts_and_trains_as_the_baseline():
  # The vs_baseline rows are paired: one seed gives HST (use_sarl=False) the
  # baseline's initial backbone and head, and before pseudo_label_epoch
  # (aux heads isolated) the same gradients, so only HST's terms part them.
  from jaxmlc.methods import baseline
  c = _config(use_sarl=False)
  c.model.isolate_aux = True
  b = _config()
  b.method = "baseline"
  methods = {"hst": hst.build(c, _info()), "baseline": baseline.build(b, _info())}
  key, batch = jax.random.PRNGKey(3), _batch()
  variables = {name: m.init(key, batch) for name, m in methods.items()}
  params = {name: v["params"] for name, v in variables.items()}
  grads = {name: _grad_fn(m)(variables[name], batch, jnp.int32(0))[3]
           for name, m in methods.items()}
  for part in ("backbone", "head"):
    for tree in (params, grads):
      h, base = tree["hst"][part], tree["baseline"][part]
      assert jax.tree.structure(h) == jax.tree.structure(base)
      for x, y in zip(jax.tree.leaves(h), jax.tree.leaves(base)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # From pseudo_label_epoch on the completed-target BCE terms add in.
  late = _grad_fn(methods["hst"])(_ready(variables["hst"]), batch,
                                  jnp.int32(12))[3]
  assert not np.allclose(late["head"]["kernel"],
                         grads["baseline"]["head"]["kernel"])


def test_hst_configs_carry_every_key():
  # `--config.hst.KEY=...` works only for keys the config file sets.
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name in ("hst_coco", "hst_voc2007", "hst_vg200", "hst_synthetic"):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(root, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.get_config().hst) == set(hst.DEFAULTS), name


def test_hst_synthetic_long_doubles_the_schedule():
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "hst_synthetic", os.path.join(root, "configs", "hst_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  short, long = module.get_config(), module.get_config("long,0.4")
  assert (short.train.epochs, long.train.epochs) == (8, 16)
  assert long.optim.decay_every_epochs == 12
  assert (long.hst.pseudo_label_epoch, long.hst.prototype_every) == (6, 3)
  assert long.data.known_label_proportion == 0.4


def test_baseline_synthetic_shares_hst_synthetics_recipe():
  # The issue compares HST with baseline_synthetic: same data (crops
  # included), backbone, batch and steps; only the lr schedule differs.
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  configs = {}
  for name in ("hst_synthetic", "baseline_synthetic"):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(root, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    configs[name] = module.get_config()
  h, b = configs["hst_synthetic"], configs["baseline_synthetic"]
  assert h.data.to_dict() == b.data.to_dict()
  assert tuple(h.data.crop_scales) == (1.0, 0.875, 0.75)
  for section, ignored in (("train", {"checkpoint_every"}),
                           ("optim", {"schedule", "decay_every_epochs"}),
                           ("model", set())):
    keys = (set(b[section]) & set(h[section])) - ignored
    assert {k: h[section][k] for k in keys} == {
        k: b[section][k] for k in keys}, section


def test_config_errors():
  with pytest.raises(ValueError, match="pseudo_label_epoch"):
    hst.hst_config(_config(pseudo_labels_epoch=3))
  with pytest.raises(ValueError, match="threshold_relaxation"):
    hst.hst_config(_config(threshold_relaxation="hard"))


def test_label_vector_sources(tmp_path, monkeypatch):
  info, cfg = _info(), hst.hst_config(_config())
  known = np.ones_like(info.train_labels)
  c = _config()
  vectors, source = hst.label_vectors_for(c, info, known, cfg)
  assert vectors.shape[0] == NUM_CLASSES and "ASGE" in source
  np.save(tmp_path / "w.npy", np.ones((NUM_CLASSES, 7), np.float32))
  c.model.word_vectors = str(tmp_path / "w.npy")
  vectors, source = hst.label_vectors_for(c, info, known, cfg)
  assert vectors.shape == (NUM_CLASSES, 7) and "w.npy" in source
  # Without the ASGE method the fallback fits embeddings to the graph.
  import types
  monkeypatch.setitem(__import__("sys").modules, "jaxmlc.methods.asge",
                      types.ModuleType("jaxmlc.methods.asge"))
  c.model.word_vectors = ""
  vectors, source = hst.label_vectors_for(c, info, known, cfg)
  assert vectors.shape == (NUM_CLASSES, 256) and "fallback" in source


def test_end_to_end_tiny_training(data_dir, tmp_path):
  """Two epochs on the tiny embedded split: prototypes, pseudo labels, eval."""
  import json
  from _configs import tiny_config
  from jaxmlc import train
  c = tiny_config(data_dir, method="hst", steps=0, epochs=2, log_every=4,
                  checkpoint_every=0)
  for key, value in dict(feature_dim=16, attention_dim=8, output_dim=16,
                         gnn_steps=2, word_vectors="").items():
    c.model[key] = value
  c.hst = dict(pseudo_label_epoch=1, prototype_every=1, num_prototypes=3,
               kmeans_iters=5, label_embedding_steps=50)
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(c, workdir)
  assert 0.0 <= out["test"]["mAP"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"loss_bce"' in line]
  assert rows[-1]["loss_bce"] < rows[0]["loss_bce"]
  assert rows[0]["pseudo_labels_on"] == 0.0 and rows[-1]["pseudo_labels_on"]
  _, variables, _ = train.restore_for_inference(c, workdir)
  assert float(variables["state"]["prototypes_ready"]) == 1.0
  assert float(np.abs(variables["state"]["prototypes"]).sum()) > 0
