"""MMDL on NUS-WIDE's six low-level feature types (81 concepts).

6 feature types (feat_ch 64, feat_cm55 225, feat_corr 144, feat_edh 73,
feat_wt 128, feat_bow 500; an MLP each) x 3 similarity measures = 18
modalities. Needs the official feature and label files on disk (layout:
jaxmlc/data/builders/nuswide.py):
  python launch/mmdl_table.py --config=configs/mmdl_nuswide.py \
      --config.data.dir=/path/to/NUS-WIDE
  python launch/main.py --config=configs/mmdl_nuswide.py \
      --config.data.dir=/path/to/NUS-WIDE --workdir=runs/mmdl_nuswide
Seed value to compare with: Hamming loss 0.0219.
"""
import ml_collections

from jaxmlc.config_base import base_config

FEATURES = ("ch", "cm55", "corr", "edh", "wt", "bow")
MEASURES = ("linear", "cosine", "rbf")


def mmdl_defaults() -> ml_collections.ConfigDict:
  """Every `config.mmdl` key (methods/mmdl.py DEFAULTS), so sweeps can set them."""
  return ml_collections.ConfigDict(dict(
      feature_types=(), measures=MEASURES, rbf_sigma=2.0, embedding_dim=64,
      conv_features=(96, 256, 384, 384, 256), dense_features=4096,
      mlp_hidden=(512,), dropout=0.6, scale_linear=1.0, scale_cosine=10.0,
      scale_rbf=10.0, calibration_weight=1.0, calibration_lr_multiplier=10.0,
      eg_eta=0.0, eg_gamma=0.5, eg_start_epoch=0, triplets_per_batch=0,
      combine="eg", holdout_every=0, thresholds=True, pretrain_epochs=0,
      pretrain_corruption=0.3,
      pretrain_image_size=8))


def get_config(arg=None):
  del arg
  c = base_config()
  c.method = "mmdl"
  c.data.name = "nuswide"
  c.data.dir = "data"              # DIR, DIR/nuswide or DIR/NUS-WIDE
  c.data.nuswide_input = "features"
  c.data.nuswide_features = FEATURES
  c.data.known_label_proportion = 1.0
  c.data.flip = False
  c.data.normalize = "none"
  c.model.backbone = "alexnet8"    # unused: no pixels here
  c.mmdl = mmdl_defaults()
  c.mmdl.feature_types = ()        # every feat_<name> the reader offers
  c.mmdl.measures = MEASURES
  c.mmdl.embedding_dim = 256
  c.mmdl.mlp_hidden = (1024, 512)
  c.mmdl.dropout = 0.5
  c.mmdl.eg_start_epoch = 10       # second half; eta = sqrt(2 ln N / T)
  c.mmdl.holdout_every = 10        # ~12.5k held-out images for the fusion
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "cosine"
  c.train.global_batch_size = 256
  c.train.epochs = 20
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  return c


def get_sweeps():
  """EG fusion vs each single modality and the uniform mean (same weights)."""
  names = [f"feat_{f}/{m}" for f in FEATURES for m in MEASURES]
  rows = [(f"single {n}", {"mmdl.combine": f"single:{n}"}) for n in names]
  rows += [("uniform average", {"mmdl.combine": "uniform"}),
           ("EG combination", {"mmdl.combine": "eg"})]
  return {"modalities": {"rows": rows,
                         "columns": ["hamming_loss", "mAP", "CF1", "OF1"]}}
