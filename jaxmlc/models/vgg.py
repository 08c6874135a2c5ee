"""VGG-16 (optionally with BatchNorm) in torchvision's layout, NHWC.

MSCNN puts attention estimators after conv layers 7, 10 and 13 (the ends
of blocks 3, 4, 5) and uses the last FC layer as the global vector, so
those are returned. Parameter tree: conv1..conv13 (3x3, bias), bn1..bn13
(with `batch_norm`), fc6, fc7 (with `include_fc`). torchvision's
`features.{i}` / `classifier.{0,3}` map onto them (`torch_feature_index`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmlc.models.mlp import adaptive_average_pool

# torchvision's configuration "D": conv widths, "M" = 2x2/2 max-pool.
LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M")
RETURNED_CONVS = (7, 10, 13)

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


class VGG16(nn.Module):
  """VGG-16 features + the first two FC layers.

  Attributes:
    batch_norm: BN after every conv (torchvision's vgg16_bn).
    width: multiplier on conv widths (1.0 = torchvision; small for tests).
    fc_features: width of fc6/fc7 (4096 in torchvision).
    include_fc: build fc6/fc7 (off when only the conv maps are needed).
    dropout: after fc6 and fc7 when training (needs a "dropout" rng).
    pool_size: torchvision's AdaptiveAvgPool2d((7, 7)) before fc6.
    dtype: computation dtype; parameters stay float32.

  __call__(x: [B, H, W, 3], train) -> {"conv7": [B, H/4, W/4, 256w],
    "conv10": [B, H/8, W/8, 512w], "conv13": [B, H/16, W/16, 512w]
    (after ReLU, before pooling), "pool5": [B, H/32, W/32, 512w],
    "fc7": [B, fc_features] (after ReLU and dropout; with include_fc)}.
  """
  batch_norm: bool = False
  width: float = 1.0
  fc_features: int = 4096
  include_fc: bool = True
  dropout: float = 0.5
  pool_size: int = 7
  dtype: Any = jnp.float32

  def _widths(self) -> list[int]:
    return [max(1, round(c * self.width)) for c in LAYOUT if c != "M"]

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of each returned entry, without running the model."""
    widths = self._widths()
    channels = {f"conv{k}": widths[k - 1] for k in RETURNED_CONVS}
    channels["pool5"] = widths[-1]
    if self.include_fc:
      channels["fc7"] = self.fc_features
    return channels

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    widths = iter(self._widths())
    outputs, conv = {}, 0
    for item in LAYOUT:
      if item == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      conv += 1
      x = nn.Conv(next(widths), (3, 3), padding=((1, 1), (1, 1)),
                  kernel_init=_conv_init, dtype=self.dtype,
                  name=f"conv{conv}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype, name=f"bn{conv}")(x)
      x = nn.relu(x)
      if conv in RETURNED_CONVS:
        outputs[f"conv{conv}"] = x
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
