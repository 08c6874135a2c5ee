"""Multi-modal factorized bilinear pooling (MFB, Yu et al.) as MSCNN fuses
the image feature with each label's GCN embedding (sec. III-E).

For every class i, with F [D] the image feature and W_i [E] the label row:
  M1 = Dense_m(W_i), M2 = Dense_m(F), M = M1 * M2            ([m])
  sum-pool groups of g consecutive entries                     ([m / g])
  optional signed square root and L2 normalisation (standard MFB; the
    F-GCN line of work that MSCNN follows drops them)
  dropout, then one Dense to a logit (shared by all classes).
All classes at once as a [B, C, m] tensor; no loop over classes.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

def group_sum_pool(x, group: int):
  """[..., m] -> [..., m / group]: sums of consecutive groups of `group`."""
  m = x.shape[-1]
  if m % group:
    raise ValueError(f"MFB: factor width m={m} is not divisible by the group "
                     f"size g={group}. Fix: pick m a multiple of g.")
  return x.reshape(x.shape[:-1] + (m // group, group)).sum(-1)


def signed_sqrt(x):
  """sign(x) sqrt(|x|); the double `where` gives gradient 0 at exactly 0
  instead of torch MFB's inf * 0 = NaN."""
  magnitude = jnp.abs(x)
  nonzero = magnitude > 0
  root = jnp.sqrt(jnp.where(nonzero, magnitude, 1.0))
  return jnp.where(nonzero, jnp.sign(x) * root, 0.0)


def l2_normalize(x, axis: int = -1):
  norm2 = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(norm2, 1e-12))


class MFB(nn.Module):
  """features [B, D], label_embeddings [C, E] -> logits [B, C].

  factor_dim: m (358 in the paper); group: g (2), m % g == 0.
  normalize: signed square root + L2 after pooling.
  dropout: rate before the classifier (needs a "dropout" rng in training).
  """
  factor_dim: int = 358
  group: int = 2
  normalize: bool = False
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, label_embeddings, train: bool):
    if self.factor_dim % self.group:
      raise ValueError(
          f"MFB: factor_dim={self.factor_dim} is not divisible by group="
          f"{self.group}. Fix: pick factor_dim a multiple of group.")
    label_factors = nn.Dense(self.factor_dim, dtype=self.dtype,
                             name="label_proj")(label_embeddings)  # [C, m]
    image_factors = nn.Dense(self.factor_dim, dtype=self.dtype,
                             name="image_proj")(features)          # [B, m]
    joint = image_factors[:, None, :] * label_factors[None, :, :]  # [B, C, m]
    pooled = group_sum_pool(joint, self.group)                     # [B, C, m/g]
    if self.normalize:
      pooled = l2_normalize(signed_sqrt(pooled))
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(1, dtype=self.dtype, name="classifier")(pooled)[..., 0]


__all__ = ["MFB", "group_sum_pool", "l2_normalize", "signed_sqrt"]
