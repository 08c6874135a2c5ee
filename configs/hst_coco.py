"""HST on MS-COCO 2014 with the paper's recipe (hst.md, Training recipe).

  python launch/main.py --config=configs/hst_coco.py --workdir=runs/hst_coco \
      --config.model.pretrained=weights/resnet101.safetensors \
      --config.model.word_vectors=data/coco/glove_coco80.npy
  python launch/sweep.py --config=configs/hst_coco.py --sweep=proportions

ResNet-101 (ImageNet weights from a local file; none are downloaded) with
stem..layer3 frozen, 448 px (resize 512, random crop side from
{512, 448, 384, 320, 256}, resize 448, flip), batch 32, Adam lr 1e-5 with
coupled weight decay 5e-4, lr x0.1 every 10 epochs, 20 epochs; pseudo labels
from epoch 5, prototypes (K=10) recomputed every 5 epochs.
Without `model.word_vectors`, label vectors are learned from the known-label
graph (logged). `:ARGS` is a comma list of: a known-label proportion
(e.g. `:0.3`), `bf16`, `no_ist`, `no_cst`, `no_dtl`, `no_sarl`.

hst_voc2007.py and hst_vg200.py reuse `paper_config` from this file.
"""
import ml_collections

from jaxmlc.config_base import base_config

PROPORTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def hst_defaults() -> ml_collections.ConfigDict:
  """Every `config.hst` key (methods/hst.py DEFAULTS), the reference values."""
  return ml_collections.ConfigDict(dict(
      pseudo_label_epoch=5, prototype_every=5, num_prototypes=10,
      kmeans_iters=50, kmeans_init="kmeans++",
      kmeans_max_chunk_elements=1 << 27,
      ist_threshold_init=1.0, cst_threshold_init=1.0,
      threshold_relaxation="clip", threshold_sharpness=10.0,
      threshold_lr_multiplier=1.0,
      weight_ist_bce=1.0, weight_cst_bce=1.0, weight_cooc=10.0,
      weight_dtl_ist=0.1, weight_dtl_cst=0.1, weight_instance=0.05,
      weight_prototype=0.05, cooc_gamma_pos=1.0, cooc_gamma_neg=2.0,
      cooc_clip=0.05, cooc_known_pairs_only=False, dtl_leave_one_out=False,
      use_ist=True, use_cst=True, use_dtl=True,
      use_sarl=True, label_embedding_dim=256, label_embedding_steps=0))


# Without DTL the thresholds stay where they start; 1.0 would never fire
# (q <= 1), so the ablation fixes them at 0.5 (the reference's default margin).
ABLATIONS = {
    "no_ist": {"hst.use_ist": False},
    "no_cst": {"hst.use_cst": False},
    "no_dtl": {"hst.use_dtl": False, "hst.ist_threshold_init": 0.5,
               "hst.cst_threshold_init": 0.5},
    "no_sarl": {"hst.use_sarl": False},
}


def apply_args(c, arg):
  """`:0.3,bf16,no_ist` -> proportion, precision, ablation switches."""
  for token in filter(None, (arg or "").split(",")):
    if token == "bf16":
      c.train.precision = "bfloat16"
    elif token in ABLATIONS:
      for key, value in ABLATIONS[token].items():
        c.hst[key.split(".")[1]] = value
    else:
      try:
        c.data.known_label_proportion = float(token)
      except ValueError:
        raise ValueError(f"config argument {token!r}: expected a proportion, "
                         f"'bf16' or one of {sorted(ABLATIONS)}.") from None
  return c


def paper_config(dataset: str, data_dir: str) -> ml_collections.ConfigDict:
  c = base_config()
  c.method = "hst"
  c.data.name = dataset
  c.data.dir = data_dir
  c.data.known_label_proportion = 0.5
  c.data.mask_seed = 0
  c.data.image_size = 448
  c.data.resize_size = 512
  c.data.crop_scales = (1.0, 0.875, 0.75, 0.625, 0.5)   # sides 512..256 of 512
  c.data.flip = True
  c.data.normalize = "imagenet"
  c.data.unlabeled_batch_size = 0
  c.model.backbone = "resnet101"
  c.model.width = 64
  c.model.pretrained = ""      # local ImageNet ResNet-101 (see README)
  c.model.frozen_stages = ("stem", "layer1", "layer2", "layer3")
  c.model.feature_dim = 1024
  c.model.attention_dim = 512
  c.model.output_dim = 1024
  c.model.gnn_steps = 3
  c.model.word_vectors = ""    # local GloVe .npy [C, 300] or GloVe text file
  c.optim.name = "adam"
  c.optim.lr = 1e-5
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.decay_every_epochs = 10
  c.optim.decay_factor = 0.1
  c.train.global_batch_size = 32
  c.train.epochs = 20
  c.train.checkpoint_every = 1000
  c.train.log_every = 50
  c.train.precision = "float32"
  c.hst = hst_defaults()
  return c


def get_config(arg=None):
  return apply_args(paper_config("coco2014", "data/coco"), arg)


def get_sweeps():
  return {
      "proportions": {
          "rows": [(f"HST prop={p:.1f}", {"data.known_label_proportion": p})
                   for p in PROPORTIONS],
          "columns": ["mAP_voc", "mAP", "CF1", "OF1"]},
      "ablation": [("HST", {})] + [
          (f"w/o {name[3:].upper()}", overrides)
          for name, overrides in ABLATIONS.items()],
  }
