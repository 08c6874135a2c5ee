"""MS-CMA with ASGE on MS-COCO 2014 (the paper's recipe, Tables 1 and 3).

  python launch/main.py --config=configs/cma_coco.py --workdir=runs/cma_coco \
      --config.data.dir=/data --config.model.pretrained=resnet101.safetensors
  python launch/sweep.py --config=configs/cma_coco.py --sweep=ablation

Recipe (sec. 4.1): ResNet-101 (ImageNet weights from a local file), 448
random crop + flip (resize 512, crop 448), batch 64, SGD momentum 0.9,
weight decay 1e-5, lr 0.01 x0.1 every 30 epochs, eq. 12 with beta = 0,
ASGE (256-d, no relaxation), multi-scale layer3 / layer4 / extra block.
The paper does not give the epoch count; 60 (two decays) is our choice.
Paper mAP: ResNet-101 79.9, self-attention 81.1, W2V-MS-CMA 82.5,
CMA 82.8, MS-CMA 83.8.
"""
import ml_collections

from jaxmlc.config_base import base_config


def cma_defaults() -> ml_collections.ConfigDict:
  from jaxmlc.methods.cma import DEFAULTS
  return ml_collections.ConfigDict(dict(DEFAULTS))


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "cma"
  c.data.name = "coco2014"
  c.data.dir = "data"
  c.data.image_size = 448
  c.data.resize_size = 512
  c.data.crop_scales = (0.875,)      # 448 / 512
  c.data.flip = True
  c.data.known_label_proportion = 1.0
  c.model.backbone = "resnet101"
  c.model.width = 64
  c.model.pretrained = ""            # local torchvision ResNet-101 weights
  c.cma = cma_defaults()
  c.cma.multiscale = True
  c.cma.reduce_channels = 1024
  c.cma.beta = 0.0
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "step"
  c.optim.decay_every_epochs = 30
  c.optim.decay_factor = 0.1
  c.train.global_batch_size = 64
  c.train.epochs = 60
  c.train.checkpoint_every = 1000
  c.train.eval_every = 5000
  c.train.log_every = 50
  return c


def get_sweeps():
  """Table 3 of the paper."""
  return {"ablation": [
      ("ResNet-101", {"method": "baseline"}),
      ("self-attention", {"cma.attention": "self", "cma.multiscale": False}),
      ("W2V-MS-CMA", {"cma.label_embedding": "word2vec"}),
      ("CMA", {"cma.multiscale": False}),
      ("MS-CMA", {}),
  ]}
