"""Flax modules (no losses) and the backbone registry.

Every backbone is `module(x, train) -> {name: feature}` and has an
`out_channels` property ({name: channels}) that needs no forward pass.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable

import flax.linen as nn

from jaxmlc.models.alexnet8 import AlexNet8
from jaxmlc.models.mlp import MLP, MultiScalePoolingNet
from jaxmlc.models.resnet import TINY, ResNet
from jaxmlc.models.snet import SNet
from jaxmlc.models.vgg import VGG16

BACKBONES: dict[str, Callable[..., nn.Module]] = {
  "resnet18": functools.partial(ResNet, depth=18),
  "resnet34": functools.partial(ResNet, depth=34),
  "resnet50": functools.partial(ResNet, depth=50),
  "resnet101": functools.partial(ResNet, depth=101),
  "resnet_tiny": functools.partial(ResNet, **TINY),
  "vgg16": functools.partial(VGG16, batch_norm=False),
  "vgg16_bn": functools.partial(VGG16, batch_norm=True),
  "alexnet8": AlexNet8,
  "snet": SNet,
}


def get_backbone(name: str, /, **kwargs: Any) -> nn.Module:
  """The backbone registered as `name`, built with `kwargs` (its attributes).

  E.g. get_backbone("resnet101", dtype=jnp.bfloat16,
  frozen_stages=("stem", "layer1", "layer2", "layer3"), name="backbone");
  `name` is positional so the Flax module name can be passed as a keyword.
  Lists in kwargs become tuples (module attributes must be hashable).
  """
  if name not in BACKBONES:
    close = difflib.get_close_matches(name, BACKBONES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown backbone {name!r}.{hint} Known backbones: "
                     f"{', '.join(BACKBONES)}.")
  factory = BACKBONES[name]
  cls = factory.func if isinstance(factory, functools.partial) else factory
  accepted = {f.name for f in dataclasses.fields(cls) if f.name != "parent"}
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(f"Backbone {name!r} does not take {unknown}; it accepts "
                     f"{sorted(accepted)}.")
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in kwargs.items()}
  return factory(**kwargs)


__all__ = ["AlexNet8", "BACKBONES", "MLP", "MultiScalePoolingNet", "ResNet",
           "SNet", "VGG16", "get_backbone"]
