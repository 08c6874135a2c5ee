"""Small configs shared by the trainer and method tests."""
from jaxmlc.config_base import base_config


def tiny_config(data_dir: str, method: str = "baseline", **train):
  """The smallest real run: tiny synthetic scenes, tiny ResNet, 32 px."""
  c = base_config()
  c.method = method
  c.data.name = "synthetic_scenes"
  c.data.variant = "tiny"
  c.data.dir = data_dir
  c.data.image_size = 32
  c.data.known_label_proportion = 0.5
  c.model.backbone = "resnet_tiny"
  c.model.width = 8
  c.optim.lr = 3e-3
  c.train.global_batch_size = 16
  c.train.steps = 20
  c.train.checkpoint_every = 10
  c.train.log_every = 5
  c.train.progress = False
  for k, v in train.items():
    c.train[k] = v
  return c
