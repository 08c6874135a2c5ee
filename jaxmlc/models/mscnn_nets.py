"""MSCNN's networks: multi-stage VGG-16 with attention estimators (sec.
III-B, III-C), label GCN (III-D) and MFB fusion (III-E).

Attention estimator s after conv layer 7, 10 or 13 (local map l^s, n
positions) with the global vector g = fc7:
  c_i = <l_i, g>                       eq. 3 (g projected to l's width
                                        when the widths differ)
  a = softmax(c) over positions        eq. 4
  g_a^s = sum_i a_i l_i                eq. 5
F = concat(g_a^1, g_a^2, g_a^3) (eq. 2's concatenation).

Module switches (the seed's Table IV):
  multistage=False: only the conv13 estimator.
  attention=False: uniform weights a_i = 1/n (global average pooling of
    each stage); with multistage also off, F = g (a plain VGG-16).
  gcn, mfb: label embeddings W = GCN(Z, A) (else the node inputs Z
    themselves); logits = MFB(F, W) (else F . W_i as ML-GCN when the GCN is
    on). With both off, one Dense head per stage, logits averaged (step 4).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmlc.models import get_backbone
from jaxmlc.models.fusion import MFB
from jaxmlc.models.label_gcn import LeakyLabelGCN

STAGES = ("conv7", "conv10", "conv13")


def attention_pool(local, global_vector):
  """Eq. 3-5. local [B, H, W, Cl], global_vector [B, Cl] ->
  (g_a [B, Cl], attention a [B, H*W] summing to 1)."""
  b = local.shape[0]
  flat = local.reshape(b, -1, local.shape[-1])
  compatibility = jnp.einsum("bnc,bc->bn", flat, global_vector)
  weights = jax.nn.softmax(compatibility.astype(jnp.float32), axis=-1)
  pooled = jnp.einsum("bn,bnc->bc", weights.astype(flat.dtype), flat)
  return pooled, weights


class AttentionEstimator(nn.Module):
  """One stage's estimator: (local [B, H, W, Cl], g [B, Dg]) ->
  (g_a [B, Cl], a [B, H*W]). use_attention=False: uniform a."""
  use_attention: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, local, global_vector):
    width = local.shape[-1]
    if not self.use_attention:
      n = local.shape[1] * local.shape[2]
      return (local.mean(axis=(1, 2)),
              jnp.full((local.shape[0], n), 1.0 / n, jnp.float32))
    if global_vector.shape[-1] != width:
      global_vector = nn.Dense(width, use_bias=False, dtype=self.dtype,
                               name="project")(global_vector)
    return attention_pool(local, global_vector)


class MultiStageAttentionCNN(nn.Module):
  """images [B, H, W, 3] -> {"features": F [B, D], "stage_features": tuple
  of [B, D_s], "attention": tuple of [B, n_s], "global": g [B, fc]}."""
  backbone: str = "vgg16_bn"
  width: int = 64
  fc_features: int = 4096
  pool_size: int = 7
  fc_dropout: float = 0.5
  multistage: bool = True
  attention: bool = True
  frozen_stages: tuple[str, ...] = ()
  dtype: Any = jnp.float32

  @property
  def stages(self) -> tuple[str, ...]:
    return STAGES if self.multistage else STAGES[-1:]

  def _net(self):
    return get_backbone(self.backbone, width=self.width,
                        fc_features=self.fc_features,
                        pool_size=self.pool_size, dropout=self.fc_dropout,
                        frozen_stages=self.frozen_stages, dtype=self.dtype,
                        name="backbone")

  @nn.compact
  def __call__(self, images, train: bool):
    maps = self._net()(images.astype(self.dtype), train=train)
    g = maps["fc7"]
    if not (self.multistage or self.attention):   # plain VGG-16
      return {"features": g.astype(jnp.float32), "stage_features": (g,),
              "attention": (), "global": g}
    pooled, weights = [], []
    for stage in self.stages:
      g_a, a = AttentionEstimator(self.attention, self.dtype,
                                  name=f"attention_{stage}")(maps[stage], g)
      pooled.append(g_a.astype(jnp.float32))
      weights.append(a)
    return {"features": jnp.concatenate(pooled, axis=-1),
            "stage_features": tuple(pooled), "attention": tuple(weights),
            "global": g}


class MSCNN(nn.Module):
  """(images [B, H, W, 3], nodes Z [C, E], adjacency [C, C]) ->
  {"logits": [B, C], "features": F [B, D], "attention": ...}.

  gcn_widths: (hidden, out); out 0 = F's width (needed by the dot product
  when mfb is off).
  """
  num_classes: int
  cnn: MultiStageAttentionCNN
  gcn: bool = True
  mfb: bool = True
  gcn_widths: tuple[int, int] = (1024, 0)
  gcn_negative_slope: float = 0.2
  mfb_factor_dim: int = 358
  mfb_group: int = 2
  mfb_normalize: bool = False
  mfb_dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, nodes, adjacency, train: bool,
               features_only: bool = False):
    out = self.cnn(images, train)
    features = out["features"]
    if features_only:
      return out
    if self.gcn:
      hidden, width = self.gcn_widths
      labels = LeakyLabelGCN((hidden, width or features.shape[-1]),
                             self.gcn_negative_slope, self.dtype,
                             name="gcn")(nodes, adjacency)
    else:
      labels = jnp.asarray(nodes, jnp.float32)
    if self.mfb:
      logits = MFB(self.mfb_factor_dim, self.mfb_group, self.mfb_normalize,
                   self.mfb_dropout, self.dtype, name="mfb")(
                       features, labels, train)
    elif self.gcn:                 # ML-GCN's dot product
      if labels.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"MSCNN with gcn and without mfb scores F . W_i, so the GCN "
            f"output width must equal F's ({features.shape[-1]}); found "
            f"{labels.shape[-1]}. Fix: set mscnn.gcn_out=0.")
      logits = features @ labels.T.astype(features.dtype)
    else:                          # step 4: one head per estimator, averaged
      logits = jnp.mean(jnp.stack([
          nn.Dense(self.num_classes, dtype=self.dtype, name=f"head_{i}")(f)
          for i, f in enumerate(out["stage_features"])]), axis=0)
    return {**out, "logits": logits.astype(jnp.float32)}


__all__ = ["AttentionEstimator", "MSCNN", "MultiStageAttentionCNN", "STAGES",
           "attention_pool"]
