"""Cross-modality attention heads (CMA, sec. 3.2) and the self-attention ablation.

Shapes: B batch, M locations (h*w pixels of a feature map, or T' time
steps), Cv visual channels, E label-embedding width, C classes.

  I   [B, M, Cv]  visual features (backbone map, reduced by a 1x1 conv)
  I_s [B, M, E]   projected by the CMT (eq. 6)
  a   [B, C, M]   category-wise attention (eq. 7-8), sums to 1 over M
  h   [B, C, Cv]  category features (eq. 9): a-weighted sums of I
  y   [B, C]      per-class logits (eq. 10)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_EPS = 1e-6


def _unit(x, axis: int = -1):
  """x / ||x|| along axis; a zero vector stays zero (finite gradient)."""
  squared = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = squared > 0
  return x * jnp.where(positive,
                       jax.lax.rsqrt(jnp.where(positive, squared, 1.0)), 0.0)


def cross_modality_attention(projected, label_embeddings,
                             eps: float = ATTENTION_EPS):
  """Eq. 7-8: a_k^i = z_k^i / (sum_i z_k^i + eps), z = ReLU(cos(I_s^i, e_k)).

  Args:
    projected: I_s [B, M, E].
    label_embeddings: [C, E] (fixed ASGE / word vectors).
    eps: keeps a class whose cosines are all <= 0 finite (its a is 0).
  Returns:
    a [B, C, M], non-negative, each row summing to 1 (or 0 where z is all 0).
  """
  z = nn.relu(jnp.einsum("bme,ce->bcm", _unit(projected),
                         _unit(label_embeddings.astype(projected.dtype))))
  return z / (jnp.sum(z, axis=-1, keepdims=True) + eps)


def category_features(attention, visual):
  """Eq. 9: h_k = sum_i a_k^i I^i, one einsum (no [B, M, C, Cv] tensor).

  Args:
    attention: [B, C, M] (or [B, 1, M] for one shared map).
    visual: I [B, M, Cv].
  Returns:
    [B, C, Cv] (or [B, 1, Cv]).
  """
  return jnp.einsum("bcm,bmv->bcv", attention, visual.astype(attention.dtype))


class CrossModalityTransformer(nn.Module):
  """CMT (eq. 6): num_layers x (1x1 conv -> BN -> ReLU) to the embedding width.

  A 1x1 convolution over locations is a Dense layer on the channel axis, so
  one module serves images ([B, M, Cv] flattened maps) and video alike.
  """
  features: int = 256
  num_layers: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_layers):
      x = nn.Dense(self.features, use_bias=False, dtype=self.dtype,
                   name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x


class ClassWiseClassifier(nn.Module):
  """Eq. 10: y_k = <w_k, h_k> + b_k, one weight vector per class.

  features [B, C, Cv] (or [B, 1, Cv], shared by every class) -> logits [B, C].
  """
  num_classes: int

  @nn.compact
  def __call__(self, features):
    dim = features.shape[-1]
    # Row k is class k's Dense kernel: fan-in is the feature width.
    w = self.param("kernel", nn.initializers.lecun_normal(in_axis=-1,
                                                          out_axis=-2),
                   (self.num_classes, dim), jnp.float32)
    b = self.param("bias", nn.initializers.zeros, (self.num_classes,),
                   jnp.float32)
    features = features.astype(jnp.float32)
    if features.shape[1] == 1:    # one shared feature vector (self-attention)
      return features[:, 0] @ w.T + b
    return jnp.einsum("bcv,cv->bc", features, w) + b


class CMAHead(nn.Module):
  """One scale of (MS-)CMA: visual features -> logits and attention maps.

  attention="cma": category-wise maps from the label embeddings (eq. 6-10).
  attention="self": the paper's ablation, z_i = sigmoid(conv1x1(I_i)), one
    map shared by every class and normalised as eq. 8; the classifier stays
    per class.

  __call__(visual [B, M, Cv], label_embeddings [C, E], train)
    -> (logits f32 [B, C], attention f32 [B, C, M] ([B, 1, M] for "self")).
  """
  num_classes: int
  attention: str = "cma"
  cmt_layers: int = 2
  eps: float = ATTENTION_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, visual, label_embeddings, train: bool):
    visual = visual.astype(jnp.float32)
    if self.attention == "cma":
      projected = CrossModalityTransformer(
          label_embeddings.shape[-1], self.cmt_layers, self.dtype,
          name="cmt")(visual.astype(self.dtype), train)
      attention = cross_modality_attention(projected.astype(jnp.float32),
                                           label_embeddings, self.eps)
    elif self.attention == "self":
      z = nn.sigmoid(nn.Dense(1, name="attention_conv")(visual))[..., 0]
      attention = (z / (jnp.sum(z, -1, keepdims=True) + self.eps))[:, None]
    else:
      raise ValueError(f"attention={self.attention!r}: expected 'cma' or "
                       "'self'.")
    features = category_features(attention, visual)
    return ClassWiseClassifier(self.num_classes, name="classifier")(
        features), attention
