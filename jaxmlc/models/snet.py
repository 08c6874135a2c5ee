"""SNet: squeezes frame-level features in time (CMA for video).

4 x (Conv1D + BN + ReLU + max-pool) over the time axis, so CMA attends
over T' = ceil(T / pool_size**4) steps instead of T frames.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class SNet(nn.Module):
  """Temporal conv net for frame features.

  Attributes:
    features: output channels of each block (its length is the number of
      blocks; Cv = features[-1]).
    kernel_size: temporal kernel of each Conv1D ("same" padding).
    pool_size: temporal max-pool window and stride after each block;
      "SAME" pooling rounds up, so short clips keep at least one step.
    dtype: computation dtype; parameters stay float32.

  __call__(x: [B, T, D], train) -> {"block1": [B, ceil(T/p), features[0]],
    ..., "block4": [B, T', Cv]}; "block4" (the last) is CMA's I.
  """
  features: Sequence[int] = (1024, 1024, 1024, 1024)
  kernel_size: int = 3
  pool_size: int = 2
  dtype: Any = jnp.float32

  @property
  def out_channels(self) -> dict[str, int]:
    return {f"block{i + 1}": c for i, c in enumerate(self.features)}

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    if x.ndim != 3:
      raise ValueError(f"SNet expects frame features [B, T, D]; got shape "
                       f"{x.shape}.")
    pad = self.kernel_size // 2
    outputs = {}
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (self.kernel_size,), padding=((pad, pad),),
                  use_bias=False, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (self.pool_size,), strides=(self.pool_size,),
                      padding="SAME")
      outputs[f"block{i + 1}"] = x
    return outputs
