"""Pure loss functions (contract: specs/core_math.md, "jaxmlc.losses").

Every loss takes logits (not probabilities), accepts numpy or jax arrays, is
jit-able and differentiable, and returns a scalar. Labels travel as
`targets` [B, C] in {0, 1} and an optional `mask` [B, C] in {0, 1}
(1 = the label is known; None = every label is known).

Numerics: log-probabilities come from `jax.nn.log_sigmoid` / log-softmax,
never `log(sigmoid(x))`; norms and cosines use the double-`where` form so
that a zero vector gives a finite (zero) gradient instead of NaN.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


# ----------------------------------------------------------------- helpers --

def _float(x) -> Array:
  """x as a jnp array of at least float32 (bf16 logits are upcast)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _like(fn: str, name: str, x, reference: Array) -> Array:
  """x cast to reference's dtype; its shape must equal reference's."""
  x = jnp.asarray(x, reference.dtype)
  if x.shape != reference.shape:
    raise ValueError(
        f"{fn}: {name} has shape {x.shape}, expected {reference.shape} (the "
        f"shape of the first argument). Fix: pass {name} aligned entry for "
        f"entry with it, e.g. multi-hot [B, C] for [B, C] logits.")
  return x


def _labels(fn, logits, targets, mask):
  """(logits, targets, mask) as float arrays of one shape; mask=None -> ones."""
  logits = _float(logits)
  if logits.ndim < 1:
    raise ValueError(f"{fn}: logits must be [B, C], got a scalar.")
  targets = _like(fn, "targets", targets, logits)
  mask = (jnp.ones_like(logits) if mask is None
          else _like(fn, "mask", mask, logits))
  return logits, targets, mask


def _bce(logits: Array, targets: Array) -> Array:
  """Elementwise binary cross-entropy from logits (stable for any |x|)."""
  return -(targets * jax.nn.log_sigmoid(logits)
           + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def _safe_sqrt(x: Array) -> Array:
  """sqrt with gradient 0 (not inf) at 0: sqrt's derivative is 1/(2 sqrt x)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _unit(x: Array, axis: int = -1) -> Array:
  """x / ||x|| along axis; zero vectors map to zero (with zero gradient)."""
  squared = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = squared > 0
  inverse = jnp.where(positive, lax.rsqrt(jnp.where(positive, squared, 1.0)),
                      0.0)
  return x * inverse


def _binary_entropy(logits: Array) -> Array:
  """H(sigmoid(x)) = -(p log p + (1-p) log(1-p)), from logits (no log 0)."""
  return -(jax.nn.sigmoid(logits) * jax.nn.log_sigmoid(logits)
           + jax.nn.sigmoid(-logits) * jax.nn.log_sigmoid(-logits))


def _log1m_softmax(logits: Array) -> Array:
  """log(1 - softmax(logits)) along the last axis, without cancellation.

  log(1 - p_k) = logsumexp_{j != k} x_j - logsumexp_j x_j. For k not the
  argmax the sum over j != k still holds the argmax term exp(0) = 1, so
  subtracting exp(x_k - max) from the full sum loses nothing. For the argmax
  itself we shift by the runner-up instead, so a dominant class gives a
  finite log(1 - p) (say -100) rather than log(0). O(C) memory per row.

  logits: [..., C] float with C >= 2. Returns [..., C].
  """
  num_classes = logits.shape[-1]
  is_top = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes,
                          dtype=bool)
  # The shifts cancel mathematically, so they carry no gradient (as in
  # logsumexp).
  top = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  exp_top = jnp.exp(logits - top)
  total = jnp.sum(exp_top, axis=-1, keepdims=True)
  log_total = top + jnp.log(total)
  # Double where: at the argmax `total - 1` may be 0, whose log has no
  # usable gradient even in the branch that is not selected.
  rest = jnp.where(is_top, 1.0, total - exp_top)
  log_rest = top + jnp.log(rest)
  second = lax.stop_gradient(
      jnp.max(jnp.where(is_top, -jnp.inf, logits), axis=-1, keepdims=True))
  others = jnp.exp(jnp.where(is_top, -jnp.inf, logits - second))
  log_rest_top = second + jnp.log(jnp.sum(others, axis=-1, keepdims=True))
  return jnp.where(is_top, log_rest_top, log_rest) - log_total


# ------------------------------------------------------------------ losses --

def partial_bce(logits, targets, mask=None) -> Array:
  """BCE over the known labels only (the partial-label baseline).

  Args:
    logits: [B, C] float.
    targets: [B, C] in {0, 1}.
    mask: [B, C] in {0, 1}, 1 = label known; None = all known.
  Returns:
    scalar: sum of BCE over known entries / max(1, #known); 0 when nothing
    is known.
  """
  logits, targets, mask = _labels("partial_bce", logits, targets, mask)
  known = jnp.sum(mask)
  return jnp.sum(mask * _bce(logits, targets)) / jnp.maximum(known, 1.0)


def batch_balanced_bce(logits, targets, mask=None, sample_weight=None) -> Array:
  """MSCNN eq. 9: BCE with positive/negative weights balanced over the batch.

  With P known positives and N known negatives in the whole batch,
  wp = (P+N+1)/(P+1), wn = (P+N+1)/(N+1) and
    loss = [-wp sum_pos log s(x) - wn sum_neg log(1 - s(x))] / B.

  Args:
    logits: [B, C] float.
    targets: [B, C] in {0, 1}.
    mask: [B, C] in {0, 1}, 1 = label known; None = all known.
    sample_weight: optional [B] float, multiplies each sample's terms (MSCNN
      weights pseudo-labelled samples by their propagation confidence).
      P, N and the divisor B stay plain counts, so a weight only scales its
      sample's contribution; None is exactly eq. 9.
  Returns:
    scalar.
  """
  logits, targets, mask = _labels("batch_balanced_bce", logits, targets, mask)
  positive = mask * targets
  negative = mask * (1.0 - targets)
  num_positive, num_negative = jnp.sum(positive), jnp.sum(negative)
  weight_positive = (num_positive + num_negative + 1) / (num_positive + 1)
  weight_negative = (num_positive + num_negative + 1) / (num_negative + 1)
  per_entry = -(weight_positive * positive * jax.nn.log_sigmoid(logits)
                + weight_negative * negative * jax.nn.log_sigmoid(-logits))
  if sample_weight is not None:
    sample_weight = jnp.asarray(sample_weight, logits.dtype)
    if sample_weight.shape != logits.shape[:1]:
      raise ValueError(
          f"batch_balanced_bce: sample_weight has shape {sample_weight.shape},"
          f" expected ({logits.shape[0]},) (one weight per sample). Fix: pass"
          " a [B] vector, or None for unweighted eq. 9.")
    per_entry = per_entry * sample_weight.reshape(
        (-1,) + (1,) * (logits.ndim - 1))
  return jnp.sum(per_entry) / max(logits.shape[0], 1)


def frequency_weighted_bce(logits, targets, pos_freq, beta,
                           mask=None) -> Array:
  """CMA eq. 12 (the paper's `1 - log(y*)` typo read as `log(1 - y*)`).

  w = t exp(beta (1 - p_k)) + (1 - t) exp(beta p_k): rare classes weigh
  their positives up and their negatives down. beta = 0 is plain BCE summed
  over classes and averaged over the batch.

  Args:
    logits: [B, C] float.
    targets: [B, C] in {0, 1}.
    pos_freq: [C] fraction of training samples positive for each class.
    beta: float (0.0 for MS-COCO, 0.4 for NUS-WIDE in the paper).
    mask: [B, C] in {0, 1}, 1 = label known; None = all known.
  Returns:
    scalar: sum over known entries of w * BCE, divided by B.
  """
  logits, targets, mask = _labels("frequency_weighted_bce", logits, targets,
                                  mask)
  pos_freq = jnp.asarray(pos_freq, logits.dtype)
  if pos_freq.shape != logits.shape[-1:]:
    raise ValueError(
        f"frequency_weighted_bce: pos_freq has shape {pos_freq.shape}, "
        f"expected ({logits.shape[-1]},) (one frequency per class). Fix: pass "
        "the training split's per-class positive fraction.")
  weight = (targets * jnp.exp(beta * (1.0 - pos_freq))
            + (1.0 - targets) * jnp.exp(beta * pos_freq))
  return jnp.sum(mask * weight * _bce(logits, targets)) / max(
      logits.shape[0], 1)


def js_coregularization(logits1, logits2) -> Array:
  """DMACN eq. 8: Jensen-Shannon divergence of two views' predictions.

  With p1 = s(l1), p2 = s(l2), m = (p1 + p2) / 2 and binary entropy H:
  mean over batch and classes of H(m) - (H(p1) + H(p2)) / 2. Zero iff the
  predictions agree. log m and log(1 - m) come from logaddexp of
  log-sigmoids, so saturated predictions give no log(0).

  Args:
    logits1, logits2: [B, C] float.
  Returns:
    scalar >= 0 (up to rounding).
  """
  logits1 = _float(logits1)
  logits2 = _like("js_coregularization", "logits2", logits2, logits1)
  log_half = math.log(0.5)
  log_m = jnp.logaddexp(jax.nn.log_sigmoid(logits1),
                        jax.nn.log_sigmoid(logits2)) + log_half
  log_1m_m = jnp.logaddexp(jax.nn.log_sigmoid(-logits1),
                           jax.nn.log_sigmoid(-logits2)) + log_half
  m = 0.5 * (jax.nn.sigmoid(logits1) + jax.nn.sigmoid(logits2))
  one_minus_m = 0.5 * (jax.nn.sigmoid(-logits1) + jax.nn.sigmoid(-logits2))
  entropy_m = -(m * log_m + one_minus_m * log_1m_m)
  return jnp.mean(entropy_m - 0.5 * (_binary_entropy(logits1)
                                     + _binary_entropy(logits2)))


def orthogonality_loss(w1, w2, absolute=False) -> Array:
  """DMACN eq. 5: cosine between the two views' classifiers, class by class.

  Args:
    w1, w2: [C, K] float; row k = class k's weights with its bias appended.
    absolute: mean |cos| (orthogonal, not anti-parallel: what DMACN trains
      with) instead of the signed cosine eq. 5 prints.
  Returns:
    scalar: mean over classes of cos(w1[k], w2[k]) (or its absolute value);
    a zero row counts as cosine 0.
  """
  w1 = _float(w1)
  w2 = _like("orthogonality_loss", "w2", w2, w1)
  cosine = jnp.sum(_unit(w1) * _unit(w2), axis=-1)
  return jnp.mean(jnp.where(absolute, jnp.abs(cosine), cosine))


def translation_loss(pred, target) -> Array:
  """DMACN eq. 6 term: mean over the batch of ||pred - target||_2.

  The norm is not squared (as in the paper). Gradient at pred == target is
  0, not NaN.

  Args:
    pred, target: [B, D] float (any trailing shape; flattened per sample).
  Returns:
    scalar.
  """
  pred = _float(pred)
  target = _like("translation_loss", "target", target, pred)
  difference = (pred - target).reshape(pred.shape[0], -1)
  return jnp.mean(_safe_sqrt(jnp.sum(difference * difference, axis=-1)))


def cycle_consistency_loss(x, x_reconstructed) -> Array:
  """DMACN eq. 7: mean over the batch of ||x - x_reconstructed||_2.

  Args:
    x, x_reconstructed: [B, D] float.
  Returns:
    scalar.
  """
  x = _float(x)
  x_reconstructed = _like("cycle_consistency_loss", "x_reconstructed",
                          x_reconstructed, x)
  return translation_loss(x_reconstructed, x)


def asge_loss(embeddings, adjacency, alpha=None) -> Array:
  """CMA eq. 3-5: fit label-embedding cosines to the label graph.

  S = cosine-similarity matrix of the rows of `embeddings`;
  loss = sum_ij sigma_ij (S_ij - A_ij)^2 over all pairs, diagonal included.
  With the relaxation (eq. 4-5), sigma_ij = 0 when both A_ij < alpha and
  S_ij < alpha: weak edges only need to stay weak, not match exactly.

  Args:
    embeddings: [C, D] float.
    adjacency: [C, C] float (symmetric_conditional_adjacency of the labels).
    alpha: None (no relaxation; images) or a float (0.1 for video).
  Returns:
    scalar.
  """
  embeddings = _float(embeddings)
  num_classes = embeddings.shape[0]
  adjacency = jnp.asarray(adjacency, embeddings.dtype)
  if embeddings.ndim != 2 or adjacency.shape != (num_classes, num_classes):
    raise ValueError(
        f"asge_loss: expected embeddings [C, D] and adjacency [C, C], got "
        f"{embeddings.shape} and {adjacency.shape}. Fix: one embedding row "
        "per class and the C x C label graph.")
  unit = _unit(embeddings)
  # Full precision: a C x C matrix is cheap, and TF32 would shift S by 1e-3.
  similarity = jnp.matmul(unit, unit.T, precision=lax.Precision.HIGHEST)
  squared_error = (similarity - adjacency) ** 2
  if alpha is not None:
    relaxed = (adjacency < alpha) & (similarity < alpha)
    squared_error = jnp.where(relaxed, 0.0, squared_error)
  return jnp.sum(squared_error)


def normalized_target_ce(logits, targets) -> Array:
  """MMDL eq. 5-6: softmax cross-entropy against the normalised targets.

  p = softmax(logits), q = t / sum_k t (q = 0 for a row with no positive);
  per sample -sum_k q log p - sum_k (1 - q) log(1 - p); mean over the batch.
  log(1 - p) is computed without cancellation (see _log1m_softmax), so a
  dominant class gives no log(0) and no NaN.

  Args:
    logits: [B, C] float, C >= 2.
    targets: [B, C] in {0, 1}.
  Returns:
    scalar.
  """
  logits = _float(logits)
  targets = _like("normalized_target_ce", "targets", targets, logits)
  if logits.shape[-1] < 2:
    raise ValueError(
        f"normalized_target_ce: needs C >= 2 classes for a softmax, got "
        f"logits of shape {logits.shape}. Fix: use partial_bce for a single "
        "binary label.")
  row_sum = jnp.sum(targets, axis=-1, keepdims=True)
  q = targets / jnp.where(row_sum > 0, row_sum, 1.0)
  per_sample = -jnp.sum(q * jax.nn.log_softmax(logits, axis=-1)
                        + (1.0 - q) * _log1m_softmax(logits), axis=-1)
  return jnp.mean(per_sample)


def _power(base: Array, exponent) -> Array:
  """base ** exponent for base >= 0, with 0 ** 0 = 1 and zero gradient at 0.

  jnp.power's gradient at base 0 is exponent * 0 ** (exponent - 1), which is
  inf or NaN for exponents < 1.
  """
  positive = base > 0
  powered = jnp.exp(exponent * jnp.log(jnp.where(positive, base, 1.0)))
  return jnp.where(positive, powered, jnp.where(exponent == 0, 1.0, 0.0))


def asymmetric_loss(logits, targets, gamma_pos=1, gamma_neg=4, clip=0.05,
                    mask=None) -> Array:
  """ASL (Ridnik et al. 2021), HST's co-occurrence head loss.

  p = s(x), p_neg = min(1 - p + clip, 1) (probability shifting: easy
  negatives with p < clip are discarded);
    loss = -[t (1-p)^gamma_pos log p + (1-t) (1-p_neg)^gamma_neg log p_neg],
  mean over known entries. The focusing weights carry gradient (as the
  formula is written).

  Args:
    logits: [B, C] float.
    targets: [B, C] in {0, 1}.
    gamma_pos, gamma_neg: focusing exponents (>= 0).
    clip: probability margin in [0, 1); None or 0 disables shifting.
    mask: [B, C] in {0, 1}, 1 = label known; None = all known.
  Returns:
    scalar: sum over known entries / max(1, #known).
  """
  logits, targets, mask = _labels("asymmetric_loss", logits, targets, mask)
  log_p = jax.nn.log_sigmoid(logits)
  # (1 - p)^gamma_pos = exp(gamma_pos log s(-x)): smooth, no 0 ** gamma.
  positive_term = (targets * jnp.exp(gamma_pos * jax.nn.log_sigmoid(-logits))
                   * log_p)
  # Without shifting, log(1 - p) is log_sigmoid(-x) (finite for any x); with
  # it, p_neg >= clip > 0. The branch is a where so that clip may be traced.
  clip = 0.0 if clip is None else clip
  shift = clip > 0
  p_neg = jnp.minimum(jax.nn.sigmoid(-logits) + clip, 1.0)
  log_p_neg = jnp.where(shift, jnp.log(jnp.where(shift, p_neg, 1.0)),
                        jax.nn.log_sigmoid(-logits))
  p_shifted = jnp.where(shift, 1.0 - p_neg, jax.nn.sigmoid(logits))
  negative_term = (1.0 - targets) * _power(p_shifted, gamma_neg) * log_p_neg
  loss = -mask * (positive_term + negative_term)
  return jnp.sum(loss) / jnp.maximum(jnp.sum(mask), 1.0)
