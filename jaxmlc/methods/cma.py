"""CMA: cross-modality attention with semantic graph embedding (cma_asge.md).

You, Guo, Cui, Sun, Li, Hua, Fu, "Cross-Modality Attention with Semantic
Graph Embedding for Multi-Label Classification" (AAAI 2020). Read top to
bottom as the method section:

1. Label embeddings E [C, E] (fixed inputs, computed once on the host):
   "asge" (methods/asge.py, eq. 1-5; alpha 0.1 for video), "glove" (a local
   .npy/.txt word-vector file), "word2vec" (skip-gram with negative sampling
   on each training image's label set as a sentence, window = the longest
   set), or "onehot" (identity: no label relations; the ablation).
2. Visual features I: images -> ResNet maps (layer3, layer4 and one extra
   residual block on layer4 for multi-scale, eq. 11; layer4 alone
   otherwise), each reduced by a 1x1 conv; video -> SNet over frame
   features, one scale over time.
3. Per scale a CMA head (models/attention.py): CMT (eq. 6), cosine
   attention (eq. 7-8), category features (eq. 9), per-class classifier
   (eq. 10); attention="self" is the paper's self-attention ablation.
4. Loss: losses.frequency_weighted_bce (eq. 12) on each scale's logits,
   averaged over scales; prediction: the mean of the scales' probabilities.
"""
from __future__ import annotations

import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxmlc import losses, optim
from jaxmlc.methods import asge, base
from jaxmlc.methods.baseline import compute_dtype
from jaxmlc.models import get_backbone
from jaxmlc.models.attention import CMAHead
from jaxmlc.models.resnet import BasicBlock, Bottleneck

log = logging.getLogger(__name__)

# CMA's own keys (`config.cma`); configs/cma_*.py carry the paper's values.
DEFAULTS = dict(
    attention="cma",             # "cma" | "self" (ablation: one shared map)
    label_embedding="asge",      # "asge" | "glove" | "word2vec" | "onehot"
    word_vectors="",             # "glove": local .npy [C, E] or GloVe .txt
    embedding_dim=256,           # ASGE / word2vec width
    embedding_seed=0,
    asge_alpha=None,             # eq. 4-5; None: 0.1 for video, off for images
                                 # (0.0 is "off" for video: A_ij >= 0)
    asge_steps=asge.DEFAULT_STEPS,
    word2vec_steps=2000,
    word2vec_negatives=5,
    word2vec_batch=512,
    multiscale=True,             # MS-CMA (layer3, layer4, extra) vs layer4
    reduce_channels=1024,        # 1x1 conv on each visual map; 0 = none
    cmt_layers=2,
    beta=0.0,                    # eq. 12: 0.0 MS-COCO, 0.4 NUS-WIDE
    snet_features=(1024, 1024, 1024, 1024),   # video path
    snet_kernel=3,
    snet_pool=2,
)
EMBEDDINGS = ("asge", "glove", "word2vec", "onehot")
ATTENTIONS = ("cma", "self")
IMAGE_SCALES = ("layer3", "layer4", "extra")


def cma_config(config) -> ml_collections.ConfigDict:
  """`config.cma` over DEFAULTS; unknown keys and values are errors."""
  cfg = base.section_config(config, "cma", DEFAULTS)
  if cfg.label_embedding not in EMBEDDINGS:
    raise ValueError(f"config.cma.label_embedding={cfg.label_embedding!r}: "
                     f"expected one of {EMBEDDINGS}.")
  if cfg.attention not in ATTENTIONS:
    raise ValueError(f"config.cma.attention={cfg.attention!r}: expected one "
                     f"of {ATTENTIONS}.")
  if cfg.label_embedding == "glove" and not cfg.word_vectors:
    raise ValueError("config.cma.label_embedding='glove' needs "
                     "config.cma.word_vectors: a local .npy [C, E] (class "
                     "order) or GloVe text file (e.g. glove.840B.300d.txt). "
                     "Or use label_embedding='asge', which needs no file.")
  return cfg


# ----------------------------------------------------------------------------
# 1. Label embeddings.

def word2vec_embeddings(labels, mask=None, dim: int = 256, steps: int = 2000,
                        negatives: int = 5, batch_size: int = 512,
                        seed: int = 0) -> np.ndarray:
  """Skip-gram with negative sampling over label sets (the W2V ablation).

  Each training sample's positive labels are one sentence and the window is
  the longest sentence, so every ordered pair (i, j), i != j, of labels of
  one sample is a (centre, context) pair: pairs are drawn with probability
  proportional to the co-occurrence count M_ij, negatives from the label
  frequency ** 0.75 (word2vec's unigram table). Adam on the mean of
  -log s(v_i . u_j) - sum_n log s(-v_i . u_n); returns the input vectors v.

  Args:
    labels: [N, C] in {0, 1}; mask: [N, C], 1 = known (None: all).
    dim, steps, negatives, batch_size, seed: as named; deterministic.
  Returns:
    np.float32 [C, dim].
  """
  positives = np.asarray(labels, np.float64)
  if mask is not None:
    positives = positives * np.asarray(mask, np.float64)
  num_classes = positives.shape[1]
  counts = positives.T @ positives
  frequency = np.diag(counts).copy()
  np.fill_diagonal(counts, 0.0)
  key = jax.random.PRNGKey(seed)
  v_init = jax.random.uniform(key, (num_classes, dim), jnp.float32,
                              -0.5 / dim, 0.5 / dim)
  if counts.sum() == 0:
    log.warning("word2vec: no two labels ever co-occur; the label vectors "
                "stay at their random initialisation.")
    return np.asarray(v_init)
  with np.errstate(divide="ignore"):
    log_pairs = jnp.asarray(np.log(counts.ravel() / counts.sum()), jnp.float32)
    log_noise = jnp.asarray(np.log(frequency ** 0.75 / np.sum(
        frequency ** 0.75)), jnp.float32)
  tx = optax.adam(0.01)

  def objective(params, step_key):
    pair_key, noise_key = jax.random.split(step_key)
    pairs = jax.random.categorical(pair_key, log_pairs, shape=(batch_size,))
    centre, context = pairs // num_classes, pairs % num_classes
    noise = jax.random.categorical(noise_key, log_noise,
                                   shape=(batch_size, negatives))
    v = params["v"][centre]                                   # [b, dim]
    positive = jnp.sum(v * params["u"][context], -1)          # [b]
    negative = jnp.einsum("bd,bnd->bn", v, params["u"][noise])
    return -jnp.mean(jax.nn.log_sigmoid(positive)
                     + jnp.sum(jax.nn.log_sigmoid(-negative), -1))

  @jax.jit
  def run(params):
    def step(carry, step_key):
      params, opt_state = carry
      grads = jax.grad(objective)(params, step_key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    keys = jax.random.split(jax.random.fold_in(key, 1), steps)
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
    return params["v"]

  params = {"v": v_init, "u": jnp.zeros((num_classes, dim), jnp.float32)}
  return np.asarray(run(params), np.float32)


def label_embeddings_for(config, info, known_mask=None) -> tuple[np.ndarray, str]:
  """(E [C, E] float32, a description) from `config.cma.label_embedding`."""
  cfg = cma_config(config)
  kind = cfg.label_embedding
  labels = info.train_labels
  if kind == "onehot":
    return np.eye(info.num_classes, dtype=np.float32), "one-hot (no relations)"
  if kind == "glove":
    from jaxmlc.methods.hst import load_word_vectors
    return (load_word_vectors(cfg.word_vectors, info.class_names),
            f"word vectors {cfg.word_vectors}")
  if kind == "word2vec":
    return (word2vec_embeddings(
        labels, known_mask, dim=cfg.embedding_dim, steps=cfg.word2vec_steps,
        negatives=cfg.word2vec_negatives, batch_size=cfg.word2vec_batch,
        seed=cfg.embedding_seed), "word2vec skip-gram on label sets")
  alpha = cfg.asge_alpha
  if alpha is None and info.input_kind == "frames":
    alpha = 0.1       # the paper's relaxation for large sparse video graphs
  return (asge.fit_label_embeddings(
      labels, known_mask, dim=cfg.embedding_dim, alpha=alpha,
      steps=cfg.asge_steps, seed=cfg.embedding_seed),
          f"ASGE (alpha={alpha}, {cfg.asge_steps} steps)")


# ----------------------------------------------------------------------------
# 2-3. The model.

def extra_block(in_channels: int, dtype, name: str) -> nn.Module:
  """One residual block on layer4 with stride 2 and a quarter of its channels
  (ResNet-101: 14x14x2048 -> 7x7x512 at 448 px)."""
  out = max(in_channels // 4, 4)
  if out % 4 == 0:
    return Bottleneck(out // 4, stride=2, dtype=dtype, name=name)
  return BasicBlock(out, stride=2, dtype=dtype, name=name)


class CMANet(nn.Module):
  """(MS-)CMA over images or frame features.

  __call__(x, label_embeddings [C, E], train) -> (logits f32 [S, B, C],
    attention {scale: [B, C, M]} ([B, 1, M] for "self")), with x images
    [B, H, W, 3] (scales `scales`, M = h*w of each map) or frames [B, T, D]
    (one scale "time", M = T').
  `spatial_shapes(image_size)` gives each scale's (h, w) without compute.
  """
  num_classes: int
  input_kind: str = "image"
  backbone: str = "resnet101"
  width: int = 64
  frozen_stages: tuple[str, ...] = ()
  scales: tuple[str, ...] = IMAGE_SCALES
  attention: str = "cma"
  reduce_channels: int = 1024
  cmt_layers: int = 2
  snet_features: tuple[int, ...] = (1024, 1024, 1024, 1024)
  snet_kernel: int = 3
  snet_pool: int = 2
  dtype: jnp.dtype = jnp.float32

  def _visual_maps(self, x, train):
    if self.input_kind == "frames":
      net = get_backbone("snet", features=tuple(self.snet_features),
                         kernel_size=self.snet_kernel,
                         pool_size=self.snet_pool, dtype=self.dtype,
                         name="backbone")
      return {"time": net(x.astype(self.dtype), train=train)[
          f"block{len(self.snet_features)}"]}
    net = get_backbone(self.backbone, width=self.width, dtype=self.dtype,
                       frozen_stages=self.frozen_stages, name="backbone")
    stages = net(x.astype(self.dtype), train=train)
    maps = {}
    for scale in self.scales:
      if scale == "extra":
        block = extra_block(stages["layer4"].shape[-1], self.dtype,
                            "extra_block")
        maps[scale] = block(stages["layer4"], not train)
      else:
        maps[scale] = stages[scale]
    return maps

  @nn.compact
  def __call__(self, x, label_embeddings, train: bool):
    logits, attention = [], {}
    for scale, feature_map in self._visual_maps(x, train).items():
      visual = feature_map.reshape(feature_map.shape[0], -1,
                                   feature_map.shape[-1])       # [B, M, Cv]
      if self.reduce_channels:
        # Conv 1x1 + BN + ReLU: keeps I non-negative, like the backbone's
        # own maps, so eq. 9 averages features of one kind at every scale.
        visual = nn.Dense(self.reduce_channels, use_bias=False,
                          dtype=self.dtype, name=f"reduce_{scale}")(visual)
        visual = nn.relu(nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            dtype=self.dtype, name=f"reduce_bn_{scale}")(visual))
      scale_logits, scale_attention = CMAHead(
          self.num_classes, attention=self.attention,
          cmt_layers=self.cmt_layers, dtype=self.dtype,
          name=f"head_{scale}")(visual, label_embeddings, train)
      logits.append(scale_logits)
      attention[scale] = scale_attention
    return jnp.stack(logits), attention


def image_scales(cfg) -> tuple[str, ...]:
  return IMAGE_SCALES if cfg.multiscale else ("layer4",)


def build_model(config, info) -> CMANet:
  """CMANet for a dataset's input kind from `config.model` and `config.cma`."""
  cfg = cma_config(config)
  if info.input_kind not in ("image", "frames"):
    raise ValueError(
        f"method 'cma' attends over image locations or video time steps; "
        f"dataset {info.name!r} gives {info.input_kind!r}. Use its images "
        "(e.g. nuswide with config.data.nuswide_input='image') or frame "
        "features.")
  return CMANet(
      num_classes=info.num_classes, input_kind=info.input_kind,
      backbone=config.model.backbone, width=config.model.width,
      frozen_stages=tuple(config.model.frozen_stages),
      scales=image_scales(cfg) if info.input_kind == "image" else ("time",),
      attention=cfg.attention, reduce_channels=int(cfg.reduce_channels),
      cmt_layers=int(cfg.cmt_layers),
      snet_features=tuple(int(f) for f in cfg.snet_features),
      snet_kernel=int(cfg.snet_kernel), snet_pool=int(cfg.snet_pool),
      dtype=compute_dtype(config))


def input_of(examples, input_kind: str):
  return examples["frames" if input_kind == "frames" else "image"]


# ----------------------------------------------------------------------------
# 4. Loss and prediction.

def positive_frequency(labels, mask=None) -> np.ndarray:
  """p_k of eq. 12: per class, the fraction of (known) training samples
  that are positive. labels, mask: [N, C] -> f32 [C]."""
  labels = np.asarray(labels, np.float64)
  mask = np.ones_like(labels) if mask is None else np.asarray(mask, np.float64)
  return (np.sum(labels * mask, 0) / np.maximum(np.sum(mask, 0), 1.0)).astype(
      np.float32)


def multiscale_loss(logits, targets, mask, pos_freq, beta):
  """Eq. 12 on each scale's logits [S, B, C], averaged over the S scales."""
  per_scale = jax.vmap(lambda l: losses.frequency_weighted_bce(
      l, targets, pos_freq, beta, mask))(logits)
  return jnp.mean(per_scale), per_scale


def fused_probabilities(logits):
  """Eq. 11: the mean over scales of sigmoid(logits [S, B, C]) -> [B, C]."""
  return jnp.mean(jax.nn.sigmoid(logits.astype(jnp.float32)), axis=0)


def known_mask_for(config, info) -> np.ndarray:
  """The known-label mask the trainer applies (partial-label runs)."""
  from jaxmlc.data.partial import known_label_mask
  return (known_label_mask(info.train_labels.shape,
                           config.data.known_label_proportion,
                           seed=config.data.mask_seed)
          * info.train_label_mask).astype(np.uint8)


@base.register("cma")
def build(config, info) -> base.Method:
  cfg = cma_config(config)
  model = build_model(config, info)
  known = known_mask_for(config, info)
  embeddings, source = label_embeddings_for(config, info, known)
  log.info("CMA label embeddings: %s, shape %s.", source, embeddings.shape)
  label_embeddings = jnp.asarray(embeddings, jnp.float32)
  pos_freq = jnp.asarray(positive_frequency(info.train_labels, known))
  beta = float(cfg.beta)
  split = config.data.get("train_split", "train")
  steps_per_epoch = max(
      1, info.num_examples[split] // config.train.global_batch_size)
  kind = info.input_kind
  scale_names = model.scales

  def init(rng, batch):
    x = jnp.asarray(input_of(batch["labeled"], kind))
    variables = model.init(rng, x, label_embeddings, train=False)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}

  def loss_fn(variables, batch, rng, step):
    del rng, step
    ex = batch["labeled"]
    (logits, _), updates = model.apply(
        variables, input_of(ex, kind), label_embeddings, train=True,
        mutable=["batch_stats"])
    loss, per_scale = multiscale_loss(logits, ex["labels"], ex["label_mask"],
                                      pos_freq, beta)
    aux = {f"loss_{name}": per_scale[i] for i, name in enumerate(scale_names)}
    return loss, aux, {"batch_stats": updates["batch_stats"]}

  def predict_fn(variables, examples):
    logits, _ = model.apply(variables, input_of(examples, kind),
                            label_embeddings, train=False)
    return fused_probabilities(logits)

  return base.Method(
      name="cma", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=optim.make_optimizer(config, steps_per_epoch))


# ----------------------------------------------------------------------------
# Attention maps (Fig. 4 / Fig. 5 of the paper).

def attention_maps(config, info, variables, inputs, embeddings=None):
  """Scores and per-scale attention of a batch, reshaped for plotting.

  Args:
    inputs: images [B, H, W, 3] (normalised as the pipeline does) or frames
      [B, T, D].
    embeddings: [C, E]; None recomputes them from the config (deterministic).
  Returns:
    (scores np [B, C], {scale: np [B, C', h, w] images / [B, C', T'] video}),
    C' = C for "cma" and 1 for "self".
  """
  model = build_model(config, info)
  if embeddings is None:
    embeddings, _ = label_embeddings_for(config, info,
                                         known_mask_for(config, info))
  logits, attention = jax.jit(
      lambda v, x, e: model.apply(v, x, e, train=False))(
          {"params": variables["params"],
           "batch_stats": variables.get("batch_stats", {})},
          jnp.asarray(inputs), jnp.asarray(embeddings, jnp.float32))
  scores = np.asarray(fused_probabilities(logits))
  maps = {}
  for scale, a in attention.items():
    a = np.asarray(a)
    if info.input_kind == "image":
      side = int(round(np.sqrt(a.shape[-1])))
      h = side if side * side == a.shape[-1] else 1
      a = a.reshape(a.shape[:2] + (h, a.shape[-1] // h))
    maps[scale] = a
  return scores, maps


def save_attention_maps(images, scores, maps, class_names, plot_dir: str,
                        targets=None, top_k: int = 3,
                        prefix: str = "attention") -> list[str]:
  """Writes PLOT_DIR/attention_<n>.png per example: the input, then for its
  top_k scored classes each scale's map upsampled over the image (images) or
  the attention over time steps (video)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(plot_dir, exist_ok=True)
  paths = []
  scales = list(maps)
  for n in range(len(scores)):
    top = np.argsort(-scores[n], kind="stable")[:top_k]
    video = maps[scales[0]].ndim == 3
    rows, cols = len(top), len(scales) + (0 if video else 1)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows),
                             squeeze=False)
    image = None
    if not video:
      image = np.asarray(images[n], np.float32)
      image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    for r, k in enumerate(top):
      truth = "" if targets is None else (" +" if targets[n][k] > 0 else " -")
      title = f"{class_names[k][:18]} {scores[n][k]:.2f}{truth}"
      if not video:
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(title, fontsize=7)
        axes[r, 0].axis("off")
      for s, scale in enumerate(scales):
        a = maps[scale][n, min(k, maps[scale].shape[1] - 1)]
        ax = axes[r, s + (0 if video else 1)]
        if video:
          ax.bar(np.arange(a.shape[-1]), a)
          ax.set_title(f"{title} [{scale}]", fontsize=7)
        else:
          ax.imshow(image)
          ax.imshow(a, cmap="jet", alpha=0.5, interpolation="bilinear",
                    extent=(0, image.shape[1], image.shape[0], 0))
          ax.set_title(scale, fontsize=7)
          ax.axis("off")
    fig.tight_layout()
    path = os.path.join(plot_dir, f"{prefix}_{n}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  return paths
