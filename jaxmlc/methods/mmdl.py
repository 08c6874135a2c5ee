"""MMDL: multimodal deep annotation with exponentiated-gradient fusion.

The seed's section 3, top to bottom:
  3.1 A modality j is a (feature type, similarity measure) pair, N = n_f x n_s.
      Each feature type has its own network phi_f (the 8-layer CNN
      `models.AlexNet8` for pixels, `models.MLP` for vectors); each modality
      scores a label by the similarity (eq. 4: linear, cosine, RBF) between
      phi_f(x) and a learned label embedding t_{j,l}. S(x, l) =
      sum_j alpha_j S_j(x, l) with alpha on the simplex (eq. 2).
  3.2 Optional unsupervised pre-training. The seed trains layer by layer with
      contrastive divergence; we use the modern substitute the spec allows: a
      denoising autoencoder per network (masking noise on the input, a linear
      decoder from phi back to the clean input; pixels to an 8x8 thumbnail),
      as a "pretrain" phase of the trainer before "finetune". Off by default
      (`mmdl.pretrain_epochs = 0`).
  3.3 Fine-tuning of every modality with `losses.normalized_target_ce`
      (eq. 5-7) on its logits scale_j * S_j, summed over modalities, in one
      jitted step with every network.
  3.4 Online exponentiated gradient for alpha (eq. 8-11, Algorithm 1).

Choices where the seed is silent (all in `DEFAULTS`):
  - Where alpha lives: variables["state"]["alpha"] [N], starts at 1/N and is
    updated inside `loss_fn` (returned in `new_state`) on every fine-tuning
    step from epoch `eg_start_epoch` on, as Algorithm 1 interleaves network
    and weight updates. Each step samples `triplets_per_batch` triplets
    (x, l+, l-) with fixed shapes from the labeled batch (known positives and
    known negatives only) and runs `eg_update_batch` (a `lax.scan` of
    `eg_update`) over them. Alpha is in the checkpoint like any state.
  - Scores on one scale: linear, cosine and RBF similarities live on
    different ranges, so the margin gamma and the fused score would be
    dominated by the linear modalities. Every modality therefore gets a
    per-class Platt calibration P_j(x, l) = sigmoid(a_jl z_j(x, l) + b_jl) of
    its logits z_j = scale_j S_j, fitted with `losses.partial_bce` on the
    known training labels (gradient stopped at z_j, so calibration never
    changes the networks). EG runs on these P_j (so s_j in [-1, 1]) and the
    fused score sum_j alpha_j P_j is a convex combination of probabilities
    in [0, 1].
  - Thresholds: a mixture of calibrated probabilities is not calibrated
    (it leans to the middle), so an epoch hook picks per-class thresholds
    of the fused score with the fewest training errors (`choose_thresholds`,
    stored in variables["state"]["thresholds"]) and predict_fn maps each
    threshold to 0.5 with a monotone per-class map (`apply_thresholds`:
    AP unchanged, ">= 0.5" = ">= threshold"). `thresholds=False`: 0.5.
  - Fusion hold-out (`holdout_every = k > 0`, off by default): training
    rows with index % k == 0 are left out of the networks' fine-tuning and
    are the only rows that fit the calibration, feed the EG triplets and
    choose the thresholds, so alpha is learned on scores the networks have
    not memorised (the seed's Algorithm 1 scores each triplet before the
    networks train on it; repeated epochs lose that).
  - Each network's embedding ends in a LayerNorm, so the three measures see
    embeddings of one scale (the RBF with sigma = 2 saturates otherwise),
    and the softmax of eq. 5 sees z_j = scale_j S_j with a learned
    temperature scale_j per modality (cosine and RBF scores lie in [-1, 1]
    and (0, 1], too flat for a softmax over C classes).
  - EG rate: the seed's mu per measure (0.18 / 1) was cross-validated for
    its own setup; `eg_eta = 0` (default) uses sqrt(2 ln N / T) for the T
    triplets of the run, the textbook EG rate. A rate of 0.1 put all of
    alpha on one modality within one epoch on the synthetic scenes.
  - Unknown labels (known_label_proportion < 1) count as negatives in the
    normalised targets of eq. 5-6 (the softmax covers every class); the
    calibration loss and the triplets use known entries only.
  - `mmdl.combine` picks what predict_fn returns: "eg" (alpha), "uniform"
    (1/N) or "single:<j>" (modality j by index or name, e.g.
    "single:modality2/cosine"), all from the same trained weights.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from jaxmlc import losses, optim
from jaxmlc.methods import base
from jaxmlc.methods.baseline import compute_dtype
from jaxmlc.models import MLP, get_backbone

log = logging.getLogger(__name__)

MEASURES = ("linear", "cosine", "rbf")
PIXELS = "image"

DEFAULTS = dict(
    feature_types=(),          # batch keys; () = every one the dataset offers
    measures=MEASURES,         # similarity measures (eq. 4)
    rbf_sigma=2.0,
    embedding_dim=64,          # phi(x) width of every network
    conv_features=(96, 256, 384, 384, 256),   # the seed's CNN
    dense_features=4096,       # its first dense layer (the second is phi)
    mlp_hidden=(512,),         # vector networks: hidden widths before phi
    dropout=0.6,
    scale_linear=1.0,          # initial temperature of each measure's logits
    scale_cosine=10.0,
    scale_rbf=10.0,
    calibration_weight=1.0,
    calibration_lr_multiplier=10.0,
    eg_eta=0.0,                # EG learning rate (the seed's mu); 0: auto
    eg_gamma=0.5,              # hinge margin gamma on calibrated scores
    eg_start_epoch=0,          # fine-tuning epoch from which alpha learns
    triplets_per_batch=0,      # 0: one per labeled example of the batch
    combine="eg",              # "eg" | "uniform" | "single:<index or name>"
    holdout_every=0,           # k > 0: train index % k == 0 is held out of
                               # fine-tuning, for calibration, EG, thresholds
    thresholds=True,           # per-class thresholds chosen on training data
    pretrain_epochs=0,         # > 0: denoising-autoencoder phase first
    pretrain_corruption=0.3,   # masking-noise probability
    pretrain_image_size=8,     # pixel DAE reconstructs this thumbnail
)


def mmdl_config(config) -> ml_collections.ConfigDict:
  """`config.mmdl` over DEFAULTS; unknown keys are an error with a hint."""
  return base.section_config(config, "mmdl", DEFAULTS)


# ----------------------------------------------------------------------------
# 3.1 Modalities.

def feature_types_of(info, requested: Sequence[str] = ()) -> tuple[str, ...]:
  """The feature types (batch keys) to build networks for.

  Default: pixels ("image") when the dataset gives images, then "modality2",
  then every "feat_<name>" vector (NUS-WIDE's six low-level features); a
  "features" dataset without named feature vectors uses "features".
  """
  dims = dict(info.feature_dims)
  offered = []
  if info.input_kind == "image":
    offered.append(PIXELS)
  if "modality2" in dims:
    offered.append("modality2")
  offered += sorted(k for k in dims if k.startswith("feat_"))
  if info.input_kind == "features" and "features" in dims and not any(
      k.startswith("feat_") for k in offered):
    offered.append("features")
  if not requested:
    if not offered:
      raise ValueError(
          f"method 'mmdl': dataset {info.name!r} offers no feature type "
          f"(input_kind={info.input_kind!r}, feature_dims={dims}). Expected "
          "images and/or vector features such as 'modality2' or 'feat_*'.")
    return tuple(offered)
  missing = [f for f in requested if f not in offered]
  if missing:
    raise ValueError(
        f"config.mmdl.feature_types={tuple(requested)}: {missing} not offered "
        f"by dataset {info.name!r}, which has {offered}. Fix: pick from those, "
        "or leave feature_types empty for all of them.")
  return tuple(requested)


def modality_names(feature_types: Sequence[str],
                   measures: Sequence[str]) -> tuple[str, ...]:
  """Modality j = f * n_s + m is named "<feature type>/<measure>"."""
  return tuple(f"{f}/{m}" for f in feature_types for m in measures)


def _safe_rsqrt(x):
  """1/sqrt(x) for x > 0 and 0 at 0, with finite gradients."""
  positive = x > 0
  return jnp.where(positive, lax.rsqrt(jnp.where(positive, x, 1.0)), 0.0)


def similarity_scores(embeddings, label_embeddings, measures: Sequence[str],
                      sigma: float = 2.0):
  """Eq. 4 for every modality at once.

  Args:
    embeddings: phi_f(x), f32 [F, B, D] (one row block per feature type).
    label_embeddings: t_{f,m,l}, f32 [F, M, C, D] (one table per modality).
    measures: M names from MEASURES; measure m uses table m.
    sigma: RBF width.
  Returns:
    S: f32 [B, F*M, C], modality j = f * M + m:
      linear <phi, t>, cosine <phi, t> / (|phi| |t|) (0 for a zero vector),
      RBF exp(-|phi - t|^2 / (2 sigma^2)).
  """
  unknown = [m for m in measures if m not in MEASURES]
  if unknown:
    raise ValueError(f"Unknown similarity measure(s) {unknown}; expected "
                     f"some of {MEASURES}.")
  num_features, batch = embeddings.shape[:2]
  num_classes = label_embeddings.shape[2]
  dot = jnp.einsum("fbd,fmcd->fmbc", embeddings, label_embeddings,
                   precision=lax.Precision.HIGHEST)
  phi_sq = jnp.sum(embeddings * embeddings, -1)[:, None, :, None]
  t_sq = jnp.sum(label_embeddings * label_embeddings, -1)[:, :, None, :]
  cosine = dot * _safe_rsqrt(phi_sq) * _safe_rsqrt(t_sq)
  distance_sq = jnp.maximum(phi_sq + t_sq - 2.0 * dot, 0.0)
  rbf = jnp.exp(-distance_sq / (2.0 * sigma ** 2))
  kind = jnp.asarray([MEASURES.index(m) for m in measures])[None, :, None, None]
  scores = jnp.where(kind == 0, dot, jnp.where(kind == 1, cosine, rbf))
  return scores.transpose(2, 0, 1, 3).reshape(
      batch, num_features * len(measures), num_classes)


class MMDLNetworks(nn.Module):
  """One network per feature type, the similarity heads and the calibration.

  __call__(inputs {feature type: [B, ...]}, train) ->
    {"similarity": S [B, N, C], "logits": z = scale * S [B, N, C],
     "calibrated_logits": a * stop_gradient(z) + b [B, N, C]}.
  """
  feature_types: tuple[str, ...]
  input_dims: tuple[int, ...]          # vector width per type (0 for pixels)
  num_classes: int
  measures: tuple[str, ...]
  embedding_dim: int
  conv_features: tuple[int, ...]
  dense_features: int
  mlp_hidden: tuple[int, ...]
  dropout: float
  rbf_sigma: float
  scale_init: tuple[float, ...]        # per measure
  class_prior_logit: tuple[float, ...]  # per class: calibration bias init
  pretrain_image_size: int = 8
  dtype: Any = jnp.float32

  def setup(self):
    networks, decoders, norms = {}, {}, {}
    for f, dim in zip(self.feature_types, self.input_dims):
      if f == PIXELS:
        networks[f] = get_backbone(
            "alexnet8", conv_features=tuple(self.conv_features),
            dense_features=(self.dense_features, self.embedding_dim),
            dropout=self.dropout, dtype=self.dtype)
        decoders[f] = nn.Dense(3 * self.pretrain_image_size ** 2)
      else:
        networks[f] = MLP(features=tuple(self.mlp_hidden) + (
            self.embedding_dim,), dropout=self.dropout, dtype=self.dtype)
        decoders[f] = nn.Dense(dim)
      norms[f] = nn.LayerNorm()
    self.networks, self.decoders, self.norms = networks, decoders, norms
    num_f, num_m = len(self.feature_types), len(self.measures)
    self.label_embeddings = self.param(
        "label_embeddings", nn.initializers.normal(self.embedding_dim ** -0.5),
        (num_f, num_m, self.num_classes, self.embedding_dim))
    scale = np.log(np.tile(np.asarray(self.scale_init, np.float32), num_f))
    self.log_scale = self.param("log_scale", lambda _: jnp.asarray(scale))
    n = num_f * num_m
    self.calibration_slope = self.param(
        "calibration_slope", nn.initializers.ones, (n, self.num_classes))
    prior = np.tile(np.asarray(self.class_prior_logit, np.float32), (n, 1))
    self.calibration_bias = self.param("calibration_bias",
                                       lambda _: jnp.asarray(prior))

  def _network(self, f, x, train):
    x = jnp.asarray(x, self.dtype)
    if f == PIXELS:
      h = self.networks[f](x, train=train)["embedding"]
    else:
      h = self.networks[f](x.reshape(x.shape[0], -1), train=train)
    return self.norms[f](h.astype(jnp.float32))

  def embed(self, inputs: Mapping[str, Any], train: bool):
    """inputs -> phi f32 [F, B, D]."""
    return jnp.stack([self._network(f, inputs[f], train)
                      for f in self.feature_types])

  def __call__(self, inputs: Mapping[str, Any], train: bool):
    similarity = similarity_scores(self.embed(inputs, train),
                                   self.label_embeddings, self.measures,
                                   self.rbf_sigma)
    logits = similarity * jnp.exp(self.log_scale)[None, :, None]
    calibrated = (self.calibration_slope * lax.stop_gradient(logits)
                  + self.calibration_bias)
    return {"similarity": similarity, "logits": logits,
            "calibrated_logits": calibrated}

  def reconstruct(self, inputs: Mapping[str, Any], train: bool):
    """Denoising-autoencoder outputs {f: [B, target width]} (section 3.2)."""
    return {f: self.decoders[f](self._network(f, inputs[f], train))
            for f in self.feature_types}

  def init_all(self, inputs):
    self.reconstruct(inputs, train=False)
    return self(inputs, train=False)


# ----------------------------------------------------------------------------
# 3.2 Unsupervised pre-training: a denoising autoencoder per network.

def reconstruction_target(f: str, x, image_size: int):
  """What the DAE of feature type f reconstructs: f32 [B, width]."""
  x = jnp.asarray(x, jnp.float32)
  if f == PIXELS:
    thumb = jax.image.resize(x, (x.shape[0], image_size, image_size,
                                 x.shape[-1]), "linear", antialias=True)
    return thumb.reshape(x.shape[0], -1)
  return x.reshape(x.shape[0], -1)


def mask_inputs(rng, inputs: Mapping[str, Any], probability: float):
  """Masking noise: each entry (each pixel for images) zeroed with probability p."""
  out = {}
  for i, (f, x) in enumerate(sorted(inputs.items())):
    x = jnp.asarray(x)
    shape = x.shape[:-1] + (1,) if f == PIXELS else x.shape
    keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - probability,
                                shape)
    out[f] = jnp.where(keep, x, 0.0)
  return out


# ----------------------------------------------------------------------------
# 3.3 Fine-tuning of every modality.

def finetune_loss(logits, targets, sample_weight=None):
  """Eq. 5-7 per modality, summed over modalities.

  logits: f32 [B, N, C]; targets: [B, C] in {0, 1}; sample_weight: optional
  [B] (0 = leave the row out, as the fusion hold-out). Returns the sum over
  modalities of the weighted mean over rows of each row's eq. 6 loss.
  """
  def row_loss(z, t):                        # [C], [C] -> scalar
    return losses.normalized_target_ce(z[None], t[None])
  per_entry = jax.vmap(jax.vmap(row_loss, in_axes=(0, None)))(
      logits, jnp.asarray(targets, jnp.float32))          # [B, N]
  if sample_weight is None:
    return jnp.sum(jnp.mean(per_entry, axis=0))
  weight = jnp.asarray(sample_weight, jnp.float32)
  return jnp.sum(weight @ per_entry) / jnp.maximum(jnp.sum(weight), 1.0)


def calibration_loss(calibrated_logits, targets, mask):
  """Platt calibration of every modality: sum_j partial_bce. [B, N, C] -> scalar."""
  per_modality = jax.vmap(losses.partial_bce, in_axes=(1, None, None))(
      calibrated_logits, targets, mask)
  return jnp.sum(per_modality)


# ----------------------------------------------------------------------------
# 3.4 Exponentiated gradient for the combination weights.

def eg_update(alpha, s, eta, gamma):
  """One online EG step (eq. 8-11, Algorithm 1).

  h = max(0, gamma - alpha^T s); when h > 0 (the margin fails)
  alpha_j <- alpha_j exp(eta s_j) / Z, else alpha is returned unchanged.
  A zero s (an empty triplet) leaves alpha unchanged either way.

  Args:
    alpha: f32 [N] on the simplex.
    s: f32 [N], s_j = S_j(x, l+) - S_j(x, l-) (eq. 10).
    eta, gamma: EG learning rate and hinge margin.
  Returns:
    f32 [N] on the simplex.
  """
  alpha = jnp.asarray(alpha, jnp.float32)
  s = jnp.asarray(s, jnp.float32)
  step = eta * s
  # Subtracting the max leaves the ratio unchanged and keeps exp <= 1.
  weighted = alpha * jnp.exp(step - jnp.max(step))
  updated = weighted / jnp.sum(weighted)
  return jnp.where(gamma - jnp.dot(alpha, s) > 0, updated, alpha)


def eg_update_batch(alpha, margins, eta, gamma, return_active: bool = False):
  """`eg_update` over T triplets in order, as one `lax.scan`.

  Args:
    alpha: f32 [N]; margins: f32 [T, N] (row t = s of triplet t).
    return_active: also return bool [T], whether triplet t updated alpha.
  Returns:
    alpha f32 [N] after the T updates (and `active` when asked).
  """
  def step(a, s):
    active = gamma - jnp.dot(a, s) > 0
    return eg_update(a, s, eta, gamma), active

  alpha, active = lax.scan(step, jnp.asarray(alpha, jnp.float32),
                           jnp.asarray(margins, jnp.float32))
  return (alpha, active) if return_active else alpha


def sample_triplets(rng, labels, mask, num_triplets: int):
  """Fixed-shape triplets (x, l+, l-) from a labeled batch.

  A row is usable when it has a known positive and a known negative; rows,
  then l+ among the row's known positives and l- among its known negatives,
  are drawn uniformly with replacement.

  Args:
    labels, mask: [B, C] in {0, 1}.
  Returns:
    rows, positives, negatives: int32 [T]; valid: bool [T] (False when the
    batch has no usable row: those triplets must be ignored).
  """
  labels = jnp.asarray(labels, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  positive = (labels * mask) > 0.5
  negative = ((1.0 - labels) * mask) > 0.5
  usable = positive.any(-1) & negative.any(-1)
  k_row, k_pos, k_neg = jax.random.split(rng, 3)
  no_row = -jnp.inf
  rows = jax.random.categorical(k_row, jnp.where(usable, 0.0, no_row),
                                shape=(num_triplets,))
  pos = jax.random.categorical(k_pos, jnp.where(positive[rows], 0.0, no_row))
  neg = jax.random.categorical(k_neg, jnp.where(negative[rows], 0.0, no_row))
  return (rows.astype(jnp.int32), pos.astype(jnp.int32),
          neg.astype(jnp.int32), usable[rows])


def triplet_margins(scores, rows, positives, negatives, valid):
  """s of each triplet (eq. 10): scores [B, N, C] -> f32 [T, N] (0 if invalid)."""
  s = scores[rows, :, positives] - scores[rows, :, negatives]
  return jnp.where(valid[:, None], s, 0.0)


def eg_learning_rate(num_modalities: int, num_triplets: int) -> float:
  """eta = sqrt(2 ln N / T): the textbook EG rate for T updates with
  |s_j| <= 1 (regret O(sqrt(2 T ln N)) against the best fixed weights).
  With a larger eta alpha collapses onto one modality within an epoch."""
  return float(np.sqrt(2.0 * np.log(max(num_modalities, 2))
                       / max(num_triplets, 1)))


def combination_weights(combine: str, alpha, names: Sequence[str]):
  """The weights predict_fn uses: f32 [N] on the simplex."""
  n = len(names)
  if combine == "eg":
    return jnp.asarray(alpha, jnp.float32)
  if combine == "uniform":
    return jnp.full((n,), 1.0 / n, jnp.float32)
  return jax.nn.one_hot(parse_single(combine, names), n, dtype=jnp.float32)


def parse_single(combine: str, names: Sequence[str]) -> int:
  """Index of modality j in "single:<j>" (an index or a name)."""
  choices = (f"'eg', 'uniform' or 'single:<j>' with j in 0..{len(names) - 1} "
             f"or one of {list(names)}")
  if not combine.startswith("single:"):
    raise ValueError(f"config.mmdl.combine={combine!r}: expected {choices}.")
  key = combine[len("single:"):]
  if key in names:
    return list(names).index(key)
  if key.isdigit() and int(key) < len(names):
    return int(key)
  raise ValueError(f"config.mmdl.combine={combine!r}: expected {choices}.")


def combined_scores(probabilities, weights):
  """Eq. 2 on calibrated scores: [B, N, C] x [N] -> [B, C] in [0, 1]."""
  return jnp.einsum("bnc,n->bc", probabilities, weights)


def fusion_holdout(index, every: int):
  """1 for training rows held out of fine-tuning (index % every == 0), else 0;
  all ones when every = 0 (no hold-out: fusion uses every row). f32 [B]."""
  index = jnp.asarray(index)
  if every <= 0:
    return jnp.ones(index.shape, jnp.float32)
  return (index % every == 0).astype(jnp.float32)


def choose_thresholds(scores, labels, mask=None) -> np.ndarray:
  """Per-class thresholds with the fewest errors (Hamming loss) on a set.

  For class c, predicting "score >= theta_c" for the k highest known
  scores makes k - 2 TP(k) + P errors; the best k (cuts only between
  distinct scores) gives theta_c midway between the k-th and (k+1)-th
  score. Classes with no known entry keep 0.5.

  Args (numpy): scores [N, C] in [0, 1]; labels [N, C]; mask [N, C] or None.
  Returns:
    f32 [C] in (0, 1).
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels) > 0.5
  known = np.ones(scores.shape, bool) if mask is None else np.asarray(mask) > 0
  # Known entries first in descending score order; unknown ones at the end.
  order = np.argsort(np.where(known, -scores, np.inf), axis=0, kind="stable")
  s = np.take_along_axis(scores, order, 0)
  pos = np.take_along_axis(labels & known, order, 0)
  count = known.sum(0)                                    # [C]
  k = np.arange(scores.shape[0] + 1)[:, None]             # cut after k rows
  tp = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(pos, 0)])
  errors = k - 2 * tp + pos.sum(0)
  above = np.concatenate([np.full((1, s.shape[1]), 2.0), s])   # s_(k)
  below = np.concatenate([s, np.full((1, s.shape[1]), -1.0)])  # s_(k+1)
  below = np.where(k >= count, -1.0, below)
  allowed = (k <= count) & (above > below)
  best = np.argmin(np.where(allowed, errors, np.inf), axis=0)
  cols = np.arange(scores.shape[1])
  hi = np.minimum(above[best, cols], 1.0)
  lo = np.maximum(below[best, cols], 0.0)
  theta = np.where(count > 0, 0.5 * (hi + lo), 0.5)
  return np.clip(theta, 1e-4, 1 - 1e-4).astype(np.float32)


def apply_thresholds(scores, thresholds):
  """Monotone per-class map of [0, 1] onto itself sending theta_c to 0.5.

  p < theta: p / (2 theta); else 0.5 + (p - theta) / (2 (1 - theta)). Ranks
  (and so AP) are unchanged and p' >= 0.5 iff p >= theta, so metrics that
  threshold at 0.5 use the chosen thresholds. scores [B, C], thresholds [C].
  """
  low = scores / (2.0 * thresholds)
  high = 0.5 + (scores - thresholds) / (2.0 * (1.0 - thresholds))
  return jnp.where(scores < thresholds, low, high)


# ----------------------------------------------------------------------------
# The method.

def _prior_logits(info) -> np.ndarray:
  """logit of each class's training frequency: calibration bias at init."""
  labels = np.asarray(info.train_labels, np.float64)
  mask = np.asarray(info.train_label_mask, np.float64)
  frequency = (labels * mask).sum(0) / np.maximum(mask.sum(0), 1.0)
  frequency = np.clip(frequency, 1e-3, 1 - 1e-3)
  return np.log(frequency / (1 - frequency)).astype(np.float32)


def build_model(config, info) -> tuple[MMDLNetworks, tuple[str, ...]]:
  """The networks for `info`'s dataset and the N modality names."""
  cfg = mmdl_config(config)
  features = feature_types_of(info, tuple(cfg.feature_types))
  measures = tuple(cfg.measures)
  names = modality_names(features, measures)
  if PIXELS in features and config.model.get("backbone", "alexnet8") not in (
      "alexnet8",):
    raise ValueError(
        f"method 'mmdl' uses the seed's 8-layer CNN for pixels; "
        f"config.model.backbone={config.model.backbone!r}. Fix: set "
        "--config.model.backbone=alexnet8 (widths in config.mmdl.conv_features"
        " / dense_features).")
  dims = dict(info.feature_dims)
  input_dims = tuple(0 if f == PIXELS else int(dims[f]) for f in features)
  model = MMDLNetworks(
      feature_types=features, input_dims=input_dims,
      num_classes=info.num_classes, measures=measures,
      embedding_dim=int(cfg.embedding_dim),
      conv_features=tuple(cfg.conv_features),
      dense_features=int(cfg.dense_features),
      mlp_hidden=tuple(cfg.mlp_hidden), dropout=float(cfg.dropout),
      rbf_sigma=float(cfg.rbf_sigma),
      scale_init=tuple(float(cfg[f"scale_{m}"]) for m in measures),
      class_prior_logit=tuple(_prior_logits(info).tolist()),
      pretrain_image_size=int(cfg.pretrain_image_size),
      dtype=compute_dtype(config))
  return model, names


def model_inputs(model: MMDLNetworks, examples) -> dict:
  """{feature type: batch field} for the model's feature types."""
  missing = [f for f in model.feature_types if f not in examples]
  if missing:
    raise ValueError(
        f"method 'mmdl': the batch has no {missing} (it has "
        f"{sorted(examples)}). Fix: choose config.mmdl.feature_types from "
        "the batch's fields.")
  return {f: examples[f] for f in model.feature_types}


def modality_probabilities(model: MMDLNetworks, variables, examples):
  """Calibrated P_j(x, l) of every modality (eval mode): f32 [B, N, C]."""
  out = model.apply({"params": variables["params"],
                     "batch_stats": variables["batch_stats"]},
                    model_inputs(model, examples), train=False)
  return jax.nn.sigmoid(out["calibrated_logits"])


@base.register("mmdl")
def build(config, info) -> base.Method:
  cfg = mmdl_config(config)
  model, names = build_model(config, info)
  features = model.feature_types
  num_modalities = len(names)
  if cfg.combine not in ("eg", "uniform"):
    parse_single(cfg.combine, names)     # a wrong name fails at build time
  split = config.data.get("train_split", "train")
  steps_per_epoch = max(
      1, info.num_examples[split] // config.train.global_batch_size)
  pretrain_epochs = int(cfg.pretrain_epochs)
  num_triplets = int(cfg.triplets_per_batch) or int(
      config.train.global_batch_size)
  holdout_every = int(cfg.holdout_every)
  eg_start_step = (pretrain_epochs + int(cfg.eg_start_epoch)) * steps_per_epoch
  total_steps = int(config.train.steps) or (
      (pretrain_epochs + int(config.train.epochs)) * steps_per_epoch)
  eta = float(cfg.eg_eta) or eg_learning_rate(
      num_modalities, num_triplets * max(total_steps - eg_start_step, 1))
  gamma = float(cfg.eg_gamma)
  alpha_keys = tuple("alpha_" + n.replace("/", "_") for n in names)

  def init(rng, batch):
    variables = model.init(rng, model_inputs(model, batch["labeled"]),
                           method=MMDLNetworks.init_all)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "state": {"alpha": jnp.full((num_modalities,),
                                        1.0 / num_modalities, jnp.float32),
                      "thresholds": jnp.full((info.num_classes,), 0.5,
                                             jnp.float32)}}

  def model_variables(variables):
    return {"params": variables["params"],
            "batch_stats": variables["batch_stats"]}

  def logged(alpha, dae, ce, calibration, eg_active):
    """The same aux keys in both phases (the trainer averages log windows)."""
    return {**{f"dae_{f}": v for f, v in dae.items()}, "loss_ce": ce,
            "loss_calibration": calibration, "eg_active": eg_active,
            "alpha_entropy": -jnp.sum(alpha * jnp.log(jnp.maximum(alpha,
                                                                  1e-30))),
            **{k: alpha[j] for j, k in enumerate(alpha_keys)}}

  def pretrain_loss(variables, batch, rng):
    # Unlabeled inputs where the stream has them, else the labeled batch's
    # (labels are not used here).
    pool = batch.get("unlabeled", {})
    inputs = {f: pool[f] if f in pool else batch["labeled"][f]
              for f in features}
    k_noise, k_drop = jax.random.split(rng)
    noisy = mask_inputs(k_noise, inputs, float(cfg.pretrain_corruption))
    out, updates = model.apply(
        model_variables(variables), noisy, train=True,
        method=MMDLNetworks.reconstruct, mutable=["batch_stats"],
        rngs={"dropout": k_drop})
    terms = {f: jnp.mean((out[f] - reconstruction_target(
        f, inputs[f], int(cfg.pretrain_image_size))) ** 2) for f in features}
    loss = sum(terms.values())
    zero = jnp.zeros((), jnp.float32)
    aux = logged(variables["state"]["alpha"], dae=terms, ce=zero,
                 calibration=zero, eg_active=zero)
    return loss, aux, {"batch_stats": updates.get("batch_stats", {}),
                       "state": variables["state"]}

  def loss_fn(variables, batch, rng, step, phase="finetune"):
    if phase == "pretrain":
      return pretrain_loss(variables, batch, rng)
    labeled = batch["labeled"]
    labels = jnp.asarray(labeled["labels"], jnp.float32)
    mask = jnp.asarray(labeled["label_mask"], jnp.float32)
    k_drop, k_triplets = jax.random.split(rng)
    out, updates = model.apply(
        model_variables(variables), model_inputs(model, labeled), train=True,
        mutable=["batch_stats"], rngs={"dropout": k_drop})
    # Rows of the fusion hold-out train calibration and EG only.
    held = (fusion_holdout(labeled["index"], holdout_every) if holdout_every
            else jnp.ones(labels.shape[:1], jnp.float32))
    fit = 1.0 - held if holdout_every else None
    held_mask = mask * held[:, None]
    ce = finetune_loss(out["logits"], labels * mask, fit)
    calibration = calibration_loss(out["calibrated_logits"], labels,
                                   held_mask)
    loss = ce + cfg.calibration_weight * calibration

    # Section 3.4 on this batch: EG over fixed-shape triplets.
    probabilities = lax.stop_gradient(jax.nn.sigmoid(out["calibrated_logits"]))
    triplets = sample_triplets(k_triplets, labels, held_mask, num_triplets)
    margins = triplet_margins(probabilities, *triplets)
    alpha = variables["state"]["alpha"]
    new_alpha, active = eg_update_batch(alpha, margins, eta, gamma,
                                        return_active=True)
    eg_on = step >= eg_start_step
    alpha = jnp.where(eg_on, new_alpha, alpha)
    valid = triplets[3]
    active_rate = jnp.sum(active & valid) / jnp.maximum(jnp.sum(valid), 1)
    aux = logged(alpha, dae={f: jnp.zeros(()) for f in features}, ce=ce,
                 calibration=calibration,
                 eg_active=jnp.where(eg_on, active_rate, 0.0))
    return loss, aux, {"batch_stats": updates.get("batch_stats", {}),
                       "state": {**variables["state"], "alpha": alpha}}

  def fused_scores(variables, examples):
    """sum_j w_j P_j for config.mmdl.combine, before thresholds: [B, C]."""
    weights = combination_weights(cfg.combine, variables["state"]["alpha"],
                                  names)
    return combined_scores(modality_probabilities(model, variables, examples),
                           weights)

  def predict_fn(variables, examples):
    return apply_thresholds(fused_scores(variables, examples),
                            variables["state"]["thresholds"])

  fused_jit = jax.jit(fused_scores)

  def threshold_hook(variables, epoch, env):
    """After each epoch: per-class thresholds of the fused score, chosen on
    the fusion hold-out (every training row when holdout_every = 0)."""
    if not cfg.thresholds:
      return variables
    scores, labels, masks = [], [], []
    fields = features + ("labels", "label_mask", "valid", "index")
    for batch in env.train_batches():
      dev = env.to_global({k: batch["labeled"][k] for k in fields})
      host = {k: np.asarray(env.gather(dev[k]))
              for k in ("labels", "label_mask", "valid", "index")}
      keep = host["valid"] > 0
      if holdout_every:
        keep &= host["index"] % holdout_every == 0
      scores.append(np.asarray(env.gather(fused_jit(variables, dev)))[keep])
      labels.append(host["labels"][keep])
      masks.append(host["label_mask"][keep])
    thresholds = choose_thresholds(np.concatenate(scores),
                                   np.concatenate(labels),
                                   np.concatenate(masks))
    old = variables["state"]["thresholds"]
    new = (jax.device_put(thresholds, old.sharding)
           if isinstance(old, jax.Array) else jnp.asarray(thresholds))
    env.log(f"MMDL epoch {epoch}: thresholds of the {cfg.combine!r} score on "
            f"{sum(len(x) for x in scores)} training rows, mean "
            f"{float(thresholds.mean()):.3f}.")
    return {**variables, "state": {**variables["state"], "thresholds": new}}

  multiplier = float(cfg.calibration_lr_multiplier)
  optimizer = optim.make_optimizer(
      config, steps_per_epoch,
      lr_multipliers={"calibration_slope": multiplier,
                      "calibration_bias": multiplier})
  phases = ()
  if pretrain_epochs > 0:
    phases = (base.Phase("pretrain", pretrain_epochs, optimizer),
              base.Phase("finetune", int(config.train.epochs), optimizer))
    log.info("MMDL: %d epoch(s) of denoising-autoencoder pre-training (%s), "
             "then %d of fine-tuning.", pretrain_epochs,
             "unlabeled stream" if config.data.unlabeled_batch_size else
             "the labeled batch's inputs", int(config.train.epochs))
  log.info("MMDL modalities (N=%d): %s; EG eta %.4g, gamma %.3g from step "
           "%d.", num_modalities, ", ".join(names), eta, gamma, eg_start_step)
  return base.Method(
      name="mmdl", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=optimizer, phases=phases, epoch_hooks=(threshold_hook,),
      uses_unlabeled=pretrain_epochs > 0
      and bool(config.data.unlabeled_batch_size))
