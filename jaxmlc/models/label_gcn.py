"""Label co-occurrence embedding with a two-layer GCN (MSCNN sec. III-D).

  W = A LeakyReLU_0.2(A Z H0) H1

Z [C, E] holds the label word vectors (GloVe 300-d, or ASGE embeddings when
no file is given), A [C, C] the label graph
`gcn_normalize(noise_filtered_adjacency(P))` (eq. 6-8, fixed, passed in)
and H0 [E, hidden], H1 [hidden, features] are the parameters (ML-GCN's
GraphConvolution: no bias, U(-1/sqrt(n), 1/sqrt(n)) with n the output width).

`models/gcn.py` (DMACN) has ReLU between its layers; MSCNN follows ML-GCN's
LeakyReLU(0.2), hence this module.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _uniform_by_fan_out(key, shape, dtype=jnp.float32):
  bound = 1.0 / np.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class LeakyLabelGCN(nn.Module):
  """nodes [C, E], adjacency [C, C] -> label embeddings [C, features].

  widths: (hidden, features), paper 1024 then the fusion width.
  negative_slope: of the LeakyReLU between the layers (0.2).
  """
  widths: tuple[int, int] = (1024, 2048)
  negative_slope: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency):
    if nodes.ndim != 2 or adjacency.shape != (nodes.shape[0],) * 2:
      raise ValueError(
          f"LeakyLabelGCN expects nodes [C, E] and adjacency [C, C]; got "
          f"{nodes.shape} and {adjacency.shape}. Fix: one row per label and "
          "the C x C label graph.")
    hidden, features = self.widths
    h0 = self.param("h0", _uniform_by_fan_out, (nodes.shape[-1], hidden))
    h1 = self.param("h1", _uniform_by_fan_out, (hidden, features))
    a = jnp.asarray(adjacency, self.dtype)
    x = a @ (jnp.asarray(nodes, self.dtype) @ h0.astype(self.dtype))
    x = nn.leaky_relu(x, self.negative_slope)
    return a @ (x @ h1.astype(self.dtype))


__all__ = ["LeakyLabelGCN"]
