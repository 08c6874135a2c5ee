"""jaxmlc.losses against hand-computed values and numpy re-derivations.

The numpy references are written straight from the equations in
specs/core_math.md, in float64, with the naive (unstable) formulas: on the
moderate inputs used here they are exact, which is what makes them an
independent check of the stable forms.
"""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxmlc import losses

LOG2 = math.log(2.0)
NAMES = ("partial_bce", "batch_balanced_bce", "frequency_weighted_bce",
         "js_coregularization", "orthogonality_loss", "translation_loss",
         "cycle_consistency_loss", "asge_loss", "normalized_target_ce",
         "asymmetric_loss")
# Jitted once: eager JAX compiles every primitive per shape, which makes
# op-by-op tests slow. test_jit_matches_eager covers the eager path.
L = types.SimpleNamespace(**{n: jax.jit(getattr(losses, n)) for n in NAMES})


def _value_and_grad(fn, *args):
  return jax.jit(jax.value_and_grad(fn))(*args)


def _values_and_grads(fns, x):
  """[(value, grad)] of each fn at x, in one compilation."""
  return jax.jit(lambda z: [jax.value_and_grad(f)(z) for f in fns])(x)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _bce(x, t):
  p = _sigmoid(x)
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _entropy(p):
  return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _data(seed=0, shape=(4, 5)):
  rng = np.random.default_rng(seed)
  logits = 2.0 * rng.normal(size=shape)
  targets = (rng.random(shape) < 0.4).astype(np.float64)
  mask = (rng.random(shape) < 0.7).astype(np.float64)
  return logits, targets, mask


# ------------------------------------------------------ numpy references ---

def _ref_partial_bce(x, t, m):
  return (m * _bce(x, t)).sum() / max(1.0, m.sum())


def _ref_batch_balanced(x, t, m, w=None):
  positives, negatives = (m * t).sum(), (m * (1 - t)).sum()
  wp = (positives + negatives + 1) / (positives + 1)
  wn = (positives + negatives + 1) / (negatives + 1)
  w = np.ones(x.shape[0]) if w is None else w
  per_entry = -(wp * m * t * np.log(_sigmoid(x))
                + wn * m * (1 - t) * np.log(1 - _sigmoid(x)))
  return (w[:, None] * per_entry).sum() / x.shape[0]


def _ref_frequency_weighted(x, t, freq, beta, m):
  w = t * np.exp(beta * (1 - freq)) + (1 - t) * np.exp(beta * freq)
  return (m * w * _bce(x, t)).sum() / x.shape[0]


def _ref_js(l1, l2):
  p1, p2 = _sigmoid(l1), _sigmoid(l2)
  return np.mean(_entropy((p1 + p2) / 2) - (_entropy(p1) + _entropy(p2)) / 2)


def _ref_cosines(w1, w2):
  return (w1 * w2).sum(1) / (np.linalg.norm(w1, axis=1)
                             * np.linalg.norm(w2, axis=1))


def _ref_asge(e, a, alpha=None):
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  s = unit @ unit.T
  sigma = np.ones_like(a)
  if alpha is not None:
    sigma[(a < alpha) & (s < alpha)] = 0
  return (sigma * (s - a) ** 2).sum()


def _ref_normalized_target_ce(x, t):
  p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
  row = t.sum(1, keepdims=True)
  q = np.where(row > 0, t / np.where(row > 0, row, 1), 0)
  return np.mean(-(q * np.log(p) + (1 - q) * np.log(1 - p)).sum(1))


def _ref_asl(x, t, gamma_pos, gamma_neg, clip, m):
  p = _sigmoid(x)
  p_neg = np.minimum(1 - p + clip, 1)
  loss = -(t * (1 - p) ** gamma_pos * np.log(p)
           + (1 - t) * (1 - p_neg) ** gamma_neg * np.log(p_neg))
  return (m * loss).sum() / max(1.0, m.sum())


# ------------------------------------------------------- hand-computed -----

def test_partial_bce_hand():
  # Only (0, 0) is known: BCE(0, 1) = log 2, one known entry.
  loss = L.partial_bce(np.array([[0.0, 2.0]]), np.array([[1.0, 0.0]]),
                            np.array([[1.0, 0.0]]))
  np.testing.assert_allclose(loss, LOG2, rtol=1e-6)


def test_batch_balanced_bce_hand():
  # P = 1, N = 3: wp = 5/2, wn = 5/4; every log term is log 1/2; B = 2.
  loss = L.batch_balanced_bce(np.zeros((2, 2)),
                                   np.array([[1.0, 0.0], [0.0, 0.0]]))
  np.testing.assert_allclose(loss, (2.5 + 3 * 1.25) * LOG2 / 2, rtol=1e-6)


def test_orthogonality_hand():
  w1 = np.array([[1.0, 0.0], [1.0, 1.0]])
  w2 = np.array([[0.0, 1.0], [-1.0, -1.0]])  # cosines 0 and -1
  np.testing.assert_allclose(L.orthogonality_loss(w1, w2), -0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(L.orthogonality_loss(w1, w2, absolute=True),
                             0.5, rtol=1e-6)


def test_translation_and_cycle_hand():
  pred = np.array([[3.0, 4.0], [1.0, 1.0]])
  target = np.array([[0.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(L.translation_loss(pred, target), 2.5)
  np.testing.assert_allclose(L.cycle_consistency_loss(target, pred), 2.5)


def test_asge_hand_and_relaxation():
  embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  r = 1 / math.sqrt(2)                       # cos of rows 0/1 with row 2
  adjacency = np.array([[1.0, 0.05, 0.5], [0.05, 1.0, 0.5], [0.5, 0.5, 1.0]])
  strong = 4 * (r - 0.5) ** 2                # 4 off-diagonal 0.5 entries
  weak = 2 * 0.05 ** 2                       # S = 0 vs A = 0.05, twice
  np.testing.assert_allclose(L.asge_loss(embeddings, adjacency),
                             strong + weak, rtol=1e-5)
  # alpha = 0.1: (0, 1) has A and S below alpha -> relaxed away.
  np.testing.assert_allclose(L.asge_loss(embeddings, adjacency, 0.1),
                             strong, rtol=1e-5)
  # A below alpha but S = 0.707 above it: still fitted.
  low_edge = adjacency.copy()
  low_edge[0, 2] = low_edge[2, 0] = 0.05
  expected = 2 * (r - 0.5) ** 2 + 2 * (r - 0.05) ** 2
  np.testing.assert_allclose(L.asge_loss(embeddings, low_edge, 0.1),
                             expected, rtol=1e-5)


# ------------------------------------------------- numpy re-derivations ----

def test_partial_bce_matches_numpy():
  x, t, m = _data()
  np.testing.assert_allclose(L.partial_bce(x, t, m),
                             _ref_partial_bce(x, t, m), rtol=1e-5)
  np.testing.assert_allclose(L.partial_bce(x, t),
                             _ref_partial_bce(x, t, np.ones_like(x)),
                             rtol=1e-5)


def test_batch_balanced_bce_matches_numpy():
  x, t, m = _data(1)
  np.testing.assert_allclose(L.batch_balanced_bce(x, t, m),
                             _ref_batch_balanced(x, t, m), rtol=1e-5)
  w = np.array([1.0, 0.5, 0.0, 2.0])
  np.testing.assert_allclose(
      L.batch_balanced_bce(x, t, m, sample_weight=w),
      _ref_batch_balanced(x, t, m, w), rtol=1e-5)
  # sample_weight=None is exactly eq. 9, i.e. weights of one.
  np.testing.assert_allclose(
      L.batch_balanced_bce(x, t, m, sample_weight=np.ones(4)),
      L.batch_balanced_bce(x, t, m), rtol=1e-6)


def test_frequency_weighted_bce_matches_numpy():
  x, t, m = _data(2)
  freq = np.array([0.01, 0.1, 0.3, 0.5, 0.9])
  for beta in (0.0, 0.4, 2.0):
    np.testing.assert_allclose(
        L.frequency_weighted_bce(x, t, freq, beta, mask=m),
        _ref_frequency_weighted(x, t, freq, beta, m), rtol=1e-5)


def test_frequency_weighted_beta_zero_is_plain_bce():
  x, t, _ = _data(3)
  x, t = x.astype(np.float32), t.astype(np.float32)
  plain = optax.sigmoid_binary_cross_entropy(x, t).sum() / x.shape[0]
  np.testing.assert_allclose(
      L.frequency_weighted_bce(x, t, np.full(5, 0.2), 0.0), plain,
      rtol=1e-5)


def test_js_matches_numpy():
  x1, _, _ = _data(4)
  x2, _, _ = _data(5)
  value = L.js_coregularization(x1, x2)
  np.testing.assert_allclose(value, _ref_js(x1, x2), rtol=1e-4)
  np.testing.assert_allclose(L.js_coregularization(x2, x1), value,
                             rtol=1e-6)
  assert value > 0


def test_orthogonality_matches_numpy():
  w1, w2, _ = _data(6, (6, 4))
  cos = _ref_cosines(w1, w2)
  np.testing.assert_allclose(L.orthogonality_loss(w1, w2), cos.mean(),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(L.orthogonality_loss(w1, w2, absolute=True),
                             np.abs(cos).mean(), rtol=1e-5)


def test_translation_matches_numpy():
  a, b, _ = _data(7, (3, 6))
  expected = np.linalg.norm(a - b, axis=1).mean()
  np.testing.assert_allclose(L.translation_loss(a, b), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(L.cycle_consistency_loss(a, b), expected,
                             rtol=1e-5)


def test_asge_matches_numpy():
  e, _, _ = _data(8, (5, 3))
  a = np.random.default_rng(8).random((5, 5))
  a = (a + a.T) / 2
  for alpha in (None, 0.1, 0.5):
    np.testing.assert_allclose(L.asge_loss(e, a, alpha),
                               _ref_asge(e, a, alpha), rtol=1e-5)


def test_normalized_target_ce_matches_numpy():
  x, t, _ = _data(9)
  t[0] = 0.0                                  # a row with no positive
  np.testing.assert_allclose(L.normalized_target_ce(x, t),
                             _ref_normalized_target_ce(x, t), rtol=1e-5)


def test_asymmetric_loss_matches_numpy():
  x, t, m = _data(10)
  for gamma_pos, gamma_neg, clip in ((1, 4, 0.05), (0, 2, 0.1), (2, 1, 0.0)):
    np.testing.assert_allclose(
        L.asymmetric_loss(x, t, gamma_pos, gamma_neg, clip, mask=m),
        _ref_asl(x, t, gamma_pos, gamma_neg, clip, m), rtol=1e-5)


def test_asymmetric_loss_without_focusing_is_partial_bce():
  x, t, m = _data(11)
  np.testing.assert_allclose(
      L.asymmetric_loss(x, t, gamma_pos=0, gamma_neg=0, clip=0, mask=m),
      L.partial_bce(x, t, m), rtol=1e-5)


# ---------------------------------------------------------- edge cases -----

def test_nothing_known_gives_zero_and_finite_gradients():
  x, t, _ = _data(12)
  nothing = np.zeros_like(x)
  fns = [lambda z, loss=loss: loss(z, t, mask=nothing)
         for loss in (losses.partial_bce, losses.batch_balanced_bce,
                      losses.asymmetric_loss)]
  for value, grad in _values_and_grads(fns, x):
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_rows_with_nothing_known_drop_out():
  # Means over known entries: an all-unknown row changes neither the value
  # nor the other rows, and gets no gradient.
  x, t, m = _data(14)
  m[0] = 0.0
  for name in ("partial_bce", "asymmetric_loss"):
    loss = getattr(L, name)
    np.testing.assert_allclose(loss(x, t, mask=m),
                               loss(x[1:], t[1:], mask=m[1:]), rtol=1e-6)
    _, grad = _value_and_grad(lambda z: loss(z, t, mask=m), x)
    np.testing.assert_array_equal(grad[0], 0.0)
    assert np.any(grad[1:] != 0.0)


def test_js_identical_inputs_is_zero():
  x, _, _ = _data(13)
  assert abs(float(L.js_coregularization(x, x))) < 1e-6
  _, grad = _value_and_grad(L.js_coregularization, x, x)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_saturated_logits_stay_finite():
  # sigmoid/softmax round to exactly 0 or 1 here in float32.
  x = np.array([[100.0, -100.0, 0.0], [-60.0, 60.0, 30.0]])
  t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
  cases = {
      "partial_bce": lambda z: losses.partial_bce(z, t),
      "batch_balanced_bce": lambda z: losses.batch_balanced_bce(z, t),
      "frequency_weighted_bce": lambda z: losses.frequency_weighted_bce(
          z, t, np.full(3, 0.3), 0.4),
      "asymmetric_loss": lambda z: losses.asymmetric_loss(z, t),
      "asymmetric_loss clip=0": lambda z: losses.asymmetric_loss(z, t,
                                                                 clip=0.0),
      "js_coregularization": lambda z: losses.js_coregularization(z, -z),
      "normalized_target_ce": lambda z: losses.normalized_target_ce(z, t),
  }
  results = _values_and_grads(list(cases.values()),
                              jnp.asarray(x, jnp.float32))
  for name, (value, grad) in zip(cases, results):
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name


def test_normalized_target_ce_dominant_class_and_empty_row():
  # p = 1 - 1e-44 for the positive: log(1 - p) must not become log 0.
  x = np.array([[100.0, 0.0, 0.0], [1.0, 2.0, 3.0]], np.float32)
  t = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  value, grad = _value_and_grad(L.normalized_target_ce, x, t)
  # Row 0 costs ~0; row 1 (q = 0) is -sum_k log(1 - p_k).
  np.testing.assert_allclose(value, _ref_normalized_target_ce(
      x[1:].astype(np.float64), t[1:]) / 2, rtol=1e-5)
  assert np.all(np.isfinite(grad))


def test_zero_vectors_have_finite_gradients():
  zero, ones = jnp.zeros((2, 3)), jnp.ones((2, 3))
  fns = [lambda a: losses.orthogonality_loss(a, ones),
         lambda a: losses.orthogonality_loss(a, ones, absolute=True),
         lambda a: losses.translation_loss(a, zero),
         lambda a: losses.cycle_consistency_loss(a, zero),
         lambda a: losses.asge_loss(a, jnp.eye(2), 0.1)]
  for value, grad in _values_and_grads(fns, zero):
    assert np.isfinite(value)
    np.testing.assert_array_equal(grad, 0.0)


def test_asl_clip_discards_easy_negatives():
  # p = s(-5) < clip = 0.05: the negative's shifted probability is 0.
  x = np.array([[-5.0]])
  t = np.array([[0.0]])
  value, grad = _value_and_grad(L.asymmetric_loss, x, t)
  assert float(value) == 0.0 and float(grad[0, 0]) == 0.0


def test_bad_shapes_raise_helpful_errors():
  with pytest.raises(ValueError, match="targets has shape"):
    losses.partial_bce(np.zeros((2, 3)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match="sample_weight"):
    losses.batch_balanced_bce(np.zeros((2, 3)), np.zeros((2, 3)),
                              sample_weight=np.ones(3))
  with pytest.raises(ValueError, match="pos_freq"):
    losses.frequency_weighted_bce(np.zeros((2, 3)), np.zeros((2, 3)),
                                  np.ones(2), 0.4)
  with pytest.raises(ValueError, match="C >= 2"):
    losses.normalized_target_ce(np.zeros((2, 1)), np.ones((2, 1)))


# ------------------------------------------------ gradients, jit, dtypes ---

def _cases():
  """name -> (loss of the differentiable arguments, those arguments)."""
  x, t, m = _data(20)
  x2, _, _ = _data(21)
  freq = np.array([0.05, 0.2, 0.4, 0.6, 0.8])
  w = np.array([0.3, 1.0, 0.7, 2.0])
  a = np.random.default_rng(22).random((4, 4))
  a = (a + a.T) / 2
  return {
      "partial_bce": (lambda z: losses.partial_bce(z, t, m), (x,)),
      "batch_balanced_bce": (
          lambda z: losses.batch_balanced_bce(z, t, m, sample_weight=w),
          (x,)),
      "frequency_weighted_bce": (
          lambda z: losses.frequency_weighted_bce(z, t, freq, 0.4, m), (x,)),
      "js_coregularization": (losses.js_coregularization, (x, x2)),
      "orthogonality_loss": (
          lambda a1, a2: losses.orthogonality_loss(a1, a2, absolute=True),
          (x, x2)),
      "translation_loss": (losses.translation_loss, (x, x2)),
      "cycle_consistency_loss": (losses.cycle_consistency_loss, (x, x2)),
      "asge_loss": (lambda e: losses.asge_loss(e, a, alpha=0.3), (x,)),
      "normalized_target_ce": (
          lambda z: losses.normalized_target_ce(z, t), (x,)),
      "asymmetric_loss": (lambda z: losses.asymmetric_loss(z, t, mask=m),
                          (x,)),
  }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_gradients(name, x64):
  fn, args = _cases()[name]
  args = tuple(jnp.asarray(arg, jnp.float64) for arg in args)
  check_grads(jax.jit(fn), args, order=1, modes=("rev",), eps=1e-6, atol=1e-5,
              rtol=1e-5)


@pytest.mark.parametrize("name", sorted(_cases()))
def test_jit_matches_eager(name):
  fn, args = _cases()[name]
  eager = fn(*args)
  jitted = jax.jit(fn)(*args)
  assert eager.shape == () and eager.dtype == jnp.float32
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
