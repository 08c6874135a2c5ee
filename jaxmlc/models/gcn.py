"""A two-layer graph convolution over label nodes (DMACN eq. 11, ML-GCN).

  W_out = A ReLU(A X H0) H1

X [C, K] holds one feature row per label (DMACN: the pre-trained classifier
rows [w_j, b_j]; ML-GCN: word vectors), A [C, C] is the label graph
(`labelgraph.reweighted_adjacency`, passed in, not learned) and H0
[K, hidden], H1 [hidden, out] are the only parameters. No bias, as eq. 11
and ML-GCN's layers.

Two initialisations:
  "random": ML-GCN's `reset_parameters`, U(-1/sqrt(n), 1/sqrt(n)) with n
    the layer's output width.
  "identity": H0 = [I, -I], H1 = [I; -I] (hidden = 2K, out = K), so that
    ReLU(z) - ReLU(-z) = z and the output starts at A A X: a re-training
    stage then starts from graph-smoothed pre-trained classifiers instead of
    random ones.

`residual=True` (not eq. 11; a switch for small data) returns
X + A ReLU(A X H0) H1 with H1 starting at zero, so re-training starts from
the pre-trained rows themselves and the graph term is learned as a
correction: with the identity init, A A X replaces X at the switch, which
mixes each label's classifier with its neighbours' before any training.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INITS = ("random", "identity")


def _uniform_by_fan_out(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(shape[-1]), 1/sqrt(shape[-1])), as ML-GCN's GraphConvolution."""
  bound = 1.0 / np.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _signed_identity(key, shape, dtype=jnp.float32):
  """[I, -I] for a [K, 2K] matrix and [I; -I] for [2K, K]."""
  del key
  rows, cols = shape
  if cols == 2 * rows:
    eye = jnp.eye(rows, dtype=dtype)
    return jnp.concatenate([eye, -eye], axis=1)
  if rows == 2 * cols:
    eye = jnp.eye(cols, dtype=dtype)
    return jnp.concatenate([eye, -eye], axis=0)
  raise ValueError(f"identity GCN init needs [K, 2K] or [2K, K] weights, got "
                   f"{shape}.")


class LabelGCN(nn.Module):
  """Eq. 11: nodes [C, K], adjacency [C, C] -> [C, features].

  hidden: width of the middle layer (H0 is [K, hidden]); 0 = 2K.
  features: output width (H1 is [hidden, features]); 0 = K (the output then
    replaces the input rows, as DMACN's classifiers).
  weight_init: "random" | "identity" (see the module docstring;
    "identity" needs the default widths).
  residual: X + the GCN's output, H1 starting at zero (needs features = K).
  """
  hidden: int = 0
  features: int = 0
  weight_init: str = "random"
  residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes, adjacency):
    if nodes.ndim != 2 or adjacency.shape != (nodes.shape[0],) * 2:
      raise ValueError(
          f"LabelGCN expects nodes [C, K] and adjacency [C, C]; got "
          f"{nodes.shape} and {adjacency.shape}. Fix: one row per label and "
          "the C x C label graph.")
    if self.weight_init not in INITS:
      raise ValueError(f"LabelGCN weight_init={self.weight_init!r}; expected "
                       f"one of {INITS}.")
    width = nodes.shape[-1]
    hidden = self.hidden or 2 * width
    features = self.features or width
    identity = self.weight_init == "identity"
    if identity and (hidden, features) != (2 * width, width):
      raise ValueError(
          f"LabelGCN weight_init='identity' needs hidden=2K={2 * width} and "
          f"features=K={width}; got hidden={hidden}, features={features}. "
          "Fix: leave hidden/features at 0, or use weight_init='random'.")
    if self.residual and features != width:
      raise ValueError(
          f"LabelGCN residual=True adds the input rows to the output, so it "
          f"needs features=K={width}; got features={features}. Fix: leave "
          "features at 0.")
    initializer = _signed_identity if identity else _uniform_by_fan_out
    h0 = self.param("h0", initializer, (width, hidden), jnp.float32)
    h1 = self.param("h1", nn.initializers.zeros if self.residual
                    else initializer, (hidden, features), jnp.float32)
    adjacency = jnp.asarray(adjacency, self.dtype)
    x = adjacency @ (nodes.astype(self.dtype) @ h0.astype(self.dtype))
    x = nn.relu(x)
    out = adjacency @ (x @ h1.astype(self.dtype))
    return nodes.astype(self.dtype) + out if self.residual else out


__all__ = ["INITS", "LabelGCN"]
