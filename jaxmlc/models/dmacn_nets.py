"""DMACN's networks (seed section III-C, D, F): no losses here.

  G1, G4   image views 1 and 2: a backbone on pixels (GAP of its last map,
           projected to d when its width is not d) or an MLP on image
           feature vectors.
  G2, G3   non-image views 1 and 2: `MultiScalePoolingNet`.
  classifier1 / classifier2: C-way linear classifiers, classifier i shared
           by view i of both modalities (eq. 1-2); their rows [w_j, b_j]
           [C, d+1] are what eq. 5 and eq. 11 use.
  SFT1     image -> non-image features, SFT2 non-image -> image; each a
           d -> d -> d MLP shared by the two views.
  gcn      eq. 11, one `LabelGCN` shared by both views' classifiers.

Views travel stacked on a leading axis of 2: features [2, B, d], classifier
rows [2, C, d+1].
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmlc.models import get_backbone
from jaxmlc.models.gcn import LabelGCN
from jaxmlc.models.mlp import MLP, MultiScalePoolingNet


def classifier_logits(features, rows):
  """Eq. 1-2 before the sigmoid: w_j^T f + b_j for every view at once.

  Args:
    features: [V, B, d] (view v uses rows[v]).
    rows: [V, C, d+1], row j = [w_j, b_j].
  Returns:
    logits [V, B, C].
  """
  weights, bias = rows[..., :-1], rows[..., -1]
  return (jnp.einsum("vbd,vcd->vbc", features, weights.astype(features.dtype))
          + bias[:, None, :].astype(features.dtype))


class ImageGenerator(nn.Module):
  """G1 / G4: pixels [B, H, W, 3] or feature vectors [B, M] -> [B, features]."""
  features: int = 512
  backbone: str = "resnet34"
  width: int = 64
  frozen_stages: tuple[str, ...] = ()
  mlp_hidden: Sequence[int] = (1024,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 2:          # pre-extracted image features
      return MLP(tuple(self.mlp_hidden) + (self.features,),
                 name="mlp")(x.astype(jnp.float32))
    if x.ndim != 4:
      raise ValueError(f"ImageGenerator expects images [B, H, W, 3] or "
                       f"vectors [B, M]; got shape {x.shape}.")
    net = get_backbone(self.backbone, width=self.width, dtype=self.dtype,
                       frozen_stages=self.frozen_stages, name="backbone")
    maps = net(x.astype(self.dtype), train=train)["layer4"]
    pooled = maps.astype(jnp.float32).mean(axis=(1, 2))
    if net.out_channels["layer4"] != self.features:
      # ResNet-34's 512 channels are the paper's d; other widths project.
      pooled = nn.Dense(self.features, name="project")(pooled)
    return pooled


class Classifier(nn.Module):
  """A C-way linear classifier exposed as its rows [C, d+1] = [w_j, b_j]."""
  num_classes: int
  features: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.features, self.num_classes), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,),
                      jnp.float32)
    return jnp.concatenate([kernel.T, bias[:, None]], axis=1)


class DMACNNets(nn.Module):
  """Every DMACN network; methods return stacked views (see module doc)."""
  num_classes: int
  features: int = 512
  backbone: str = "resnet34"
  width: int = 64
  frozen_stages: tuple[str, ...] = ()
  image_mlp_hidden: Sequence[int] = (1024,)
  nonimage_bins: Sequence[int] = (1, 4, 9, 25, 100)
  nonimage_hidden: int = 4096
  gcn_hidden: int = 0
  gcn_init: str = "identity"
  gcn_residual: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    image = dict(features=self.features, backbone=self.backbone,
                 width=self.width, frozen_stages=tuple(self.frozen_stages),
                 mlp_hidden=tuple(self.image_mlp_hidden), dtype=self.dtype)
    nonimage = dict(bins=tuple(self.nonimage_bins),
                    hidden=self.nonimage_hidden, features=self.features)
    # Distinct names give distinct init rngs: the "different random
    # initialisations" that let the two views start apart.
    self.g1 = ImageGenerator(**image)
    self.g4 = ImageGenerator(**image)
    self.g2 = MultiScalePoolingNet(**nonimage)
    self.g3 = MultiScalePoolingNet(**nonimage)
    self.classifier1 = Classifier(self.num_classes, self.features)
    self.classifier2 = Classifier(self.num_classes, self.features)
    self.sft1 = MLP((self.features, self.features))
    self.sft2 = MLP((self.features, self.features))
    self.gcn = LabelGCN(hidden=self.gcn_hidden, weight_init=self.gcn_init,
                        residual=self.gcn_residual)

  def image_features(self, x1, train: bool = False):
    """x1 [B, ...] -> [2, B, d]: (G1(x1), G4(x1))."""
    return jnp.stack([self.g1(x1, train), self.g4(x1, train)])

  def nonimage_features(self, x2):
    """x2 [B, D] -> [2, B, d]: (G2(x2), G3(x2))."""
    return jnp.stack([self.g2(x2), self.g3(x2)])

  def sft1_image_to_nonimage(self, features):
    """SFT1 on features [..., d] (any leading axes: both views at once)."""
    return self.sft1(features)

  def sft2_nonimage_to_image(self, features):
    """SFT2 on features [..., d]."""
    return self.sft2(features)

  def classifier_rows(self):
    """The two plain classifiers' rows: [2, C, d+1]."""
    return jnp.stack([self.classifier1(), self.classifier2()])

  def gcn_rows(self, w0, adjacency):
    """Eq. 11 for both views with one shared GCN: w0 [2, C, K] -> [2, C, K]."""
    return jnp.stack([self.gcn(w0[0], adjacency), self.gcn(w0[1], adjacency)])

  def init_all(self, x1, x2, adjacency):
    """Touches every network so that `init` creates every parameter."""
    image = self.image_features(x1)
    nonimage = self.nonimage_features(x2)
    rows = self.classifier_rows()
    return (self.sft1_image_to_nonimage(image),
            self.sft2_nonimage_to_image(nonimage),
            self.gcn_rows(rows, adjacency))


__all__ = ["Classifier", "DMACNNets", "ImageGenerator", "classifier_logits"]
