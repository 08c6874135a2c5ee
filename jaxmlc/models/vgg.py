"""VGG-16 (optionally with BatchNorm) in torchvision's layout, NHWC.

MSCNN puts attention estimators after conv layers 7, 10 and 13 (the ends
of blocks 3, 4, 5) and uses the last FC layer as the global vector, so
those are returned. Parameter tree (convs numbered 1..13 across blocks):

  block1/{conv1, [bn1,] conv2, [bn2]}, ..., block5/{conv11, ..., conv13},
  fc6, fc7 (with `include_fc`)

torchvision's `features.{i}` / `classifier.{0,3}` map onto them
(`torch_feature_index`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmlc.models.mlp import adaptive_average_pool

# torchvision's configuration "D": conv widths, "M" = 2x2/2 max-pool.
LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M")
RETURNED_CONVS = (7, 10, 13)  # the last convs of blocks 3, 4, 5
STAGE_NAMES = ("block1", "block2", "block3", "block4", "block5", "fc6", "fc7")

# torchvision's VGG init: kaiming_normal(fan_out, relu) convs, N(0, 0.01) FC.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_fc_init = nn.initializers.normal(0.01)


def torch_feature_index(conv_number: int, batch_norm: bool) -> int:
  """Index in torchvision's `features` Sequential of conv `conv_number` (1-13).

  Its BatchNorm, when present, is at the next index.
  """
  index, conv = 0, 0
  for item in LAYOUT:
    if item == "M":
      index += 1
      continue
    conv += 1
    if conv == conv_number:
      return index
    index += 3 if batch_norm else 2  # conv, [bn,] relu
  raise ValueError(f"VGG-16 has convs 1..13, not {conv_number}.")


class VGGBlock(nn.Module):
  """3x3 convs (+ BN) + ReLU, then 2x2/2 max-pool; convs numbered globally.

  x: [B, H, W, C] -> (last conv's map [B, H, W, F], pooled [B, H/2, W/2, F]).
  """
  widths: tuple[int, ...]
  first_conv: int
  batch_norm: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    for k, width in enumerate(self.widths, start=self.first_conv):
      x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                  kernel_init=_conv_init, dtype=self.dtype, name=f"conv{k}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=use_running_average,
                         momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         name=f"bn{k}")(x)
      x = nn.relu(x)
    return x, nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG16(nn.Module):
  """VGG-16 features + the first two FC layers.

  Attributes:
    batch_norm: BN after every conv (torchvision's vgg16_bn).
    width: channels of the first block; 64 = torchvision, all conv widths
      scale by width / 64 (small for tests).
    fc_features: width of fc6/fc7 (4096 in torchvision).
    include_fc: build fc6/fc7 (off when only the conv maps are needed).
    dropout: after fc6 and fc7 when training (needs a "dropout" rng).
    pool_size: torchvision's AdaptiveAvgPool2d((7, 7)) before fc6.
    dtype: computation dtype; parameters stay float32.
    frozen_stages: names from STAGE_NAMES whose BatchNorms always use (and
      never update) their running statistics; the method's optimizer
      freezes their parameters.

  __call__(x: [B, H, W, 3], train) -> {"conv7": [B, H/4, W/4, 4w],
    "conv10": [B, H/8, W/8, 8w], "conv13": [B, H/16, W/16, 8w]
    (after ReLU, before pooling), "pool5": [B, H/32, W/32, 8w],
    "fc7": [B, fc_features] (after ReLU and dropout; with include_fc)},
    w = width.
  """
  batch_norm: bool = False
  width: int = 64
  fc_features: int = 4096
  include_fc: bool = True
  dropout: float = 0.5
  pool_size: int = 7
  dtype: Any = jnp.float32
  frozen_stages: tuple[str, ...] = ()

  def _blocks(self) -> list[tuple[int, ...]]:
    blocks, current = [], []
    for item in LAYOUT:
      if item == "M":
        blocks.append(tuple(current))
        current = []
      else:
        current.append(max(1, item * self.width // 64))
    return blocks

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of each returned entry, without running the model."""
    widths = [w for block in self._blocks() for w in block]
    channels = {f"conv{k}": widths[k - 1] for k in RETURNED_CONVS}
    channels["pool5"] = widths[-1]
    if self.include_fc:
      channels["fc7"] = self.fc_features
    return channels

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    unknown = [s for s in self.frozen_stages if s not in STAGE_NAMES]
    if unknown:
      raise ValueError(f"frozen_stages has unknown stage(s) {unknown}; "
                       f"VGG-16 stages are {list(STAGE_NAMES)}.")
    outputs, first_conv = {}, 1
    for b, widths in enumerate(self._blocks(), start=1):
      stage = f"block{b}"
      running = (not train) or stage in self.frozen_stages
      last, x = VGGBlock(widths, first_conv, self.batch_norm, self.dtype,
                         name=stage)(x, running)
      first_conv += len(widths)
      if first_conv - 1 in RETURNED_CONVS:
        outputs[f"conv{first_conv - 1}"] = last
    outputs["pool5"] = x
    if not self.include_fc:
      return outputs
    x = adaptive_average_pool(x, self.pool_size, axis=1)
    x = adaptive_average_pool(x, self.pool_size, axis=2)
    # Flatten in torch's (C, H, W) order so classifier.0 converts by a plain
    # transpose.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = nn.Dense(self.fc_features, kernel_init=_fc_init, dtype=self.dtype,
                   name=name)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    outputs["fc7"] = x
    return outputs
