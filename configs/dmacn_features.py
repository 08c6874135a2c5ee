"""DMACN on paired feature vectors (.npz): BOLD5000, Vim-2, your own data.

x1 = image features ("features", e.g. 512-d ResNet-34 features of the
stimulus images) through two MLPs (G1, G4), x2 = the non-image modality
("modality2", e.g. fMRI voxels, z-scored per voxel) through two multi-scale
networks (G2, G3). Files and layout: jaxmlc/data/builders/paired_features.py
(train.npz / test.npz or one paired.npz, optional unlabeled.npz).
  python launch/main.py --config=configs/dmacn_features.py \
      --workdir=runs/dmacn_bold5000_s1 --config.data.dir=/data/bold5000_s1
  python launch/sweep.py --config=configs/dmacn_features.py --sweep=ablation \
      --config.data.dir=/data/bold5000_s1
The paper's weights for BOLD5000 (Fig. 7: best lambda_cr = 50 with
lambda_mv = 400); its other values as in configs/dmacn_mirflickr.py. The
seed gives no epoch counts; the ones here are ours.
"""
import ml_collections

from jaxmlc.config_base import base_config
from jaxmlc.methods.dmacn import DEFAULTS as DMACN_DEFAULTS


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "dmacn"
  c.data.name = "paired_features"
  c.data.dir = "data/paired_features"
  c.data.known_label_proportion = 1.0
  c.data.unlabeled_batch_size = 100     # 0 (+ dmacn.use_unlabeled=False)
                                        # without an unlabeled.npz
  c.data.paired_test_fraction = 0.2     # only for a single paired.npz
  c.data.paired_split_seed = 0
  c.optim.name = "adam"
  c.optim.weight_decay = 0.0
  c.train.global_batch_size = 100
  c.train.checkpoint_every = 500
  c.train.eval_every = 0
  c.train.log_every = 20
  # Every config.dmacn key, so that sweeps and flags can set any of them.
  c.dmacn = ml_collections.ConfigDict(dict(
      DMACN_DEFAULTS,
      features=512, image_mlp_hidden=(1024,), nonimage_hidden=4096,
      lambda_mv=400.0, lambda_cr=50.0,
      warmup_epochs=5, pretrain_epochs=40, pretrain_lr_drop_epochs=30,
      retrain_epochs=20))
  c.train.epochs = 65       # unused: the phases set the length
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
