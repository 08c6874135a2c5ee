"""MMDL (multimodal deep networks + EG fusion) on the embedded synthetic scenes.

Three feature types x three similarity measures = 9 modalities: pixels
(a narrow 8-layer CNN), "modality2" (tag bag-of-words, MLP) and "feat_view2"
(the second feature view, MLP); linear, cosine and RBF heads.

Train once and compare every combination on the same weights (each single
modality, the uniform average, the EG weights):
  python launch/mmdl_table.py --config=configs/mmdl_synthetic.py
One run (predict_fn uses config.mmdl.combine, "eg" by default):
  python launch/main.py --config=configs/mmdl_synthetic.py --workdir=runs/mmdl
The same comparison through the generic sweep (every row retrains the same
weights, so mmdl_table.py is the cheap way):
  python launch/sweep.py --config=configs/mmdl_synthetic.py --sweep=modalities
Variants (`:arg`): default | tiny | pretrain (denoising-autoencoder phase on
the unlabeled split first).

Departures from the seed, for a from-scratch CPU run on 64 px images: CNN
widths (24, 48, 64, 64, 48) and dense 256 instead of (96, 256, 384, 384,
256) and 4096, dropout 0.3, Adam with a cosine schedule, complete labels
(the seed is fully supervised).
"""
import ml_collections

from jaxmlc.config_base import base_config

FEATURE_TYPES = ("image", "modality2", "feat_view2")
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
  variant = arg or "default"
  if variant not in ("default", "tiny", "pretrain"):
    raise ValueError(f"configs/mmdl_synthetic.py:{variant}: expected default, "
                     "tiny or pretrain.")
  c = base_config()
  c.method = "mmdl"
  c.data.name = "synthetic_scenes"
  c.data.variant = "tiny" if variant == "tiny" else "default"
  c.data.image_size = 32 if variant == "tiny" else 64
  c.data.known_label_proportion = 1.0
  c.model.backbone = "alexnet8"
  c.mmdl = mmdl_defaults()
  c.mmdl.feature_types = FEATURE_TYPES
  c.mmdl.conv_features = (24, 48, 64, 64, 48)
  c.mmdl.dense_features = 256
  c.mmdl.mlp_hidden = (256,)
  c.mmdl.dropout = 0.3
  # Alpha learns over the second half, once the modalities' scores mean
  # something; eta 0 = sqrt(2 ln N / T) for the T triplets it sees.
  c.mmdl.eg_start_epoch = 5
  # Every 5th training image fits calibration, alpha and thresholds only
  # (without it EG trusts the modality that memorised the training set).
  c.mmdl.holdout_every = 5
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.train.global_batch_size = 64
  c.train.epochs = 10
  c.train.checkpoint_every = 200
  c.train.eval_every = 0
  c.train.log_every = 20
  if variant == "pretrain":
    c.mmdl.pretrain_epochs = 2
    c.data.unlabeled_batch_size = 64
  if variant == "tiny":
    c.train.global_batch_size = 16
    c.train.epochs = 2
    c.mmdl.eg_start_epoch = 1
  return c


def get_sweeps():
  """The seed's claim: EG fusion vs each single modality and the uniform mean.

  Every row trains the same weights (same data, seed and steps; combine
  only changes predict_fn); launch/mmdl_table.py trains once instead.
  """
  names = [f"{f}/{m}" for f in FEATURE_TYPES for m in MEASURES]
  rows = [(f"single {n}", {"mmdl.combine": f"single:{n}"}) for n in names]
  rows += [("uniform average", {"mmdl.combine": "uniform"}),
           ("EG combination", {"mmdl.combine": "eg"})]
  return {"modalities": {"rows": rows,
                         "columns": ["hamming_loss", "mAP", "CF1", "OF1"]}}
