"""ResNet-18/34/50/101 in torchvision's exact layout, NHWC.

The layout matches `torchvision.models.resnet*` module for module (stem
7x7/2 conv + BN + ReLU + 3x3/2 max-pool, four stages, stride on the 3x3 of
bottlenecks, 1x1 conv + BN downsample) and pads convolutions explicitly as
torch does, so converted ImageNet weights (`models/pretrained.py`) give the
same outputs. Parameter tree:

  stem/{conv, bn}
  layer{1..4}/block{j}/{conv1, bn1, conv2, bn2[, conv3, bn3]
                        [, downsample_conv, downsample_bn]}
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

# depth -> (blocks per stage, bottleneck blocks?)
LAYOUTS = {
  10: ((1, 1, 1, 1), False),  # the `tiny` variant: CPU tests, quickstart
  18: ((2, 2, 2, 2), False),
  34: ((3, 4, 6, 3), False),
  50: ((3, 4, 6, 3), True),
  101: ((3, 4, 23, 3), True),
}
TINY = {"depth": 10, "width": 16}

# torchvision initialises convs with kaiming_normal(mode="fan_out", relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class SmallOutputConv(nn.Conv):
  """nn.Conv computed as im2col + one matmul when its output is smaller than
  its kernel (e.g. layer4 of a 64 px input: 2 x 2 maps under 3 x 3 kernels).

  XLA's CPU convolution falls off a cliff on those shapes (~1.3 GFLOP/s
  against 160+ elsewhere; a 3x3 512->512 conv on [32, 2, 2, 512] takes
  ~470 ms) and so do its gradients; as a matmul it is ~100x faster. Same
  parameter ("kernel" [kh, kw, Cin, F]) and the same numbers to float
  round-off, so converted weights and checkpoints are unaffected. Other
  shapes take nn.Conv's path unchanged.
  """

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    (pt, pb), (pl, pr) = self.padding
    sh, sw = self.strides
    ho = (x.shape[1] + pt + pb - kh) // sh + 1
    wo = (x.shape[2] + pl + pr - kw) // sw + 1
    if min(ho, wo) >= max(kh, kw) or self.use_bias or x.ndim != 4:
      return super().__call__(x)
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), self.param_dtype)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    cols = [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]      # [B, ho, wo, C] each
    patches, kernel = nn.dtypes.promote_dtype(
        jnp.concatenate(cols, axis=-1), kernel, dtype=self.dtype)
    return patches @ kernel.reshape(-1, self.features)


def _conv(features: int, kernel: int, stride: int, dtype: Any,
          name: str) -> nn.Conv:
  # Explicit symmetric pads (not "SAME"): "SAME" pads stride-2 convs
  # asymmetrically (0, 1), torch pads (p, p); converted weights would shift.
  pad = kernel // 2
  return SmallOutputConv(features, (kernel, kernel), strides=(stride, stride),
                         padding=((pad, pad), (pad, pad)), use_bias=False,
                         kernel_init=_conv_init, dtype=dtype, name=name)


def _batch_norm(use_running_average: bool, dtype: Any,
                name: str) -> nn.BatchNorm:
  # Flax momentum 0.9 == torch momentum 0.1 (weight of the old average).
  return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). x: [B, H, W, Cin] -> [B, H/s, W/s, F]."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    bn = lambda name: _batch_norm(use_running_average, self.dtype, name)
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = bn("bn2")(y)
    return nn.relu(y + _shortcut(self, x, use_running_average))


class Bottleneck(nn.Module):
  """1x1, 3x3 (strided, as torchvision "v1.5"), 1x1 x4 (ResNet-50/101).

  x: [B, H, W, Cin] -> [B, H/s, W/s, 4F].
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    bn = lambda name: _batch_norm(use_running_average, self.dtype, name)
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = _conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(bn("bn2")(y))
    y = _conv(self.features * 4, 1, 1, self.dtype, "conv3")(y)
    y = bn("bn3")(y)
    return nn.relu(y + _shortcut(self, x, use_running_average))


def _shortcut(block, x, use_running_average: bool):
  """Identity, or torchvision's downsample (1x1 conv stride s + BN)."""
  out_features = block.features * block.expansion
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  x = _conv(out_features, 1, block.stride, block.dtype, "downsample_conv")(x)
  return _batch_norm(use_running_average, block.dtype, "downsample_bn")(x)


class Stem(nn.Module):
  """7x7/2 conv + BN + ReLU + 3x3/2 max-pool.

  x: [B, H, W, 3] -> [B, H/4, W/4, F].
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    x = _conv(self.features, 7, 2, self.dtype, "conv")(x)
    x = _batch_norm(use_running_average, self.dtype, "bn")(x)
    x = nn.relu(x)
    # Flax pads max-pool with -inf, like torch's MaxPool2d(3, 2, padding=1).
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Stage(nn.Module):
  """`num_blocks` blocks; the first one strides. Torch's `layerN`."""
  num_blocks: int
  features: int
  stride: int
  bottleneck: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    block = Bottleneck if self.bottleneck else BasicBlock
    for j in range(self.num_blocks):
      x = block(self.features, self.stride if j == 0 else 1, self.dtype,
                name=f"block{j}")(x, use_running_average)
    return x


class ResNet(nn.Module):
  """ResNet backbone returning every stage's feature map.

  Attributes:
    depth: 18, 34, 50, 101 (torchvision), or 10 (basic blocks [1, 1, 1, 1],
      the tiny variant together with a small `width`).
    width: base width; 64 is torchvision. Stage i has width * 2**i planes.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    frozen_stages: names from STAGE_NAMES whose BatchNorms always use (and
      never update) their running statistics. Their parameters are frozen
      by the method's optimizer, not here.

  __call__(x: [B, H, W, 3], train) -> {"stem": [B, H/4, W/4, width],
    "layer1": [B, H/4, W/4, c1], "layer2": H/8, "layer3": H/16,
    "layer4": [B, H/32, W/32, c4]} with channels `out_channels`
    (sizes round up for odd inputs, as torch's).
  """
  depth: int = 50
  width: int = 64
  dtype: Any = jnp.float32
  frozen_stages: tuple[str, ...] = ()

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of each returned map, without running the model."""
    _, bottleneck = _layout(self.depth)
    expansion = 4 if bottleneck else 1
    channels = {"stem": self.width}
    for i in range(4):
      channels[f"layer{i + 1}"] = self.width * 2**i * expansion
    return channels

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    blocks, bottleneck = _layout(self.depth)
    unknown = [s for s in self.frozen_stages if s not in STAGE_NAMES]
    if unknown:
      raise ValueError(f"frozen_stages has unknown stage(s) {unknown}; "
                       f"ResNet stages are {list(STAGE_NAMES)}.")
    running = lambda stage: (not train) or stage in self.frozen_stages
    outputs = {}
    x = Stem(self.width, self.dtype, name="stem")(x, running("stem"))
    outputs["stem"] = x
    for i, num_blocks in enumerate(blocks):
      stage = f"layer{i + 1}"
      x = Stage(num_blocks, self.width * 2**i, 1 if i == 0 else 2, bottleneck,
                self.dtype, name=stage)(x, running(stage))
      outputs[stage] = x
    return outputs


def _layout(depth: int):
  if depth not in LAYOUTS:
    raise ValueError(f"ResNet depth {depth} is not supported; choose one of "
                     f"{sorted(LAYOUTS)} (10 is the tiny test variant).")
  return LAYOUTS[depth]
