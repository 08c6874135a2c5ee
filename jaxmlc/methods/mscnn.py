"""MSCNN-LCE-MIC: semi-supervised multi-label classification with a
multi-stage attention CNN, a label GCN and MFB fusion (mscnn.md).

James S. and Lakshmi C., "A Novel Framework for Semi-supervised
Multiple-label Image Classification using Multi-stage CNN and Visual
Attention Mechanism". Read top to bottom as the paper's section III:

A. Improved label propagation (`jaxmlc/propagation.py`): after every epoch
   an epoch hook embeds the labeled (train) and unlabeled images with the
   current network (F, L2-normalised), builds the kNN graph, weights its
   edges by the weighted-common-neighbour strength (eq. 1), solves
   (I - alpha W) Z = Y by CG and keeps pseudo labels [N_u, C] and entropy
   confidences [N_u] in the "state" collection.
B, C. Multi-stage VGG-16 with attention estimators after conv 7, 10, 13
   (eq. 2-5): F = concat(g_a^1, g_a^2, g_a^3)
   (`models/mscnn_nets.MultiStageAttentionCNN`).
D. Label co-occurrence embedding: two GCN layers (LeakyReLU 0.2) over
   gcn_normalize(noise_filtered_adjacency(P)) (eq. 6-8) with GloVe vectors
   (`mscnn.word_vectors`) or ASGE embeddings of the label graph as nodes.
E. MFB fusion of F with every label row W_i -> one logit per class; loss
   eq. 9 (`losses.batch_balanced_bce`) over the labeled batch and the
   pseudo-labelled unlabeled batch, each pseudo-labelled sample weighted by
   its confidence.

Module switches `mscnn.{label_propagation, multistage, attention, gcn, mfb}`
give the rows of the seed's Table IV (configs/mscnn_synthetic.py "table4").
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxmlc import labelgraph, losses, optim, propagation
from jaxmlc.data import info as data_info
from jaxmlc.data import pipeline
from jaxmlc.data.partial import known_label_mask
from jaxmlc.methods import base
from jaxmlc.methods.baseline import compute_dtype
from jaxmlc.models.mscnn_nets import MSCNN, MultiStageAttentionCNN

log = logging.getLogger(__name__)

# MSCNN's own keys (`config.mscnn`); configs/mscnn_coco.py has the paper's.
DEFAULTS = dict(
    # Table IV switches.
    label_propagation=True,    # pseudo labels for the unlabeled split
    multistage=True,           # estimators after conv 7, 10, 13 (else 13)
    attention=True,            # eq. 3-5 (else uniform weights = GAP)
    gcn=True,                  # label embeddings from the GCN (else Z)
    mfb=True,                  # MFB fusion (else F . W_i, or averaged heads)
    # A. Label propagation.
    propagation="improved",    # "improved" (WCN, eq. 1) | "lpa" (heat kernel)
    knn=10,
    alpha=0.99,
    cg_iterations=20,
    pseudo_threshold=0.5,
    affinity="heat",           # "heat" | "cosine_cubed" | "connectivity"
    degree_correction=False,   # threshold D^-1/2 Z (see propagation.py)
    # B, C. Network.
    fc_features=4096,          # VGG fc6/fc7 width (g)
    pool_size=7,               # VGG adaptive pool before fc6
    fc_dropout=0.5,
    # D. GCN.
    gcn_hidden=1024,
    gcn_out=0,                 # 0 = F's width
    gcn_negative_slope=0.2,
    adjacency_phi=1e-6,        # eq. 8
    adjacency_lam=1.0,
    adjacency_theta=1e-6,
    word_vectors="",           # .npy [C, E] or GloVe text; "" = ASGE
    label_embedding_dim=300,
    label_embedding_steps=0,   # ASGE fit steps; 0 = its default
    # E. MFB.
    mfb_factor_dim=358,
    mfb_group=2,
    mfb_normalize=False,
    mfb_dropout=0.1,
)


def mscnn_config(config) -> ml_collections.ConfigDict:
  """`config.mscnn` over DEFAULTS; unknown keys are an error with a hint."""
  cfg = base.section_config(config, "mscnn", DEFAULTS)
  if cfg.propagation not in propagation.METHODS:
    raise ValueError(f"config.mscnn.propagation={cfg.propagation!r}; "
                     f"expected one of {propagation.METHODS}.")
  return cfg


# ----------------------------------------------------------------------------
# D. Label graph and node inputs.

def label_graph(labels, known, cfg) -> np.ndarray:
  """gcn_normalize(eq. 8 on P(j | i) from the known positives) [C, C]."""
  conditional = labelgraph.conditional_probability(labels, known)
  filtered = labelgraph.noise_filtered_adjacency(
      conditional, phi=cfg.adjacency_phi, lam=cfg.adjacency_lam,
      theta=cfg.adjacency_theta)
  return labelgraph.gcn_normalize(filtered).astype(np.float32)


def label_nodes(info, known, cfg) -> tuple[np.ndarray, str]:
  """(node inputs Z [C, E], where they came from)."""
  if cfg.word_vectors:
    from jaxmlc.methods.hst import load_word_vectors
    return (load_word_vectors(cfg.word_vectors, info.class_names),
            f"word vectors {cfg.word_vectors}")
  try:
    from jaxmlc.methods.asge import fit_label_embeddings
  except ImportError:
    fit_label_embeddings = None
  if fit_label_embeddings is None:
    log.warning("MSCNN: no word vectors and no jaxmlc.methods.asge; the GCN "
                "gets one-hot label nodes.")
    return np.eye(info.num_classes, dtype=np.float32), "one-hot (fallback)"
  kwargs = {"dim": cfg.label_embedding_dim}
  if cfg.label_embedding_steps > 0:
    kwargs["steps"] = cfg.label_embedding_steps
  vectors = fit_label_embeddings(info.train_labels, known, **kwargs)
  return np.asarray(vectors, np.float32), "ASGE embeddings of the label graph"


def build_model(config, num_classes: int, cfg) -> MSCNN:
  dtype = compute_dtype(config)
  cnn = MultiStageAttentionCNN(
      backbone=config.model.backbone, width=config.model.width,
      fc_features=cfg.fc_features, pool_size=cfg.pool_size,
      fc_dropout=cfg.fc_dropout, multistage=cfg.multistage,
      attention=cfg.attention,
      frozen_stages=tuple(config.model.frozen_stages), dtype=dtype)
  return MSCNN(
      num_classes=num_classes, cnn=cnn, gcn=cfg.gcn, mfb=cfg.mfb,
      gcn_widths=(cfg.gcn_hidden, cfg.gcn_out),
      gcn_negative_slope=cfg.gcn_negative_slope,
      mfb_factor_dim=cfg.mfb_factor_dim, mfb_group=cfg.mfb_group,
      mfb_normalize=cfg.mfb_normalize, mfb_dropout=cfg.mfb_dropout,
      dtype=dtype)


# ----------------------------------------------------------------------------
# A. Pseudo labels for the unlabeled split.

def propagate_pseudo_labels(labeled_features, labels, mask,
                            unlabeled_features, cfg) -> dict:
  """Pseudo labels of the unlabeled rows from one joint graph.

  Args:
    labeled_features: [N_l, D]; labels, mask: [N_l, C] (known entries).
    unlabeled_features: [N_u, D].
  Returns:
    {"pseudo_labels": np.float32 [N_u, C], "confidence": np.float32 [N_u]}.
  """
  n_l = labeled_features.shape[0]
  features = np.concatenate([labeled_features, unlabeled_features])
  known = np.zeros((features.shape[0], labels.shape[1]), np.float32)
  known[:n_l] = np.asarray(labels, np.float32) * np.asarray(mask, np.float32)
  out = propagation.label_propagation(
      features, known, method=cfg.propagation, k=cfg.knn, alpha=cfg.alpha,
      iterations=cfg.cg_iterations, threshold=cfg.pseudo_threshold,
      kind=cfg.affinity, degree_correction=cfg.degree_correction)
  return {"pseudo_labels": np.asarray(out["pseudo_labels"][n_l:], np.float32),
          "confidence": np.asarray(out["confidence"][n_l:], np.float32)}


def _features_of(features_fn, variables, batches, env, with_labels: bool):
  """One pass: (features [N, D], labels, mask) in index order, padding cut."""
  feats, labels, masks = [], [], []
  for batch in batches:
    ex = batch["labeled"]
    dev = env.to_global({"image": np.asarray(ex["image"]),
                         "valid": np.asarray(ex["valid"])})
    f = np.asarray(env.gather(features_fn(variables, dev["image"])))
    valid = np.asarray(env.gather(dev["valid"])) > 0
    feats.append(f[valid])
    if with_labels:
      lab = env.to_global({"labels": np.asarray(ex["labels"]),
                           "label_mask": np.asarray(ex["label_mask"])})
      labels.append(np.asarray(env.gather(lab["labels"]))[valid])
      masks.append(np.asarray(env.gather(lab["label_mask"]))[valid])
  out = np.concatenate(feats)
  if not with_labels:
    return out, None, None
  return out, np.concatenate(labels), np.concatenate(masks)


# ----------------------------------------------------------------------------
# E. Loss on labeled + pseudo-labelled samples.

def semi_supervised_loss(logits, labels, mask, unlabeled_logits=None,
                         pseudo=None, confidence=None, ready=1.0):
  """Eq. 9 over the labeled and pseudo-labelled rows of one batch.

  Args:
    logits: [B, C]; labels, mask: [B, C] (mask = known entries).
    unlabeled_logits: [U, C] or None; pseudo: [U, C] pseudo labels;
    confidence: [U] sample weights; ready: 0 before the first propagation
      (the unlabeled rows are then masked out).
  """
  if unlabeled_logits is None:
    return losses.batch_balanced_bce(logits, labels, mask)
  u = unlabeled_logits.shape[0]
  return losses.batch_balanced_bce(
      jnp.concatenate([logits, unlabeled_logits]),
      jnp.concatenate([labels, pseudo]),
      jnp.concatenate([mask, jnp.full(pseudo.shape, ready, jnp.float32)]),
      sample_weight=jnp.concatenate([jnp.ones(logits.shape[:1]),
                                     confidence * jnp.ones((u,))]))


# ----------------------------------------------------------------------------
# The method.

@base.register("mscnn")
def build(config, info) -> base.Method:
  if info.input_kind != "image":
    raise ValueError(f"method 'mscnn' needs images; dataset {info.name!r} "
                     f"gives {info.input_kind!r}.")
  cfg = mscnn_config(config)
  num_classes = info.num_classes
  semi = bool(cfg.label_propagation)
  if semi and "unlabeled" not in info.num_examples:
    raise ValueError(
        f"mscnn.label_propagation=True needs an 'unlabeled' split; "
        f"{info.name} has {', '.join(sorted(info.num_examples))}. Fix: set "
        "--config.mscnn.label_propagation=False.")
  if semi and config.data.unlabeled_batch_size <= 0:
    raise ValueError(
        "mscnn.label_propagation=True trains on pseudo-labelled unlabeled "
        "images, but config.data.unlabeled_batch_size is 0. Fix: set it "
        "(e.g. --config.data.unlabeled_batch_size=32) or set "
        "--config.mscnn.label_propagation=False.")
  if not semi and config.data.unlabeled_batch_size > 0:
    log.warning("mscnn.label_propagation=False: the unlabeled stream "
                "(data.unlabeled_batch_size=%d) is read but unused.",
                config.data.unlabeled_batch_size)
  known = (known_label_mask(info.train_labels.shape,
                            config.data.known_label_proportion,
                            seed=config.data.mask_seed)
           * info.train_label_mask).astype(np.uint8)
  adjacency = jnp.asarray(label_graph(info.train_labels, known, cfg))
  if cfg.gcn or cfg.mfb:
    vectors, where = label_nodes(info, known, cfg)
    log.info("MSCNN label nodes: %s, shape %s.", where, vectors.shape)
  else:
    vectors = np.zeros((num_classes, 1), np.float32)   # unused
  nodes = jnp.asarray(vectors)
  model = build_model(config, num_classes, cfg)
  steps_per_epoch = max(1, pipeline.steps_per_epoch(config, info))
  num_unlabeled = info.num_examples.get("unlabeled", 0) if semi else 0
  total_steps = config.train.steps or config.train.epochs * steps_per_epoch

  def init(rng, batch):
    images = jnp.asarray(batch["labeled"]["image"])
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng},
                           images, nodes, adjacency, train=False)
    state = {"pseudo_ready": jnp.zeros(())}
    if semi:     # (orbax refuses zero-size arrays, so none without LP)
      state.update(pseudo_labels=jnp.zeros((num_unlabeled, num_classes)),
                   confidence=jnp.zeros((num_unlabeled,)))
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}), "state": state}

  def net_variables(variables):
    return {"params": variables["params"],
            "batch_stats": variables["batch_stats"]}

  def loss_fn(variables, batch, rng, step):
    del step
    labeled = batch["labeled"]
    images = labeled["image"]
    b = images.shape[0]
    unlabeled = batch.get("unlabeled") if semi else None
    if unlabeled is not None:     # one forward pass, one BatchNorm update
      images = jnp.concatenate([images, unlabeled["image"]])
    out, updates = model.apply(net_variables(variables), images, nodes,
                               adjacency, train=True, mutable=["batch_stats"],
                               rngs={"dropout": rng})
    logits = out["logits"]
    state = variables["state"]
    if unlabeled is None:
      loss = semi_supervised_loss(logits, labeled["labels"],
                                  labeled["label_mask"])
      aux = {}
    else:
      index = unlabeled["index"]
      pseudo = state["pseudo_labels"][index]
      confidence = state["confidence"][index]
      loss = semi_supervised_loss(
          logits[:b], labeled["labels"], labeled["label_mask"], logits[b:],
          pseudo, confidence, state["pseudo_ready"])
      aux = {"labeled_loss": losses.batch_balanced_bce(
                 logits[:b], labeled["labels"], labeled["label_mask"]),
             "pseudo_positives": jnp.mean(jnp.sum(pseudo, -1)),
             "pseudo_confidence": jnp.mean(confidence)}
    new_state = {"batch_stats": updates.get("batch_stats",
                                            variables["batch_stats"]),
                 "state": state}
    return loss, aux, new_state

  def predict_fn(variables, examples):
    out = model.apply(net_variables(variables), examples["image"], nodes,
                      adjacency, train=False)
    return jax.nn.sigmoid(out["logits"])

  features_fn = jax.jit(lambda variables, images: model.apply(
      net_variables(variables), images, nodes, adjacency, train=False,
      features_only=True)["features"])
  source_cache = {}

  def pseudo_label_hook(variables, epoch, env):
    """After each epoch: propagate labels to the unlabeled split (sec. A)."""
    if (epoch + 1) * steps_per_epoch >= total_steps:
      return variables          # no epoch left to use them
    if "source" not in source_cache:    # the hook env gives the train pass only
      source_cache["source"] = data_info.load(env.config.data)
    source = source_cache["source"]
    feats_l, labels, mask = _features_of(features_fn, variables,
                                         env.train_batches(), env, True)
    unlabeled_pass = pipeline.eval_batches(
        env.config, source, "unlabeled", process_index=jax.process_index(),
        process_count=jax.process_count())
    feats_u, _, _ = _features_of(features_fn, variables, unlabeled_pass, env,
                                 False)
    out = propagate_pseudo_labels(feats_l, labels, mask, feats_u, cfg)
    env.log(f"MSCNN pseudo labels after epoch {epoch}: {cfg.propagation} "
            f"propagation over {len(feats_l)} labeled + {len(feats_u)} "
            f"unlabeled images, {out['pseudo_labels'].sum(1).mean():.2f} "
            f"positives per image, mean confidence "
            f"{out['confidence'].mean():.3f}.")
    state = {"pseudo_labels": jnp.asarray(out["pseudo_labels"]),
             "confidence": jnp.asarray(out["confidence"]),
             "pseudo_ready": jnp.ones((), jnp.float32)}
    return {**variables, "state": state}

  return base.Method(
      name="mscnn", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=optim.make_optimizer(config, steps_per_epoch),
      epoch_hooks=(pseudo_label_hook,) if semi else (),
      uses_unlabeled=semi)
