"""Baseline: backbone + global average pooling + Dense C, trained with partial BCE.

The reference row of every comparison table (= plain BCE when every label
is known).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmlc import losses, optim
from jaxmlc.methods import base
from jaxmlc.models import get_backbone


def compute_dtype(config):
  """bf16 activations with fp32 params when config.train.precision says so."""
  precision = config.train.precision
  if precision not in ("float32", "bfloat16"):
    raise ValueError(f"config.train.precision={precision!r}: expected "
                     "'float32' or 'bfloat16'.")
  return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


class GapClassifier(nn.Module):
  """images f32 [B, H, W, 3] -> logits f32 [B, C]."""
  num_classes: int
  backbone: str
  width: int
  frozen_stages: tuple[str, ...] = ()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool):
    net = get_backbone(self.backbone, width=self.width, dtype=self.dtype,
                       frozen_stages=self.frozen_stages, name="backbone")
    features = net(images.astype(self.dtype), train=train)["layer4"]
    pooled = features.astype(jnp.float32).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(pooled)


@base.register("baseline")
def build(config, info) -> base.Method:
  if info.input_kind != "image":
    raise ValueError(f"method 'baseline' needs images; dataset {info.name!r} "
                     f"gives {info.input_kind!r}.")
  model = GapClassifier(
      num_classes=info.num_classes, backbone=config.model.backbone,
      width=config.model.width,
      frozen_stages=tuple(config.model.frozen_stages),
      dtype=compute_dtype(config))
  steps_per_epoch = max(
      info.num_examples[config.data.train_split]
      // config.train.global_batch_size, 1)

  def init(rng, batch):
    images = batch["labeled"]["image"]
    return dict(model.init(rng, images, train=False))

  def loss_fn(variables, batch, rng, step):
    del step
    labeled = batch["labeled"]
    logits, updates = model.apply(
        variables, labeled["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    loss = losses.partial_bce(logits, labeled["labels"],
                              labeled["label_mask"])
    return loss, {}, dict(updates)

  def predict_fn(variables, examples):
    return jax.nn.sigmoid(model.apply(variables, examples["image"],
                                      train=False))

  return base.Method(
      name="baseline", init=init, loss_fn=loss_fn, predict_fn=predict_fn,
      optimizer=optim.make_optimizer(config, steps_per_epoch))
