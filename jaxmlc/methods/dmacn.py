"""DMACN: deep modality assistance co-training (semi-supervised, one modality
missing at test).

The seed's section III with specs/dmacn.md, top to bottom. An image x1
assists a non-image modality x2 (tags, fMRI) that is all there is at test:
  III-C  four feature generators (`models.dmacn_nets`): G1, G4 on images,
         G2, G3 on x2; classifier i is shared by view i of both modalities
         (eq. 1-2); per-view BCE (eq. 3-4) and the classifiers'
         orthogonality L_mv (eq. 5).
  III-D  translators SFT1 (image -> non-image) and SFT2 (back): L_sp on
         paired features (eq. 6), the cycle L_su on unpaired images (eq. 7).
  III-E  co-regularisation L_cr = L_cr^(1) + L_cr^(2) (eq. 8-9): JS between
         the two views' predictions on unlabeled image features and on the
         non-image features imputed from them by SFT1. Total: eq. 10.
  III-F  GCN re-training: eq. 11 turns the frozen pre-trained classifier
         rows W_i^0 into the classifiers used from then on, over the graph
         of eq. 12 (`labelgraph.reweighted_adjacency`).
  Fig. 3 prediction from x2 alone: classifier i on G_i(x2) and on
         SFT2(G_i(x2)), the four probabilities averaged ("Our-m" also
         averages classifier i on SFT1(G1/G4(x1))).

Training is three trainer phases (section IV-A-4), each with its own
optimizer and per-group learning rates (`group_learning_rates`):
  "warmup"   image generators and classifiers alone: image BCE + L_mv +
             L_cr^(1) (the image modality converges slower).
  "pretrain" everything but the GCN with eq. 10, Adam 1e-3 then 1e-4.
  "retrain"  the GCN 1e-3, image generators 1e-4, non-image generators and
             translators 1e-5, eq. 10 without L_mv; the plain classifiers
             are frozen (the GCN replaces them).
An epoch hook at the end of "pretrain" copies the classifier rows into
variables["state"]["w0"] and sets "gcn_active", so the checkpoint holds
W^0 and predictions switch to the GCN classifiers from then on.

Choices where the seed is silent (all in `DEFAULTS`):
  - L_mv uses |cos| (`orthogonality_absolute`, see specs/dmacn.md).
  - BCE terms use `losses.partial_bce` (mean over the batch and the known
    labels: eq. 3-4 when every label is known).
  - Gradients of L_sp and L_su reach the translators and the generators
    on both sides, as eq. 6-7 are written. Their unsquared distances
    between d-dim features are large next to the BCE terms: with weight 1
    on the from-scratch synthetic runs every generator collapsed (BCE at
    the label prior), so configs/dmacn_synthetic.py uses
    lambda_sp = lambda_su = 0.01; `translation_stop_gradient` makes the
    targets constants (it did not rescue weight 1 there);
    `translators_only` also makes their inputs constants, so eq. 6-7 train
    SFT1/SFT2 alone and cannot collapse the generators.
  - The GCN starts at the identity-preserving init (`gcn_init`), so
    re-training starts from A A W^0 rather than from random classifiers;
    "random" is ML-GCN's init. `gcn_residual` (off by default) re-trains
    W^0 + eq. 11 instead, starting at W^0 itself (`models.gcn`); the
    synthetic config uses it, with its measurements.
  - "no GCN" keeps the re-training stage (same steps) and trains the plain
    classifiers there at the GCN's learning rate.
  - "no unlabeled data" drops every term on the unlabeled batch (L_su,
    L_cr^(1), L_cr^(2)): co-regularisation exists only on unlabeled data.
  - `baseline_only`: the non-image-only reference (G2 + classifier 1 with
    BCE), one phase as long as the three, Adam 1e-3 then 1e-4.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxmlc import labelgraph, losses, optim
from jaxmlc.data import pipeline
from jaxmlc.methods import base
from jaxmlc.methods.baseline import compute_dtype
from jaxmlc.models.dmacn_nets import DMACNNets, classifier_logits

log = logging.getLogger(__name__)

DEFAULTS = dict(
    features=512,                 # d of every generator and translator
    nonimage_key="modality2",     # batch field of x2
    nonimage_bins=(1, 4, 9, 25, 100),
    nonimage_hidden=4096,
    image_mlp_hidden=(1024,),     # G1/G4 on image feature vectors
    pretrained_image="",          # torch/converted ResNet file for G1 and G4
    lambda_mv=400.0,
    lambda_cr=100.0,
    lambda_sp=1.0,
    lambda_su=1.0,
    orthogonality_absolute=True,  # |cos| in eq. 5 (False: the signed cosine)
    translation_stop_gradient=False,  # True: eq. 6-7 targets are constants
    translators_only=False,       # True: eq. 6-7 train SFT1/SFT2 alone
    # Table IX ablation switches.
    use_translators=True,         # False drops L_sp, L_su, L_cr^(2), SFT heads
    use_multiview_loss=True,      # L_mv
    use_coregularization=True,    # L_cr^(1) and L_cr^(2)
    use_imputed_coregularization=True,  # L_cr^(2)
    use_gcn=True,
    use_unlabeled=True,           # False: no unpaired images at all
    baseline_only=False,          # G2 + classifier 1 with BCE only
    predict_with_image=False,     # "Our-m": also the image's SFT1 heads
    # Schedule (epochs) and learning rates.
    warmup_epochs=2,
    pretrain_epochs=10,
    pretrain_lr_drop_epochs=5,    # epochs of "pretrain" at pretrain_lr
    retrain_epochs=5,
    warmup_lr=1e-3,
    pretrain_lr=1e-3,
    pretrain_lr_after_drop=1e-4,
    retrain_gcn_lr=1e-3,
    retrain_image_lr=1e-4,
    retrain_nonimage_lr=1e-5,
    # Eq. 11-12.
    adjacency_tau=0.4,
    adjacency_p=0.2,
    gcn_hidden=0,                 # 0: 2 (d + 1)
    gcn_init="identity",          # "identity" | "random"
    gcn_residual=False,           # True: W^0 + eq. 11 (not the paper's)
)

# Loss terms of eq. 10, unweighted (see `loss_terms`).
TERMS = ("v_image", "v_nonimage", "mv", "sp", "su", "cr1", "cr2")
# Top-level parameter groups of `DMACNNets`.
GROUPS = ("g1", "g4", "g2", "g3", "classifier1", "classifier2", "sft1",
          "sft2", "gcn")
PHASES = ("warmup", "pretrain", "retrain")
_UNLABELED_TERMS = ("su", "cr1", "cr2")


def dmacn_config(config) -> ml_collections.ConfigDict:
  """`config.dmacn` over DEFAULTS; unknown keys are an error with a hint."""
  return base.section_config(config, "dmacn", DEFAULTS)


# ----------------------------------------------------------------------------
# III-C..E: the terms of eq. 10 from the intermediate features.

def active_terms(phase: str, cfg) -> tuple[str, ...]:
  """The terms of eq. 10 that `phase` trains with, given the switches."""
  if phase not in PHASES:
    raise ValueError(f"DMACN phase {phase!r}; expected one of {PHASES}.")
  on = {"v_image"}
  if cfg.use_multiview_loss and phase != "retrain":   # lmv dropped with GCN
    on.add("mv")
  if cfg.use_unlabeled and cfg.use_coregularization:
    on.add("cr1")
  if phase != "warmup":
    on.add("v_nonimage")
    if cfg.use_translators:
      on.add("sp")
      if cfg.use_unlabeled:
        on.add("su")
        if cfg.use_coregularization and cfg.use_imputed_coregularization:
          on.add("cr2")
  return tuple(t for t in TERMS if t in on)


def term_weights(cfg) -> dict[str, float]:
  """Eq. 10's weight of each term (1/2 of eq. 3-4 is inside the terms)."""
  return dict(v_image=1.0, v_nonimage=1.0, mv=float(cfg.lambda_mv),
              sp=float(cfg.lambda_sp), su=float(cfg.lambda_su),
              cr1=float(cfg.lambda_cr), cr2=float(cfg.lambda_cr))


def view_bce(logits, labels, mask):
  """Eq. 3-4 for each view: [V] BCE over the batch's known labels.

  logits: [V, B, C]; labels, mask: [B, C].
  """
  return jnp.stack([losses.partial_bce(logits[v], labels, mask)
                    for v in range(logits.shape[0])])


def loss_terms(out: Mapping[str, jax.Array], labels, mask,
               active: Sequence[str], absolute: bool = True,
               stop_target_gradient: bool = False) -> dict:
  """The unweighted terms of eq. 10 (0 for the inactive ones).

  out: intermediate features (`compute_features`), views stacked first:
    "rows" [2, C, d+1] the classifiers in use;
    "image" f^(1)_i [2, B, d], "nonimage" f^(2)_i [2, B, d];
    "image_to_nonimage" SFT1(f^(1)_i), "nonimage_to_image" SFT2(f^(2)_i);
    "image_u" f^(1)_iu [2, Bu, d], "imputed_u" SFT1(f^(1)_iu),
    "cycle_u" SFT2(SFT1(f^(1)_iu)).
  labels, mask: [B, C] of the paired batch.
  absolute: |cos| in eq. 5.
  stop_target_gradient: treat the targets of eq. 6-7 (f^(2)_i, f^(1)_i,
    f^(1)_iu) as constants, so that only the translated side is pulled;
    with gradients on both sides the terms also have the trivial minimum of
    every feature collapsing to one point. False is eq. 6-7 as written.
  Returns {term: scalar} for every name in TERMS:
    v_image = 1/2 sum_i L_vi^(1), v_nonimage = 1/2 sum_i L_vi^(2) (eq. 3-4),
    mv = eq. 5 on the rows, sp = eq. 6, su = eq. 7, cr1 = eq. 8, cr2 = eq. 9.
  """
  rows = out["rows"]
  target = jax.lax.stop_gradient if stop_target_gradient else (lambda x: x)
  zero = jnp.zeros((), jnp.float32)
  terms = {t: zero for t in TERMS}
  if "v_image" in active:
    terms["v_image"] = 0.5 * jnp.sum(
        view_bce(classifier_logits(out["image"], rows), labels, mask))
  if "v_nonimage" in active:
    terms["v_nonimage"] = 0.5 * jnp.sum(
        view_bce(classifier_logits(out["nonimage"], rows), labels, mask))
  if "mv" in active:
    terms["mv"] = losses.orthogonality_loss(rows[0], rows[1],
                                            absolute=absolute)
  if "sp" in active:
    terms["sp"] = 0.5 * sum(
        losses.translation_loss(out["image_to_nonimage"][i],
                                target(out["nonimage"][i]))
        + losses.translation_loss(out["nonimage_to_image"][i],
                                  target(out["image"][i]))
        for i in range(2))
  if "su" in active:
    terms["su"] = sum(losses.cycle_consistency_loss(target(out["image_u"][i]),
                                                    out["cycle_u"][i])
                      for i in range(2))
  if "cr1" in active:
    logits = classifier_logits(out["image_u"], rows)
    terms["cr1"] = losses.js_coregularization(logits[0], logits[1])
  if "cr2" in active:
    logits = classifier_logits(out["imputed_u"], rows)
    terms["cr2"] = losses.js_coregularization(logits[0], logits[1])
  return terms


def total_loss(terms: Mapping[str, jax.Array], active: Sequence[str],
               weights: Mapping[str, float]):
  """Eq. 10: sum of the active terms with their weights."""
  return sum(weights[t] * terms[t] for t in active)


def compute_features(model: DMACNNets, variables, batch, active: Sequence[str],
                     *, image_key: str, nonimage_key: str, w0, adjacency,
                     use_gcn_rows: bool, train: bool,
                     stop_translator_inputs: bool = False):
  """The intermediate features `loss_terms` needs for the `active` terms.

  variables: {"params", "batch_stats"}; batch: {"labeled": {image_key,
  nonimage_key, ...}, "unlabeled": {image_key}} (the latter only read when
  an unlabeled term is active). w0 [2, C, d+1] and adjacency [C, C] feed
  eq. 11 when `use_gcn_rows`. `stop_translator_inputs`: the generators'
  features enter SFT1/SFT2 as constants (no gradient back through the
  translators into G1..G4). Returns (out, updates) with `out` as
  `loss_terms` documents and `updates` the new batch_stats.
  """
  into = jax.lax.stop_gradient if stop_translator_inputs else (lambda x: x)
  labeled = batch["labeled"]
  unlabeled = any(t in active for t in _UNLABELED_TERMS)
  nonimage = any(t in active for t in ("v_nonimage", "sp"))

  def run(module):
    out = {"rows": (module.gcn_rows(w0, adjacency) if use_gcn_rows
                    else module.classifier_rows())}
    x1 = labeled[image_key]
    size = x1.shape[0]
    if unlabeled:       # one pass per generator (BatchNorm sees both)
      x1 = jnp.concatenate([x1, batch["unlabeled"][image_key]])
    image = module.image_features(x1, train)
    out["image"] = image[:, :size]
    if unlabeled:
      out["image_u"] = image[:, size:]
      if "su" in active or "cr2" in active:
        out["imputed_u"] = module.sft1_image_to_nonimage(
            into(out["image_u"]))
        out["cycle_u"] = module.sft2_nonimage_to_image(out["imputed_u"])
    if nonimage:
      out["nonimage"] = module.nonimage_features(labeled[nonimage_key])
    if "sp" in active:
      out["image_to_nonimage"] = module.sft1_image_to_nonimage(
          into(out["image"]))
      out["nonimage_to_image"] = module.sft2_nonimage_to_image(
          into(out["nonimage"]))
    return out

  return model.apply(variables, method=run, mutable=["batch_stats"])


# ----------------------------------------------------------------------------
# Fig. 3: prediction.

def head_probabilities(model: DMACNNets, variables, examples, cfg, adjacency,
                       *, image_key: str, nonimage_key: str, with_gcn: bool):
  """Fig. 3's heads before averaging: [H, 2, B, C] probabilities.

  Head 0: classifier v on G_v(x2) (v = 1, 2 on the second axis); head 1
  (with translators): on SFT2(G_v(x2)); head 2 ("Our-m"): on SFT1 of the
  image's view-v features. The classifiers are the GCN's once
  state["gcn_active"] is set.
  """
  state = variables["state"]

  def run(module):
    rows = module.classifier_rows()
    if with_gcn:
      rows = jnp.where(state["gcn_active"] > 0,
                       module.gcn_rows(state["w0"], adjacency), rows)
    nonimage = module.nonimage_features(examples[nonimage_key])
    heads = [nonimage]
    if cfg.use_translators:
      heads.append(module.sft2_nonimage_to_image(nonimage))
    if cfg.predict_with_image:      # "Our-m"
      image = module.image_features(examples[image_key], False)
      heads.append(module.sft1_image_to_nonimage(image))
    return jax.vmap(lambda f: jax.nn.sigmoid(classifier_logits(f, rows)))(
        jnp.stack(heads))

  return model.apply({"params": variables["params"],
                      "batch_stats": variables["batch_stats"]}, method=run)


# ----------------------------------------------------------------------------
# Phases: per-group learning rates, one optimizer each.

def phase_names(cfg) -> tuple[str, ...]:
  return ("baseline",) if cfg.baseline_only else PHASES


def group_learning_rates(phase: str, cfg) -> dict[str, float]:
  """{parameter group: learning rate} of a phase; 0 = frozen."""
  lrs = {g: 0.0 for g in GROUPS}
  translator_groups = ("sft1", "sft2")
  if phase == "baseline":
    lrs.update(g2=cfg.pretrain_lr, classifier1=cfg.pretrain_lr)
  elif phase == "warmup":
    lr = cfg.warmup_lr
    lrs.update(g1=lr, g4=lr, classifier1=lr, classifier2=lr)
  elif phase == "pretrain":
    lrs.update({g: cfg.pretrain_lr for g in GROUPS if g != "gcn"})
  elif phase == "retrain":
    image, nonimage = cfg.retrain_image_lr, cfg.retrain_nonimage_lr
    lrs.update(g1=image, g4=image, g2=nonimage, g3=nonimage, sft1=nonimage,
               sft2=nonimage)
    if cfg.use_gcn:
      lrs["gcn"] = cfg.retrain_gcn_lr
    else:   # no GCN: the plain classifiers take its place (and its rate)
      lrs.update(classifier1=cfg.retrain_gcn_lr,
                 classifier2=cfg.retrain_gcn_lr)
  else:
    raise ValueError(f"DMACN phase {phase!r}; expected one of "
                     f"{('baseline',) + PHASES}.")
  if not cfg.use_translators:
    lrs.update({g: 0.0 for g in translator_groups})
  return {g: float(v) for g, v in lrs.items()}


def phase_optimizer(config, steps_per_epoch: int, lrs: Mapping[str, float],
                    drop_after_steps: int = 0,
                    drop_factor: float = 1.0) -> optax.GradientTransformation:
  """`optim.make_optimizer` with absolute per-group rates, constant (then
  multiplied by `drop_factor` from step `drop_after_steps` of the phase on,
  when that is > 0).

  The optimizer kind, weight decay and clipping come from `config.optim`;
  frozen groups (rate 0) and `config.model.frozen_stages` of the image
  backbones get exactly zero updates.
  """
  missing = sorted(set(GROUPS) - set(lrs))
  if missing:
    raise ValueError(f"phase_optimizer: no learning rate for group(s) "
                     f"{missing}; every group of {GROUPS} needs one.")
  c = config.copy_and_resolve_references()
  c.optim.lr = 1.0            # multipliers below are the absolute rates
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  frozen_stages = tuple(config.model.get("frozen_stages", ()))

  def extra_frozen(path) -> bool:
    return (len(path) >= 3 and path[0] in ("g1", "g4")
            and path[1] == "backbone" and path[2] in frozen_stages)

  tx = optim.make_optimizer(c, steps_per_epoch, extra_frozen=extra_frozen,
                            lr_multipliers=dict(lrs))
  if drop_after_steps > 0 and drop_factor != 1.0:
    factor = float(drop_factor)
    # A scale after Adam's direction is exactly a learning-rate change.
    tx = optax.chain(tx, optax.scale_by_schedule(
        lambda count: jnp.where(count < drop_after_steps, 1.0, factor)))
  return tx


# ----------------------------------------------------------------------------
# The method.

def gcn_used(cfg) -> bool:
  """The GCN classifiers exist only when a re-training stage follows."""
  return bool(cfg.use_gcn and not cfg.baseline_only
              and int(cfg.retrain_epochs) > 0)


def adjacency_of(config, info, cfg) -> np.ndarray:
  """Eq. 12 from the known labels of the training set: [C, C] float32."""
  from jaxmlc.data.partial import known_label_mask
  known = (known_label_mask(info.train_labels.shape,
                            config.data.known_label_proportion,
                            seed=config.data.mask_seed)
           * info.train_label_mask).astype(np.uint8)
  probability = labelgraph.conditional_probability(info.train_labels, known)
  return labelgraph.reweighted_adjacency(
      probability, tau=cfg.adjacency_tau, p=cfg.adjacency_p).astype(np.float32)


def image_key_of(info) -> str:
  if info.input_kind == "image":
    return "image"
  if info.input_kind == "features":
    return "features"
  raise ValueError(
      f"method 'dmacn' needs an image modality (pixels or an image feature "
      f"vector); dataset {info.name!r} gives {info.input_kind!r}. Fix: use a "
      "dataset with 'image' or 'features' plus a paired non-image field.")


def build_model(config, info, cfg) -> DMACNNets:
  return DMACNNets(
      num_classes=info.num_classes, features=int(cfg.features),
      backbone=config.model.backbone, width=int(config.model.width),
      frozen_stages=tuple(config.model.get("frozen_stages", ())),
      image_mlp_hidden=tuple(cfg.image_mlp_hidden),
      nonimage_bins=tuple(cfg.nonimage_bins),
      nonimage_hidden=int(cfg.nonimage_hidden),
      gcn_hidden=int(cfg.gcn_hidden), gcn_init=cfg.gcn_init,
      gcn_residual=bool(cfg.gcn_residual),
      dtype=compute_dtype(config))


def _check(config, info, cfg):
  key = cfg.nonimage_key
  if key not in info.feature_dims:
    raise ValueError(
        f"method 'dmacn': dataset {info.name!r} has no non-image field "
        f"{key!r} (its vector fields: {sorted(info.feature_dims)}). Fix: set "
        "config.dmacn.nonimage_key to one of them.")
  if cfg.use_unlabeled and not cfg.baseline_only and not (
      config.data.unlabeled_batch_size > 0):
    raise ValueError(
        "method 'dmacn' trains on unpaired images (L_su, L_cr) but "
        "config.data.unlabeled_batch_size is 0. Fix: set it (e.g. "
        "--config.data.unlabeled_batch_size=100), or switch them off with "
        "--config.dmacn.use_unlabeled=False.")
  if cfg.predict_with_image and not cfg.use_translators:
    raise ValueError("config.dmacn.predict_with_image ('Our-m') averages "
                     "SFT1 heads, but use_translators is False. Fix: turn one "
                     "of them off.")
  if config.model.get("pretrained", ""):
    raise ValueError(
        "method 'dmacn' has two image backbones (g1/backbone, g4/backbone); "
        "config.model.pretrained loads into 'backbone' only. Fix: set "
        "config.dmacn.pretrained_image instead and leave config.model."
        "pretrained empty.")
  if not 0 <= cfg.pretrain_lr_drop_epochs <= cfg.pretrain_epochs:
    raise ValueError(
        f"config.dmacn.pretrain_lr_drop_epochs={cfg.pretrain_lr_drop_epochs} "
        f"must be in [0, pretrain_epochs={cfg.pretrain_epochs}].")


def _load_pretrained_image(variables, path: str):
  """G1 and G4's backbones from one torch/converted file (section IV-A-4)."""
  from jaxmlc.models import pretrained
  for view in ("g1", "g4"):
    variables = pretrained.load_into(variables, path,
                                     prefix=(view, "backbone"))
  return variables


@base.register("dmacn")
def build(config, info) -> base.Method:
  cfg = dmacn_config(config)
  _check(config, info, cfg)
  image_key, nonimage_key = image_key_of(info), cfg.nonimage_key
  model = build_model(config, info, cfg)
  adjacency = jnp.asarray(adjacency_of(config, info, cfg))
  steps_per_epoch = max(1, pipeline.steps_per_epoch(config, info))
  absolute = bool(cfg.orthogonality_absolute)
  weights = term_weights(cfg)
  names = phase_names(cfg)
  epochs = dict(warmup=int(cfg.warmup_epochs),
                pretrain=int(cfg.pretrain_epochs),
                retrain=int(cfg.retrain_epochs))
  gcn_start_epoch = epochs["warmup"] + epochs["pretrain"]
  uses_unlabeled = bool(cfg.use_unlabeled) and not cfg.baseline_only
  with_gcn = gcn_used(cfg)

  def init(rng, batch):
    labeled = batch["labeled"]
    variables = dict(model.init(rng, labeled[image_key],
                                labeled[nonimage_key], adjacency,
                                method=DMACNNets.init_all))
    if cfg.pretrained_image:
      variables = _load_pretrained_image(variables, cfg.pretrained_image)
    rows = model.apply({"params": variables["params"]},
                       method=DMACNNets.classifier_rows)
    variables["state"] = {
        "w0": rows,
        "gcn_active": jnp.asarray(float(with_gcn and gcn_start_epoch == 0))}
    variables.setdefault("batch_stats", {})
    return variables

  def model_variables(variables):
    return {"params": variables["params"],
            "batch_stats": variables["batch_stats"]}

  def aux_of(terms):
    """The same aux keys in every phase (the trainer averages log windows)."""
    return {f"loss_{t}": terms[t] for t in TERMS}

  def baseline_loss(variables, batch):
    labeled = batch["labeled"]

    def run(module):
      rows = module.classifier1()[None]
      return classifier_logits(module.g2(labeled[nonimage_key])[None], rows)

    logits = model.apply(model_variables(variables), method=run)
    loss = losses.partial_bce(logits[0], labeled["labels"],
                              labeled["label_mask"])
    terms = {t: jnp.zeros((), jnp.float32) for t in TERMS}
    terms["v_nonimage"] = loss
    return loss, aux_of(terms), {"batch_stats": variables["batch_stats"],
                                 "state": variables["state"]}

  def loss_fn(variables, batch, rng, step, phase=names[0]):
    del rng, step   # no dropout; the phase carries the schedule
    if phase == "baseline":
      return baseline_loss(variables, batch)
    active = active_terms(phase, cfg)
    labeled = batch["labeled"]
    out, updates = compute_features(
        model, model_variables(variables), batch, active,
        image_key=image_key, nonimage_key=nonimage_key,
        w0=variables["state"]["w0"], adjacency=adjacency,
        use_gcn_rows=phase == "retrain" and cfg.use_gcn, train=True,
        stop_translator_inputs=bool(cfg.translators_only))
    terms = loss_terms(out, labeled["labels"], labeled["label_mask"], active,
                       absolute, bool(cfg.translation_stop_gradient
                                      or cfg.translators_only))
    loss = total_loss(terms, active, weights)
    return loss, aux_of(terms), {
        "batch_stats": updates.get("batch_stats", {}),
        "state": variables["state"]}

  def predict_fn(variables, examples):
    if cfg.baseline_only:
      def run(module):
        return jax.nn.sigmoid(classifier_logits(
            module.g2(examples[nonimage_key])[None],
            module.classifier1()[None]))[0]
      return model.apply(model_variables(variables), method=run)
    return jnp.mean(head_probabilities(
        model, variables, examples, cfg, adjacency, image_key=image_key,
        nonimage_key=nonimage_key, with_gcn=with_gcn), axis=(0, 1))

  def freeze_pretrained_classifiers(variables, epoch, env):
    """End of "pretrain": W_i^0 <- the classifier rows; GCN from now on."""
    if epoch != gcn_start_epoch - 1:
      return variables
    rows = model.apply({"params": variables["params"]},
                       method=DMACNNets.classifier_rows)
    env.log(f"DMACN: classifier rows frozen as the GCN's W^0 after epoch "
            f"{epoch} (re-training starts).")
    state = dict(variables["state"], w0=rows,
                 gcn_active=jnp.ones((), jnp.float32))
    return dict(variables, state=state)

  phases = []
  for name in names:
    lrs = group_learning_rates(name, cfg)
    if name == "baseline":
      phase_epochs = sum(epochs.values())
      drop = epochs["warmup"] + int(cfg.pretrain_lr_drop_epochs)
    else:
      phase_epochs = epochs[name]
      drop = int(cfg.pretrain_lr_drop_epochs) if name == "pretrain" else 0
    if phase_epochs <= 0:
      continue
    factor = cfg.pretrain_lr_after_drop / cfg.pretrain_lr if drop else 1.0
    tx = phase_optimizer(config, steps_per_epoch, lrs,
                         drop_after_steps=drop * steps_per_epoch,
                         drop_factor=factor)
    phases.append(base.Phase(name, phase_epochs, tx,
                             switches={"terms": active_terms(name, cfg)
                                       if name != "baseline" else
                                       ("v_nonimage",)}))
  if not phases:
    raise ValueError("config.dmacn: every phase has 0 epochs; set "
                     "warmup_epochs / pretrain_epochs / retrain_epochs.")
  hooks = ()
  if with_gcn and gcn_start_epoch > 0:
    hooks = (freeze_pretrained_classifiers,)
  log.info("DMACN phases: %s.", ", ".join(
      f"{p.name} ({p.epochs} epochs: {', '.join(p.switches['terms'])})"
      for p in phases))
  return base.Method(
      name="dmacn", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=phases[0].optimizer, epoch_hooks=hooks, phases=tuple(phases),
      uses_unlabeled=uses_unlabeled)
