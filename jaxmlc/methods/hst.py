"""HST: heterogeneous semantic transfer for partial labels (hst.md).

Chen, Pu, Liu, Shi, Yang, Lin, "Heterogeneous Semantic Transfer for
Multi-label Recognition with Partial Labels". Read top to bottom as the
method section:

1. SARL model (`jaxmlc/models/sarl.py`): per-class semantic features
   s_c [B, C, d] from word-vector-guided attention, a gated GNN over the
   statistical co-occurrence graph A, an element-wise classifier, and the
   IST pair head (one logit per unordered class pair).
2. IST (intra-image semantic transfer): the pair head's image-specific
   co-occurrence Q maps known positives to scores for every class.
3. CST (cross-image semantic transfer): K k-means prototypes per class from
   the known positives' s_c; similarity to them scores every class.
4. DTL (differential threshold learning): learnable thresholds turn the
   scores into pseudo labels, trained by BCE against the known labels.
5. Completed targets from IST and CST supervise the classifier next to the
   known labels; co-occurrence (ASL), instance and prototype losses shape
   the pair head and the semantic features.

Targets arrive as complete labels `t` plus a known mask `m` (1 = known);
only `pos = t * m` and `neg = (1 - t) * m` are ever used for training (the
hidden labels only feed the logged precision of the filled entries).

Schedule (all from the traced step, so one compiled step serves the run):
epoch = step // steps_per_epoch with steps_per_epoch = N_train // global
batch. L_cooc and L_instance ramp as min(1, step / steps_per_epoch). From
epoch `pseudo_label_epoch` on: BCE on the IST- and CST-completed targets,
L_dtl and L_prototype; the CST terms also wait for the first prototypes.
Prototypes are computed by the epoch hook before epoch pseudo_label_epoch
and every `prototype_every` epochs after.

Variables: "params" (SARL, with the thresholds under params["thresholds"]
{"ist", "cst"}), "batch_stats", and "state" = {"prototypes" f32 [C, K, d],
"prototype_valid" f32 [C] (the class had known positives at the last
k-means), "prototypes_ready" f32 []}; checkpoints carry all three.

Gradients of L_dtl reach the thresholds and, as in the reference, the pair
head and features through q; completed targets are stop-gradient.

Switches that depart from the reference (all off by default, on in
configs/hst_synthetic.py, where they were measured to matter):
`cooc_known_pairs_only` (L_cooc ignores pairs with an unknown label instead
of counting them as negatives), `dtl_leave_one_out` (theta_ist is fitted on
leave-one-out scores), `model.isolate_aux` (auxiliary heads do not pull on
the backbone). Not a switch: the thresholds never get weight decay (see
`hst_optimizer`).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxmlc import kmeans, losses, optim
from jaxmlc.methods import base
from jaxmlc.models.sarl import SARL

log = logging.getLogger(__name__)

# HST's own keys (`config.hst`); configs/hst_coco.py carries the paper's values.
DEFAULTS = dict(
    pseudo_label_epoch=5,        # pseudo labels, DTL, L_prototype from here
    prototype_every=5,           # recompute prototypes every this many epochs
    num_prototypes=10,           # K per class
    kmeans_iters=50,
    kmeans_init="kmeans++",      # "kmeans++" | "random"
    kmeans_max_chunk_elements=1 << 27,
    ist_threshold_init=1.0,      # theta_ist, theta_cst at step 0 (kept
                                 # there when not use_dtl)
    cst_threshold_init=1.0,
    threshold_relaxation="clip",  # "clip" (reference) | "softplus" (smooth)
    threshold_sharpness=10.0,    # softplus relaxation: larger = closer to clip
    threshold_lr_multiplier=1.0,  # lr factor of the "thresholds" group
    weight_ist_bce=1.0,          # BCE(t_ist) on the main logits
    weight_cst_bce=1.0,
    weight_cooc=10.0,            # L_cooc (ramped over epoch 0)
    weight_dtl_ist=0.1,
    weight_dtl_cst=0.1,
    weight_instance=0.05,        # L_instance (ramped over epoch 0)
    weight_prototype=0.05,
    cooc_gamma_pos=1.0,
    cooc_gamma_neg=2.0,
    cooc_clip=0.05,
    cooc_known_pairs_only=False,  # True: L_cooc only on pairs whose two
                                  # labels are known (False, the reference:
                                  # a pair with an unknown label is a negative)
    dtl_leave_one_out=False,     # True: L_dtl_ist scores a known positive
                                 # without its own Q_jj = 1 term (as an
                                 # unknown entry is scored); False: reference
    use_ist=True,                # ablations
    use_cst=True,
    use_dtl=True,                # False: thresholds frozen at their init values
    use_sarl=True,               # False: backbone + GAP + linear classifier
    label_embedding_dim=256,     # label embeddings when no word vectors
    label_embedding_steps=0,     # their fit steps; 0 = the fitter's default
)
# Model widths live in `config.model`; defaults are the paper's.
MODEL_DEFAULTS = dict(feature_dim=1024, attention_dim=512, output_dim=1024,
                      gnn_steps=3, word_vectors="", reduce_norm=True,
                      fine_feature_key="", isolate_aux=False)

_EPS = 1e-9


def hst_config(config) -> ml_collections.ConfigDict:
  """`config.hst` over DEFAULTS; unknown keys are an error with a hint."""
  cfg = base.section_config(config, "hst", DEFAULTS)
  for key, allowed in (("threshold_relaxation", ("clip", "softplus")),
                       ("kmeans_init", ("kmeans++", "random"))):
    if cfg[key] not in allowed:
      raise ValueError(f"config.hst.{key}={cfg[key]!r}: expected one of "
                       f"{allowed}.")
  return cfg


# ----------------------------------------------------------------------------
# Shared pieces.

def pair_index(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(i, j) int arrays of the C(C-1)/2 unordered pairs, i < j, row-major."""
  return np.triu_indices(num_classes, k=1)


def _normalize(x):
  """Unit vectors along the last axis; zero vectors stay zero."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       _EPS ** 2))


def relax_threshold(scores, threshold, relaxation: str = "clip",
                    sharpness: float = 10.0):
  """Pseudo label r = clip(scores - threshold, 0, 1), or its smooth version.

  "softplus": (softplus(k x) - softplus(k (x - 1))) / k with x = scores -
  threshold, which tends to the clip as k grows and, unlike it, passes a
  gradient to the threshold while every score is below it.
  """
  x = scores - threshold
  if relaxation == "clip":
    return jnp.clip(x, 0.0, 1.0)
  if relaxation == "softplus":
    k = sharpness
    return (jax.nn.softplus(k * x) - jax.nn.softplus(k * (x - 1.0))) / k
  raise ValueError(f"threshold_relaxation={relaxation!r} is not 'clip' or "
                   "'softplus'.")


# ----------------------------------------------------------------------------
# IST: image-specific co-occurrence -> pseudo labels.

def ist_scores(pair_logits, targets, mask):
  """q [B, C]: the known positives mapped through the image's co-occurrence.

  Q [B, C, C] is symmetric with Q_ii = 1 and Q_ij = Q_ji = sigmoid(pair
  logit of {i, j}); q_j = sum_i Q_ji pos_i / max(1, sum_i pos_i).
  pair_logits: [B, C(C-1)/2] in pair_index order; targets, mask: [B, C].
  """
  b, c = targets.shape
  first, second = pair_index(c)
  prob = jax.nn.sigmoid(pair_logits)
  q = jnp.broadcast_to(jnp.eye(c, dtype=prob.dtype), (b, c, c))
  q = q.at[:, first, second].set(prob).at[:, second, first].set(prob)
  pos = targets * mask
  return jnp.einsum("bji,bi->bj", q, pos) / jnp.maximum(
      1.0, jnp.sum(pos, -1, keepdims=True))


def ist_scores_leave_one_out(pair_logits, targets, mask):
  """q [B, C] with each known positive scored from the *other* positives.

  q_j = sum_{i != j} Q_ji pos_i / max(1, sum_{i != j} pos_i): equal to
  `ist_scores` for unknown and negative entries; a known positive loses its
  own Q_jj = 1 term, so it is scored the way an unknown entry is. Used (with
  `dtl_leave_one_out`) only to fit theta_ist: with the self term every known
  positive of an image with one known positive scores 1, and DTL drags the
  threshold down (measured: 0.5 -> 0.22, IST fills at 26% precision).
  """
  pos = targets * mask
  n = jnp.sum(pos, -1, keepdims=True)
  total = ist_scores(pair_logits, targets, mask) * jnp.maximum(1.0, n)
  return (total - pos) / jnp.maximum(1.0, n - pos)


def ist_pseudo_labels(pair_logits, targets, mask, threshold,
                      relaxation: str = "clip", sharpness: float = 10.0):
  """IST pseudo labels r_ist = clip(q - theta_ist, 0, 1): [B, C]."""
  return relax_threshold(ist_scores(pair_logits, targets, mask), threshold,
                         relaxation, sharpness)


def pair_targets(targets, mask):
  """[B, C(C-1)/2]: 1 where both classes of the pair are known positives."""
  pos = targets * mask
  first, second = pair_index(targets.shape[-1])
  return pos[:, first] * pos[:, second]


# ----------------------------------------------------------------------------
# CST: similarity to category prototypes -> pseudo labels.

def prototype_similarity(features, prototypes):
  """d [B, C] = mean_k cos(s_bc, P_ck).

  features: [B, C, d], prototypes: [C, K, d]. The mean over k of the cosines
  equals the cosine against the mean of the unit prototypes.
  """
  mean_unit = jnp.mean(_normalize(prototypes), axis=1)               # [C, d]
  return jnp.einsum("bcd,cd->bc", _normalize(features), mean_unit)


def cst_pseudo_labels(features, prototypes, threshold,
                      relaxation: str = "clip", sharpness: float = 10.0):
  """CST pseudo labels r_cst = clip(mean_k cos(s_c, P_ck) - theta_cst, 0, 1)."""
  return relax_threshold(prototype_similarity(features, prototypes), threshold,
                         relaxation, sharpness)


def complete_targets(targets, mask, pseudo):
  """(targets', mask'): unknown entries with pseudo > 0 become known positives.

  Known entries never change; unknown entries with pseudo <= 0 stay unknown.
  All arrays [B, C].
  """
  fill = (pseudo > 0) & (mask <= 0)
  return (jnp.where(fill, 1.0, targets).astype(targets.dtype),
          jnp.where(fill, 1.0, mask).astype(mask.dtype))


def prototype_loss(features, prototypes, targets, mask):
  """L_prototype: known positives 1 - d_c, known negatives 1 + d_c, unknown 0.

  d_c = mean_k cos(s_c, P_ck); mean over known entries (0 if none). The
  reference code computes `d * t + 1` with t in {-1, 0, 1}, which gives
  positives 1 + d (pushing them *away* from their prototypes) and counts
  unknown entries as 1; we implement the paper's intent instead.
  """
  d = prototype_similarity(features, prototypes)
  pos, neg = targets * mask, (1.0 - targets) * mask
  total = jnp.sum(pos * (1.0 - d) + neg * (1.0 + d))
  return total / jnp.maximum(1.0, jnp.sum(mask))


def instance_loss(features, targets, mask, rng):
  """L_instance: balanced cross-image contrast of same-class features.

  For every class c and pair of images a < b in the batch, with
  d = cos(s_ac, s_bc): positive-positive pairs give 1 - d; positive-negative
  and negative-negative pairs give 1 + d; pairs with an unknown label give
  nothing. All P positive-positive entries are kept; of each other kind,
  at most 2P drawn at random plus the P hardest (largest 1 + d) are kept,
  as the reference concatenates them (an entry both drawn and hardest
  counts twice). With P = 0 every entry of the other kinds is kept (the
  reference skips balancing then). Mean over kept entries, 0 if none.
  Fixed shapes: ranks from `top_k` over all B(B-1)/2 * C entries.

  features: [B, C, d]; targets, mask: [B, C]; rng: key for the draws.
  """
  b = features.shape[0]
  first, second = np.triu_indices(b, k=1)
  unit = _normalize(features)
  cos = jnp.einsum("acd,bcd->abc", unit, unit)[first, second]        # [Q, C]
  pos, neg = targets * mask, (1.0 - targets) * mask
  pp = pos[first] * pos[second]
  pn = pos[first] * neg[second] + neg[first] * pos[second]
  nn_ = neg[first] * neg[second]
  pull, push = (1.0 - cos).reshape(-1), (1.0 + cos).reshape(-1)
  num_pp = jnp.sum(pp)

  def rank(keys):
    """Position of every entry in descending order of keys: [E] int."""
    order = jax.lax.top_k(keys, keys.shape[0])[1]
    return jnp.zeros_like(order).at[order].set(jnp.arange(keys.shape[0]))

  def kept(kind, key):
    kind = kind.reshape(-1) > 0
    drawn = rank(jnp.where(kind, jax.random.uniform(key, kind.shape), -1.0))
    hard = rank(jnp.where(kind, jax.lax.stop_gradient(push), -jnp.inf))
    weight = (kind & (drawn < 2 * num_pp)).astype(push.dtype) + (
        kind & (hard < num_pp)).astype(push.dtype)
    return jnp.where(num_pp > 0, weight, kind.astype(push.dtype))

  key_pn, key_nn = jax.random.split(rng)
  w_pn, w_nn = kept(pn, key_pn), kept(nn_, key_nn)
  total = jnp.sum(pp.reshape(-1) * pull) + jnp.sum((w_pn + w_nn) * push)
  count = num_pp + jnp.sum(w_pn) + jnp.sum(w_nn)
  return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------
# DTL: thresholds learnt against the known labels.

def differential_threshold_loss(pseudo, targets, mask):
  """L_dtl = partial BCE with the pseudo label r used as a logit.

  Known positives pull r up (the threshold down), known negatives push r
  down (the threshold up). pseudo, targets, mask: [B, C].
  With the clip, theta is stationary where the opened known entries give
  sum_pos (1 - sigmoid(r)) = sum_neg sigmoid(r); as r is in [0, 1], 50-73 %
  of them are positive there, however well the scores separate the classes
  (a property of the reference's rule; test_hst checks it).
  """
  return losses.partial_bce(pseudo, targets, mask)


# ----------------------------------------------------------------------------
# Label vectors: GloVe from a local file, else embeddings of the label graph.

def _class_words(name: str) -> list[str]:
  return name.lower().replace("_", " ").replace("-", " ").split()


def load_word_vectors(path: str, class_names) -> np.ndarray:
  """[C, E] word vectors from a `.npy` ([C, E], class order) or a GloVe text
  file ("word v1 ... vE" per line; multi-word class names averaged)."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"config.model.word_vectors={path!r} does not exist. Give a local "
        ".npy of shape [num_classes, E] in the dataset's class order or a "
        "GloVe text file (e.g. glove.840B.300d.txt), or leave it empty to "
        "learn label embeddings from the label graph.")
  c = len(class_names)
  if path.endswith(".npy"):
    vectors = np.load(path).astype(np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != c:
      raise ValueError(f"{path}: expected word vectors [{c}, E] (one row per "
                       f"class), found shape {vectors.shape}.")
    return vectors
  wanted = {w for n in class_names for w in _class_words(n)}
  found: dict[str, np.ndarray] = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      word, _, rest = line.rstrip().partition(" ")
      if word.lower() in wanted and word.lower() not in found:
        found[word.lower()] = np.asarray(rest.split(), np.float32)
        if len(found) == len(wanted):
          break
  missing = [n for n in class_names
             if not any(w in found for w in _class_words(n))]
  if missing:
    raise ValueError(f"{path}: no vector for any word of class(es) {missing}.")
  return np.stack([np.mean([found[w] for w in _class_words(n) if w in found],
                           axis=0) for n in class_names]).astype(np.float32)


def graph_label_embeddings(adjacency, dim: int = 256, steps: int = 300,
                           seed: int = 0) -> np.ndarray:
  """[C, dim] embeddings whose cosine matrix fits `adjacency` (ASGE-like).

  Minimises sum_ij (cos(e_i, e_j) - A_ij)^2 with Adam from a seeded normal
  init; a few hundred jitted full-graph steps, deterministic.
  """
  target = jnp.asarray(adjacency, jnp.float32)
  tx = optax.adam(0.05)

  def objective(e):
    unit = _normalize(e)
    return jnp.sum((unit @ unit.T - target) ** 2)

  @jax.jit
  def fit(e):
    def step(carry, _):
      e, opt = carry
      grads = jax.grad(objective)(e)
      updates, opt = tx.update(grads, opt)
      return (optax.apply_updates(e, updates), opt), None
    (e, _), _ = jax.lax.scan(step, (e, tx.init(e)), None, length=steps)
    return e

  init = jax.random.normal(jax.random.PRNGKey(seed),
                           (target.shape[0], dim)) / np.sqrt(dim)
  return np.asarray(fit(init), np.float32)


def label_vectors_for(config, info, known_mask, cfg) -> tuple[np.ndarray, str]:
  """(vectors [C, E], where they came from) for the semantic decoupling."""
  path = config.model.get("word_vectors", "")
  if path:
    return load_word_vectors(path, info.class_names), f"word vectors {path}"
  try:
    asge = importlib.import_module("jaxmlc.methods.asge")
  except ModuleNotFoundError as e:
    if e.name != "jaxmlc.methods.asge":
      raise
    asge = None
  if asge is not None and hasattr(asge, "fit_label_embeddings"):
    accepted = inspect.signature(asge.fit_label_embeddings).parameters
    kwargs = {"dim": cfg.label_embedding_dim}
    if cfg.label_embedding_steps > 0:
      kwargs["steps"] = cfg.label_embedding_steps
    vectors = asge.fit_label_embeddings(
        info.train_labels, known_mask,
        **{k: v for k, v in kwargs.items() if k in accepted})
    return np.asarray(vectors, np.float32), "ASGE embeddings of the label graph"
  from jaxmlc import labelgraph
  adjacency = labelgraph.symmetric_conditional_adjacency(info.train_labels,
                                                         known_mask)
  vectors = graph_label_embeddings(adjacency, cfg.label_embedding_dim,
                                   cfg.label_embedding_steps or 300)
  return vectors, "cosine-fit embeddings of the label graph (HST fallback)"


# ----------------------------------------------------------------------------
# Prototypes: k-means over the known positives' semantic features.

def prototypes_due(next_epoch: int, cfg) -> bool:
  """Whether prototypes are (re)computed before `next_epoch` starts: at
  pseudo_label_epoch, then every prototype_every epochs."""
  start, every = cfg.pseudo_label_epoch, max(1, cfg.prototype_every)
  return next_epoch >= start and (next_epoch - start) % every == 0


def compute_prototypes(features_fn, variables, batches, num_classes, cfg,
                       rng, to_global=None, gather=None):
  """Prototypes [C, K, d] and valid [C] from one pass over the train split.

  Per batch only the s_c of known positives are kept on the host, in
  float16: M = (number of known positives) rows of d. At MS-COCO scale
  (82k images, ~2.9 positives each, prop 0.9, d = 1024) that is ~215k rows,
  ~0.44 GB; VG-200 ~2 GB. k-means then runs on the device per class chunk
  (`kmeans.kmeans_by_group`, padded blocks <= kmeans_max_chunk_elements).
  """
  to_global = to_global or (lambda x: x)
  gather = gather or np.asarray
  rows, classes = [], []
  for batch in batches:
    ex = batch["labeled"]
    valid = np.asarray(ex.get("valid", np.ones(len(ex["labels"]))))
    pos = np.asarray(ex["labels"]) * np.asarray(ex["label_mask"])
    pos = (pos * valid[:, None] > 0).astype(np.uint8)
    dev = to_global({"image": np.asarray(ex["image"]), "pos": pos})
    feats = np.asarray(gather(features_fn(variables, dev["image"])))
    pos = np.asarray(gather(dev["pos"])) > 0
    b, c = np.nonzero(pos)
    rows.append(feats[b, c])
    classes.append(c)
  d = int(variables["state"]["prototypes"].shape[-1])
  points = np.concatenate(rows) if rows else np.zeros((0, d), np.float16)
  ids = np.concatenate(classes) if classes else np.zeros((0,), np.int64)
  centres, counts = kmeans.kmeans_by_group(
      points, ids, num_classes, cfg.num_prototypes, rng,
      num_iters=cfg.kmeans_iters, init=cfg.kmeans_init,
      max_chunk_elements=cfg.kmeans_max_chunk_elements)
  return centres, (counts > 0).astype(np.float32), int(len(points))


# ----------------------------------------------------------------------------
# The method.

def _compute_dtype(config):
  precision = config.train.precision
  if precision not in ("float32", "bfloat16"):
    raise ValueError(f"config.train.precision={precision!r}: expected "
                     "'float32' or 'bfloat16'.")
  return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def _model_config(config) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {k: config.model.get(k, v) for k, v in MODEL_DEFAULTS.items()})


def build_model(config, num_classes: int, backbone: nn.Module | None = None):
  """SARL from the config; `backbone` overrides `config.model.backbone`."""
  cfg, mcfg = hst_config(config), _model_config(config)
  if backbone is None:
    from jaxmlc.models import get_backbone
    backbone = get_backbone(
        config.model.backbone, width=config.model.width,
        dtype=_compute_dtype(config),
        frozen_stages=tuple(config.model.frozen_stages))
  return SARL(backbone=backbone, num_classes=num_classes,
              feature_dim=mcfg.feature_dim, attention_dim=mcfg.attention_dim,
              output_dim=mcfg.output_dim, gnn_steps=mcfg.gnn_steps,
              reduce_norm=mcfg.reduce_norm,
              fine_feature_key=mcfg.fine_feature_key,
              isolate_aux=mcfg.isolate_aux,
              use_sarl=cfg.use_sarl, ist_threshold_init=cfg.ist_threshold_init,
              cst_threshold_init=cfg.cst_threshold_init,
              dtype=_compute_dtype(config))


@base.register("hst")
def build(config, info) -> base.Method:
  """HST for `info`'s dataset (DatasetInfo: class names, train labels)."""
  if info.input_kind != "image":
    raise ValueError(f"method 'hst' needs images; dataset {info.name!r} gives "
                     f"{info.input_kind!r}.")
  from jaxmlc import labelgraph
  from jaxmlc.data.partial import known_label_mask
  cfg = hst_config(config)
  num_classes = info.num_classes
  known = (known_label_mask(info.train_labels.shape,
                            config.data.known_label_proportion,
                            seed=config.data.mask_seed)
           * info.train_label_mask).astype(np.uint8)
  # Statistical graph from the known positives only (A_ij = P(j | i)).
  adjacency = jnp.asarray(
      labelgraph.conditional_probability(info.train_labels, known), jnp.float32)
  vectors, source = label_vectors_for(config, info, known, cfg)
  log.info("HST label vectors: %s, shape %s.", source, vectors.shape)
  label_vectors = jnp.asarray(vectors, jnp.float32)
  model = build_model(config, num_classes)
  split = config.data.get("train_split", "train")
  steps_per_epoch = max(
      1, info.num_examples[split] // config.train.global_batch_size)
  dim = model.feature_dim
  relax = dict(relaxation=cfg.threshold_relaxation,
               sharpness=cfg.threshold_sharpness)

  def init(rng, batch):
    images = jnp.asarray(batch["labeled"]["image"])
    variables = model.init(rng, images, label_vectors, adjacency, train=False)
    state = {"prototypes": jnp.zeros((num_classes, cfg.num_prototypes, dim)),
             "prototype_valid": jnp.zeros((num_classes,)),
             "prototypes_ready": jnp.zeros(())}
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}), "state": state}

  def model_variables(variables):
    return {"params": variables["params"],
            "batch_stats": variables["batch_stats"]}

  def loss_fn(variables, batch, rng, step):
    ex = batch["labeled"]
    t = jnp.asarray(ex["labels"], jnp.float32)
    m = jnp.asarray(ex["label_mask"], jnp.float32)
    out, updates = model.apply(model_variables(variables), ex["image"],
                               label_vectors, adjacency, train=True,
                               mutable=["batch_stats"])
    logits, pair_logits, s = out["logits"], out["pair_logits"], out["semantic"]
    theta_ist, theta_cst = out["thresholds"]
    state = variables["state"]
    step = jnp.asarray(step)
    epoch = step // steps_per_epoch
    on = epoch >= cfg.pseudo_label_epoch              # traced: no recompile
    ramp = jnp.clip(step / steps_per_epoch, 0.0, 1.0)
    cst_on = on & (state["prototypes_ready"] > 0)
    proto_valid = state["prototype_valid"][None, :]
    sg = jax.lax.stop_gradient
    gate = lambda flag, x: jnp.where(flag, x, 0.0)

    # IST: scores, pseudo labels, completed targets (hard rule, no gradient).
    q_ist = ist_scores(pair_logits, t, m)
    q_dtl = (ist_scores_leave_one_out(pair_logits, t, m)
             if cfg.dtl_leave_one_out else q_ist)
    r_ist = relax_threshold(q_dtl, theta_ist, **relax)
    t_ist, m_ist = complete_targets(t, m, sg(jnp.clip(q_ist - theta_ist, 0, 1)))
    # CST: the same from prototype similarity (classes without prototypes: 0).
    q_cst = prototype_similarity(s, state["prototypes"])
    r_cst = relax_threshold(q_cst, theta_cst, **relax) * proto_valid
    t_cst, m_cst = complete_targets(
        t, m, sg(jnp.clip(q_cst - theta_cst, 0, 1) * proto_valid))

    terms = {
        "bce": losses.partial_bce(logits, t, m),
        "bce_ist": losses.partial_bce(logits, t_ist, m_ist),
        "bce_cst": losses.partial_bce(logits, t_cst, m_cst),
        "cooc": losses.asymmetric_loss(
            pair_logits, pair_targets(t, m), gamma_pos=cfg.cooc_gamma_pos,
            gamma_neg=cfg.cooc_gamma_neg, clip=cfg.cooc_clip,
            mask=pair_targets(jnp.ones_like(m), m)
            if cfg.cooc_known_pairs_only else None),
        "dtl_ist": differential_threshold_loss(r_ist, t, m),
        "dtl_cst": differential_threshold_loss(r_cst, t, m * proto_valid),
        "instance": instance_loss(s, t, m, rng),
        "prototype": prototype_loss(s, state["prototypes"], t,
                                    m * proto_valid),
    }
    ist, cst, dtl = cfg.use_ist, cfg.use_cst, cfg.use_dtl
    weights = {
        "bce": 1.0,
        "bce_ist": gate(on & ist, cfg.weight_ist_bce),
        "bce_cst": gate(cst_on & cst, cfg.weight_cst_bce),
        "cooc": gate(ist, cfg.weight_cooc * ramp),
        "dtl_ist": gate(on & ist & dtl, cfg.weight_dtl_ist),
        "dtl_cst": gate(cst_on & cst & dtl, cfg.weight_dtl_cst),
        "instance": gate(cst, cfg.weight_instance * ramp),
        "prototype": gate(cst_on & cst, cfg.weight_prototype),
    }
    loss = sum(weights[k] * terms[k] for k in terms)

    unknown = 1.0 - m
    def filled(mask_after):   # fraction of unknown entries made positive,
      new = (mask_after - m) * unknown   # and how many of them are truly so
      return (jnp.sum(new) / jnp.maximum(1.0, jnp.sum(unknown)),
              jnp.sum(new * t) / jnp.maximum(1.0, jnp.sum(new)))
    ist_rate, ist_precision = filled(m_ist)
    cst_rate, cst_precision = filled(m_cst)
    aux = {**{f"loss_{k}": v for k, v in terms.items()},
           "theta_ist": theta_ist, "theta_cst": theta_cst,
           "ist_fill_rate": gate(on & ist, ist_rate),
           "ist_fill_precision": gate(on & ist, ist_precision),
           "cst_fill_rate": gate(cst_on & cst, cst_rate),
           "cst_fill_precision": gate(cst_on & cst, cst_precision),
           "pseudo_labels_on": on.astype(jnp.float32)}
    new_state = {"batch_stats": updates["batch_stats"], "state": state}
    return loss, aux, new_state

  def predict_fn(variables, examples):
    out = model.apply(model_variables(variables), examples["image"],
                      label_vectors, adjacency, train=False, pairs=False)
    return jax.nn.sigmoid(out["logits"])

  features_fn = jax.jit(lambda variables, images: model.apply(
      model_variables(variables), images, label_vectors, train=False,
      method=SARL.semantic_features).astype(jnp.float16))

  def prototype_hook(variables, epoch, env):
    """After epoch `epoch`: k-means prototypes if the next epoch needs them."""
    if not cfg.use_cst or not prototypes_due(epoch + 1, cfg):
      return variables
    rng = jax.random.fold_in(env.rng, epoch)
    centres, valid, count = compute_prototypes(
        features_fn, variables, env.train_batches(), num_classes, cfg, rng,
        to_global=getattr(env, "to_global", None),
        gather=getattr(env, "gather", None))
    old = variables["state"]
    new = {"prototypes": centres, "prototype_valid": valid,
           "prototypes_ready": np.asarray(1.0, np.float32)}
    # Keep the trainer's placement (e.g. replicated over the mesh).
    new = {k: (jax.device_put(v, old[k].sharding)
               if isinstance(old[k], jax.Array) else jnp.asarray(v))
           for k, v in new.items()}
    env.log(f"HST prototypes for epoch {epoch + 1}: k-means K="
            f"{cfg.num_prototypes} over {count} known-positive features, "
            f"{int(valid.sum())}/{num_classes} classes with positives.")
    return {**variables, "state": new}

  return base.Method(
      name="hst", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=hst_optimizer(config, cfg, steps_per_epoch),
      epoch_hooks=(prototype_hook,))


def hst_optimizer(config, cfg, steps_per_epoch: int):
  """The run's optimizer, with the DTL thresholds in a group of their own.

  The thresholds get no weight decay: with coupled decay and Adam, a
  threshold whose loss gradient is zero (before pseudo_label_epoch, or while
  the clip is flat) would receive the normalised decay alone and walk to 0
  at the full learning rate (measured: 0.5 -> 0.24 in 160 steps at lr 2e-3),
  silently changing the pseudo-label rule. They are frozen without DTL and
  use lr x threshold_lr_multiplier.
  """
  is_threshold = lambda path: path[:1] == ("thresholds",)
  model_tx = optim.make_optimizer(config, steps_per_epoch,
                                  extra_frozen=is_threshold)
  if cfg.use_dtl and cfg.threshold_lr_multiplier != 0:
    plain = config.copy_and_resolve_references()
    plain.optim.weight_decay = 0.0
    plain.optim.grad_clip = 0.0
    threshold_tx = optim.make_optimizer(
        plain, steps_per_epoch,
        lr_multipliers={"thresholds": cfg.threshold_lr_multiplier})
  else:
    threshold_tx = optax.set_to_zero()

  def labels(params):
    return {k: jax.tree.map(lambda _: "thresholds" if k == "thresholds"
                            else "model", v) for k, v in params.items()}
  return optax.multi_transform({"model": model_tx, "thresholds": threshold_tx},
                               labels)
