"""MMDL's 8-layer CNN (5 conv + 3 dense) for pixel inputs.

Layout from the seed: 7x7/2 96, 5x5/2 256, 3x3 384, 3x3 384, 3x3 256 convs,
then dense 4096, 4096 (the third dense layer is the method's label scorer,
so it is not here). BatchNorm replaces local response normalisation (the
spec allows either; BN trains more reliably), 3x3/2 max-pooling after
conv 1, 2 and 5 as in AlexNet/ZFNet, dropout 0.6 after each dense layer.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

KERNELS = ((7, 2), (5, 2), (3, 1), (3, 1), (3, 1))  # (size, stride) per conv
POOL_AFTER = (1, 2, 5)


class AlexNet8(nn.Module):
  """The 8-layer CNN up to its penultimate (embedding) layer.

  Attributes:
    conv_features: widths of the five convs.
    dense_features: widths of the two dense layers (the last is the
      embedding phi(x)).
    dropout: after each dense layer when training (needs a "dropout" rng).
    dtype: computation dtype; parameters stay float32.

  __call__(x: [B, H, W, 3], train) -> {"conv5": [B, h, w, conv_features[-1]]
    (after its pool; h = H/32 rounded up),
    "embedding": [B, dense_features[-1]]}.
  The dense input is the flattened conv5 map, so the image size is fixed
  at init (224 -> 7x7x256).
  """
  conv_features: Sequence[int] = (96, 256, 384, 384, 256)
  dense_features: Sequence[int] = (4096, 4096)
  dropout: float = 0.6
  dtype: Any = jnp.float32

  @property
  def out_channels(self) -> dict[str, int]:
    return {"conv5": self.conv_features[-1],
            "embedding": self.dense_features[-1]}

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    if len(self.conv_features) != len(KERNELS):
      raise ValueError(f"AlexNet8 has {len(KERNELS)} convs; conv_features "
                       f"has {len(self.conv_features)} widths.")
    for i, (width, (size, stride)) in enumerate(
        zip(self.conv_features, KERNELS), start=1):
      pad = size // 2
      x = nn.Conv(width, (size, size), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False,
                  dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
      if i in POOL_AFTER:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = {"conv5": x}
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense_features, start=6):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    outputs["embedding"] = x
    return outputs
