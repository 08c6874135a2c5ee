"""DMACN on MIRFLICKR-25K (tags predicted from; images assist) + MIRFLICKR-1M.

The paper's recipe (section IV-A): x1 = images through two ResNet-34 (G1,
G4), x2 = the 1386-d tag bag-of-words through two multi-scale networks
(G2, G3), d = 512, lambda_mv = 400, lambda_cr = 100, batch 100 paired +
100 unpaired images, Adam 1e-3 then 1e-4, GCN re-training with 1e-3 /
1e-4 / 1e-5, tau = 0.4, p = 0.2. The seed gives no epoch counts; the ones
here are ours. A GPU run:
  python launch/main.py --config=configs/dmacn_mirflickr.py \
      --workdir=runs/dmacn_mirflickr --config.data.dir=/data \
      --config.dmacn.pretrained_image=/weights/resnet34.pth
with /data/mirflickr25k holding the unpacked mirflickr25k.zip and
mirflickr25k_annotations_v080.zip (and optionally mirflickr1m/, the
unlabeled pool; without it the 25K images the filtering drops are used),
see jaxmlc/data/builders/mirflickr.py. The ImageNet ResNet-34 (a torchvision
state dict) initialises both image generators; `config.model.pretrained`
stays empty (it targets a single backbone).
Note: on the from-scratch synthetic runs (configs/dmacn_synthetic.py) these
loss weights made both views collapse to label priors; lower
dmacn.lambda_mv / lambda_cr if the BCE terms stay at the prior's value.
"""
import ml_collections

from jaxmlc.config_base import base_config
from jaxmlc.methods.dmacn import DEFAULTS as DMACN_DEFAULTS


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "dmacn"
  c.data.name = "mirflickr25k"
  c.data.dir = "data"
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.crop_scales = (1.0, 0.875, 0.75)
  c.data.known_label_proportion = 1.0
  c.data.unlabeled_batch_size = 100
  c.data.mirflickr_min_tag_count = 20     # -> 1386 words
  c.data.mirflickr_test_size = 2000
  c.data.mirflickr_split_seed = 0         # the paper averages 5 splits
  c.data.mirflickr_train_size = 0         # 0: every remaining pair
  c.data.mirflickr1m_dir = ""             # "" -> <root>/mirflickr1m if present
  c.data.mirflickr_unlabeled_limit = 80000
  c.model.backbone = "resnet34"
  c.model.width = 64
  c.optim.name = "adam"
  c.optim.weight_decay = 0.0
  c.train.global_batch_size = 100
  c.train.checkpoint_every = 1000
  c.train.eval_every = 0
  c.train.log_every = 50
  # Every config.dmacn key, so that sweeps and flags can set any of them.
  c.dmacn = ml_collections.ConfigDict(dict(
      DMACN_DEFAULTS,
      features=512, nonimage_hidden=4096, pretrained_image="",
      lambda_mv=400.0, lambda_cr=100.0,
      warmup_epochs=5, pretrain_epochs=30, pretrain_lr_drop_epochs=20,
      retrain_epochs=20))
  c.train.epochs = 55       # unused: the phases set the length
  return c


def get_sweeps():
  """Table IX (each component off) and the non-image-only baseline."""
  metrics = ["OP", "OR", "OF1", "top3.OP", "top3.OR", "top3.OF1", "mAP"]
  return {"ablation": {"columns": metrics, "rows": [
      ("DMACN (full)", {}),
      ("no translators", {"dmacn.use_translators": False}),
      ("no L_mv", {"dmacn.use_multiview_loss": False}),
      ("no L_cr", {"dmacn.use_coregularization": False}),
      ("no L_cr2", {"dmacn.use_imputed_coregularization": False}),
      ("no GCN", {"dmacn.use_gcn": False}),
      ("no unlabeled (co-training)",
       {"dmacn.use_unlabeled": False, "data.unlabeled_batch_size": 0}),
      ("non-image baseline (G2+BCE)",
       {"dmacn.baseline_only": True, "data.unlabeled_batch_size": 0}),
  ]}}
