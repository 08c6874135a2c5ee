"""MSCNN-LCE-MIC on the embedded synthetic scenes (minutes on a CPU).

  python launch/main.py --config=configs/mscnn_synthetic.py --workdir=runs/m
  python launch/sweep.py --config=configs/mscnn_synthetic.py --sweep=table4

A small VGG-16-BN (width 8: convs 8..64 channels, fc 128) on the 64 px
scenes resized to 32 px (so a Table IV row is a few CPU minutes: 8 epochs
of 125 steps, ~0.15 s a step on a 2-core CPU); the 4000 train images are
the labeled set and the 8000 images of the "unlabeled" split get pseudo
labels by improved label propagation after every epoch. Pseudo labels use
the degree correction (threshold D^-1/2 Z; bench/bench_propagation.py part
(a) shows the paper's plain column-max rule leaves almost no positives on
this data). Variant `:tiny` is the test-size data.
"""
import ml_collections

from jaxmlc.config_base import base_config
from jaxmlc.methods.mscnn import DEFAULTS

# The seed's Table IV: (improved LP, multi-stage, attention, GCN, MFB).
TABLE4 = (
    ("LP+MS+Att+GCN+MFB", (True, True, True, True, True)),
    ("LP+MS+Att", (True, True, True, False, False)),
    ("LP only (plain VGG)", (True, False, False, False, False)),
    ("Att+GCN+MFB", (False, False, True, True, True)),
    ("MS+GCN+MFB", (False, True, False, True, True)),
    ("MS+Att", (False, True, True, False, False)),
)
UNLABELED_BATCH = 32


def get_config(arg=None):
  c = base_config()
  c.method = "mscnn"
  c.data.name = "synthetic_scenes"
  c.data.variant = arg or "default"
  c.data.image_size = 32
  c.data.known_label_proportion = 1.0
  c.data.unlabeled_batch_size = UNLABELED_BATCH
  c.model.backbone = "vgg16_bn"
  c.model.width = 8
  c.mscnn = ml_collections.ConfigDict(dict(DEFAULTS))   # every key, for sweeps
  c.mscnn.update(dict(
      fc_features=128, pool_size=1, fc_dropout=0.3,
      gcn_hidden=128, gcn_out=0, label_embedding_dim=64,
      mfb_factor_dim=128, mfb_group=2, mfb_dropout=0.1,
      knn=10, alpha=0.99, cg_iterations=20, degree_correction=True))
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.train.global_batch_size = 32
  c.train.epochs = 8
  c.train.checkpoint_every = 250
  c.train.log_every = 25
  return c


def _row(switches):
  lp, ms, att, gcn, mfb = switches
  return {"mscnn.label_propagation": lp, "mscnn.multistage": ms,
          "mscnn.attention": att, "mscnn.gcn": gcn, "mscnn.mfb": mfb,
          "data.unlabeled_batch_size": UNLABELED_BATCH if lp else 0}


def get_sweeps():
  return {
      "table4": {"rows": [(label, _row(s)) for label, s in TABLE4],
                 "columns": ["mAP", "mAP_voc", "CF1", "OF1"]},
      # What GCN + MFB lose against the averaged heads (LP, MS, Att on).
      "fusion": [
          ("LP+MS+Att+GCN+MFB", _row(TABLE4[0][1])),
          ("+ MFB signed sqrt and L2", {**_row(TABLE4[0][1]),
                                     "mscnn.mfb_normalize": True}),
          ("GCN with dot product", _row((True, True, True, True, False))),
          ("MFB on ASGE nodes", _row((True, True, True, False, True))),
          ("LP+MS+Att", _row(TABLE4[1][1])),
      ],
      "propagation": [
          ("improved LP", {}),
          ("plain LPA", {"mscnn.propagation": "lpa"}),
          ("no LP", _row((False, True, True, True, True))),
      ],
  }
