"""SARL: semantic-aware representation learning, HST's model (hst.md, Model).

backbone -> 1x1 conv + BN to d -> semantic decoupling guided by label
vectors (one d-vector per class) -> gated GNN over the class graph ->
element-wise classifier; plus the IST head that scores every unordered
class pair of an image (image-specific co-occurrence).

Flax modules only; losses and pseudo labels live in `jaxmlc/methods/hst.py`.
Shapes: B batch, h x w feature map, N = h * w positions, C classes,
E label-vector width, d feature width, I attention width, P = C(C-1)/2 pairs.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


class ElementwiseClassifier(nn.Module):
  """One weight vector and bias per output ("element-wise" layer).

  x: [B, N, D] -> [B, N] with y_n = <w_n, x_n> + b_n; init U(+-1/sqrt(D)) as
  the reference layer.
  """
  num_outputs: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    bound = 1.0 / np.sqrt(dim)
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32,
                                                 -bound, bound)
    weight = self.param("weight", init, (self.num_outputs, dim))
    bias = self.param("bias", init, (self.num_outputs,))
    out = jnp.einsum("bnd,nd->bn", x, weight.astype(self.dtype))
    return out + bias.astype(self.dtype)


class SemanticDecoupling(nn.Module):
  """Category-specific attention guided by label vectors.

  u_xc = tanh(F1 f_x * F2 e_c); a_xc = F4(F3 u_xc); softmax over x;
  s_c = sum_x a_xc f_x.  The [B, N, C, I] attention hidden is inherent to
  the tanh of a product; the pooling is one einsum so no [B, N, C, d]
  tensor is formed.
  """
  attention_dim: int = 512
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features, label_vectors):
    """features: [B, h, w, d], label_vectors: [C, E] ->
    (semantic [B, C, d], attention [B, N, C] summing to 1 over N)."""
    b, h, w, d = features.shape
    flat = features.reshape(b, h * w, d)
    dense = lambda n, bias, name: nn.Dense(n, use_bias=bias, dtype=self.dtype,
                                           name=name)
    image = dense(self.attention_dim, False, "image_proj")(flat)     # [B,N,I]
    label = dense(self.attention_dim, False, "label_proj")(
        label_vectors.astype(self.dtype))                            # [C,I]
    u = jnp.tanh(image[:, :, None, :] * label[None, None])           # [B,N,C,I]
    u = dense(self.attention_dim, True, "attention_hidden")(u)
    logit = dense(1, True, "attention_logit")(u)[..., 0]             # [B,N,C]
    attention = jax.nn.softmax(logit.astype(jnp.float32), axis=1)
    semantic = jnp.einsum("bnc,bnd->bcd", attention.astype(self.dtype), flat)
    return semantic, attention


class GatedGNN(nn.Module):
  """Gated graph network over the C class nodes (GRU update, shared weights).

  m_c = [sum_j A_cj h_j ; sum_j A^T_cj h_j]; z = sig(Wz m + Uz h);
  r = sig(Wr m + Ur h); h~ = tanh(Wh m + Uh (r * h)); h <- (1 - z) h + z h~.
  """
  steps: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency):
    """nodes: [B, C, d], adjacency: [C, C] (in-matrix; out-matrix = A^T)."""
    d = nodes.shape[-1]
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)
    wz, uz, wr, ur, wh, uh = (dense(n) for n in (
        "w_update", "u_update", "w_reset", "u_reset", "w_hidden", "u_hidden"))
    a_in = adjacency.astype(self.dtype)
    h = nodes
    for _ in range(self.steps):   # over propagation steps, not classes
      m = jnp.concatenate([jnp.einsum("ij,bjd->bid", a_in, h),
                           jnp.einsum("ji,bjd->bid", a_in, h)], -1)
      z = jax.nn.sigmoid(wz(m) + uz(h))
      r = jax.nn.sigmoid(wr(m) + ur(h))
      candidate = jnp.tanh(wh(m) + uh(r * h))
      h = (1.0 - z) * h + z * candidate
    return h


class PairHead(nn.Module):
  """IST co-occurrence head: one logit per unordered class pair (i < j).

  g_c = Dense_I(s_c); hidden_ij = ReLU(Dense_{2I->D}([g_i ; g_j]));
  logit_ij = <w_ij, Dense_D(hidden_ij)> + b_ij.  The first pair layer is
  computed as W_a g_i + W_b g_j from per-class products ([B, C, D] each), the
  same map as a Dense on the concatenation (its kernel is stored as one
  [2I, D] array) without a [B, P, 2I] tensor or P matmuls per class.
  """
  num_classes: int
  attention_dim: int = 512
  output_dim: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, semantic):
    """semantic: [B, C, d] -> pair logits [B, P] in hst.pair_index order."""
    first, second = np.triu_indices(self.num_classes, k=1)
    g = nn.Dense(self.attention_dim, dtype=self.dtype, name="pair_proj")(
        semantic)                                                    # [B,C,I]
    kernel = self.param("pair_hidden_kernel", nn.initializers.lecun_normal(),
                        (2 * self.attention_dim, self.output_dim))
    bias = self.param("pair_hidden_bias", nn.initializers.zeros,
                      (self.output_dim,))
    kernel = kernel.astype(self.dtype)
    left = g @ kernel[:self.attention_dim]                           # [B,C,D]
    right = g @ kernel[self.attention_dim:]
    bias = bias.astype(self.dtype)
    hidden = nn.relu(left[:, first] + right[:, second] + bias)
    hidden = nn.Dense(self.output_dim, dtype=self.dtype, name="pair_hidden2")(
        hidden)                                                      # [B,P,D]
    return ElementwiseClassifier(len(first), dtype=self.dtype,
                                 name="pair_classifier")(hidden)


class Thresholds(nn.Module):
  """HST's learnable pseudo-label thresholds theta_ist, theta_cst (DTL)."""
  ist_init: float = 1.0
  cst_init: float = 1.0

  @nn.compact
  def __call__(self):
    ist = self.param("ist", nn.initializers.constant(self.ist_init), ())
    cst = self.param("cst", nn.initializers.constant(self.cst_init), ())
    return ist, cst


class SARL(nn.Module):
  """HST's full model.

  backbone: a module with `__call__(x, train) -> {"layer4": [B, h, w, c],...}`
    (`jaxmlc.models.get_backbone`); becomes the submodule "backbone".
  use_sarl=False is the ablation without semantic decoupling and GNN: a
    Dense on the average-pooled backbone map gives the C logits (exactly the
    baseline's backbone + GAP + linear classifier; the reduce conv + BN is
    not on this path, it cost ~6 mAP from scratch), and the average-pooled
    reduced map, broadcast to every class, stands in for s_c in the IST head
    and the CST losses.
  reduce_norm: BatchNorm after the 1x1 reduce conv (the paper's; False only
    for diagnostics).
  isolate_aux: False (the paper). True: the IST pair head sees
    stop_gradient(s_c), and without SARL the reduce conv sees the stopped
    backbone map, so the auxiliary losses (L_cooc, L_instance, L_prototype,
    L_dtl) train their own layers but never pull on the backbone. With SARL
    only the pair head is cut off (s_c is also the classifier's path).
  fine_feature_key: "" (the paper), or a finer stage (e.g. "layer3") whose
    reduced map is added to the coarse one repeated to its grid (top-down
    fusion), for inputs so small that layer4 is 2x2.
  """
  backbone: nn.Module
  num_classes: int
  feature_dim: int = 1024
  attention_dim: int = 512
  output_dim: int = 1024
  gnn_steps: int = 3
  use_sarl: bool = True
  ist_threshold_init: float = 1.0
  cst_threshold_init: float = 1.0
  feature_key: str = "layer4"
  reduce_norm: bool = True
  fine_feature_key: str = ""
  isolate_aux: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.reduce_conv = nn.Conv(self.feature_dim, (1, 1), use_bias=False,
                               dtype=self.dtype)
    self.reduce_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    if self.fine_feature_key:
      self.fine_conv = nn.Conv(self.feature_dim, (1, 1), use_bias=False,
                               dtype=self.dtype)
      self.fine_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5,
                                  dtype=self.dtype)
    self.decoupling = SemanticDecoupling(self.attention_dim, dtype=self.dtype)
    self.gnn = GatedGNN(self.gnn_steps, dtype=self.dtype)
    self.fuse = nn.Dense(self.output_dim, dtype=self.dtype)
    self.classifier = ElementwiseClassifier(self.num_classes, dtype=self.dtype)
    # Named as the baseline's head, so one seed starts both from the same
    # weights (flax derives init keys from module names).
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)
    self.ist_head = PairHead(self.num_classes, self.attention_dim,
                             self.output_dim, dtype=self.dtype)
    self.thresholds = Thresholds(self.ist_threshold_init,
                                 self.cst_threshold_init)

  def _semantic(self, images, label_vectors, train: bool):
    """-> (semantic [B, C, d], pooled [B, d] or None)."""
    maps = self.backbone(images.astype(self.dtype), train=train)
    if self.feature_key not in maps:
      raise KeyError(f"SARL expects the backbone to return "
                     f"{self.feature_key!r}; it returned {sorted(maps)}.")
    raw = maps[self.feature_key]
    # Without SARL the reduced map feeds only the auxiliary heads/losses.
    aux_only = self.isolate_aux and not self.use_sarl
    f = self.reduce_conv(jax.lax.stop_gradient(raw) if aux_only else raw)
    if self.reduce_norm:
      f = self.reduce_bn(f, use_running_average=not train)
    if self.fine_feature_key:
      # Top-down fusion: the coarse reduced map, repeated to the finer
      # stage's grid, plus that stage's own reduced map.
      fine = self.fine_conv(maps[self.fine_feature_key])
      if self.reduce_norm:
        fine = self.fine_bn(fine, use_running_average=not train)
      ry, rx = fine.shape[1] // f.shape[1], fine.shape[2] // f.shape[2]
      f = jnp.repeat(jnp.repeat(f, ry, axis=1), rx, axis=2) + fine
    if not self.use_sarl:
      # The classifier sees the backbone's own pooled map (exactly the
      # baseline's GAP + linear); the reduced map stands in for s_c.
      reduced = jnp.mean(f, axis=(1, 2))
      semantic = jnp.broadcast_to(reduced[:, None],
                                  (f.shape[0], self.num_classes, f.shape[-1]))
      return semantic, jnp.mean(raw.astype(jnp.float32), axis=(1, 2))
    semantic, _ = self.decoupling(f, label_vectors)
    return semantic, None

  def __call__(self, images, label_vectors, adjacency, train: bool = False,
               pairs: bool = True):
    """images: [B, H, W, 3]; label_vectors: [C, E]; adjacency: [C, C].

    Returns a dict of float32 arrays: "logits" [B, C], "pair_logits" [B, P]
    (only when `pairs`), "semantic" [B, C, d], "thresholds" (theta_ist,
    theta_cst) scalars.
    """
    semantic, pooled = self._semantic(images, label_vectors, train)
    if self.use_sarl:
      nodes = self.gnn(semantic, adjacency)
      fused = jnp.tanh(self.fuse(jnp.concatenate([nodes, semantic], -1)))
      logits = self.classifier(fused)
    else:
      logits = self.head(pooled.astype(self.dtype))
    f32 = lambda x: x.astype(jnp.float32)
    out = {"logits": f32(logits), "semantic": f32(semantic),
           "thresholds": self.thresholds()}
    if pairs:
      out["pair_logits"] = f32(self.ist_head(
          jax.lax.stop_gradient(semantic) if self.isolate_aux else semantic))
    return out

  def semantic_features(self, images, label_vectors, train: bool = False):
    """The s_c alone ([B, C, d] float32), for the prototype pass."""
    return self._semantic(images, label_vectors, train)[0].astype(jnp.float32)
