"""Baseline (backbone + GAP + Dense, partial BCE) on the embedded dataset.

A few minutes on a 2-core CPU:
  python launch/main.py --config=configs/baseline_synthetic.py --workdir=runs/b
Variants: `--config=configs/baseline_synthetic.py:tiny` (the test-size data).
"""
from jaxmlc.config_base import base_config


def get_config(arg=None):
  c = base_config()
  c.method = "baseline"
  c.data.name = "synthetic_scenes"
  c.data.variant = arg or "default"
  c.data.image_size = 32 if arg == "tiny" else 64
  c.data.known_label_proportion = 0.3
  c.data.crop_scales = (1.0, 0.875, 0.75)   # as configs/hst_synthetic.py
  c.model.backbone = "resnet_tiny"
  c.model.width = 16
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.train.global_batch_size = 64
  c.train.epochs = 8
  c.train.checkpoint_every = 100
  c.train.eval_every = 0
  c.train.log_every = 20
  return c
