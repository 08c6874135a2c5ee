"""Networks for vector inputs: a plain MLP and DMACN's multi-scale pooling net.

Also `adaptive_average_pool`, torch's adaptive average pooling along one
axis (VGG uses it for its 7x7 pre-classifier pooling).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def adaptive_pool_matrix(length: int, bins: int) -> np.ndarray:
  """Averaging weights [bins, length] with torch's bin edges.

  Bin i covers [floor(i * L / n), ceil((i + 1) * L / n)), as
  `torch.nn.functional.adaptive_avg_pool1d`; bins overlap when L is not a
  multiple of n, and repeat entries when n > L.
  """
  weights = np.zeros((bins, length), np.float32)
  for i in range(bins):
    start = (i * length) // bins
    end = -((-(i + 1) * length) // bins)  # ceil without floats
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_average_pool(x, bins: int, axis: int):
  """Adaptive average pooling of `x` along `axis` to `bins` entries.

  x: [..., L, ...] -> [..., bins, ...]. A matmul with a constant matrix:
  exact, static shapes, and cheap for the sizes used here.
  """
  axis = axis % x.ndim
  weights = jnp.asarray(adaptive_pool_matrix(x.shape[axis], bins), x.dtype)
  pooled = jnp.tensordot(x, weights, axes=([axis], [1]))  # bins axis last
  return jnp.moveaxis(pooled, -1, axis)


class MLP(nn.Module):
  """Dense layers with an activation (and dropout when training) between.

  x: [B, D] -> [B, features[-1]]. The last layer is linear unless
  `activate_final`.
  """
  features: Sequence[int]
  dropout: float = 0.0
  activation: Callable[[Any], Any] = nn.relu
  activate_final: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not self.features:
      raise ValueError("MLP needs at least one layer width in `features`.")
    for i, width in enumerate(self.features):
      x = nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x)
      if i < len(self.features) - 1 or self.activate_final:
        x = self.activation(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class MultiScalePoolingNet(nn.Module):
  """DMACN's non-image feature generator (G2/G3).

  The input vector is read as a 1-D signal and average-pooled to each of
  `bins` sizes (torch's adaptive bins), concatenated (1+4+9+25+100 = 139),
  then Dense `hidden` -> ReLU -> Dense `features`.

  x: [B, D] -> [B, features].
  """
  bins: Sequence[int] = (1, 4, 9, 25, 100)
  hidden: int = 4096
  features: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or BatchNorm in the paper's generator
    if x.ndim != 2:
      raise ValueError(f"MultiScalePoolingNet expects vectors [B, D]; got "
                       f"shape {x.shape}.")
    pooled = [adaptive_average_pool(x, n, axis=-1) for n in self.bins]
    x = jnp.concatenate(pooled, axis=-1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
    return nn.Dense(self.features, dtype=self.dtype, name="out")(x)
