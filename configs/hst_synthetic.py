"""HST on the embedded synthetic scenes: minutes on a 2-core CPU.

  python launch/main.py --config=configs/hst_synthetic.py --workdir=runs/hst
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=vs_baseline
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=ablation
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=proportions

The method and loss weights are the paper's; the scale is not: a tiny
ResNet (width 16) from scratch on 64 px images, d = 64, 8 epochs with
pseudo labels from epoch 3 and prototypes recomputed before epochs 3, 5, 7;
Adam lr 2e-3 (x0.1 after epoch 6) as the baseline config uses, since lr 1e-5
suits only a pretrained backbone. Known-label proportion 0.3.
`:ARGS` as in hst_coco.py (a proportion, bf16, no_ist, no_cst, no_dtl,
no_sarl), plus `tiny` (the test-size data split, 2 epochs).

Measured once (seed 0, prop 0.3, 2-core CPU, ~7 min a run), test mAP:
HST 33.9, HST with softplus thresholds 33.8, SARL without IST/CST 31.8,
HST losses on GAP features (no_sarl) 38.1, partial BCE (method=baseline,
same recipe) 45.1. From scratch at 64 px (layer4 is 2x2) SARL trains slower
than GAP + linear; the paper's gains assume an ImageNet ResNet-101.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_hst_coco", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "hst_coco.py"))
_coco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_coco)

LOW_PROPORTIONS = (0.1, 0.3, 0.5)


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  tiny = "tiny" in args
  c = _coco.paper_config("synthetic_scenes", "data")
  c.data.variant = "tiny" if tiny else "default"
  c.data.image_size = 32 if tiny else 64
  c.data.resize_size = 0
  c.data.crop_scales = ()
  c.data.known_label_proportion = 0.3
  c.model.backbone = "resnet_tiny"
  c.model.width = 16
  c.model.frozen_stages = ()
  c.model.feature_dim = 64
  c.model.attention_dim = 32
  c.model.output_dim = 64
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "step"
  c.optim.decay_every_epochs = 6
  c.train.global_batch_size = 64
  c.train.epochs = 8
  c.train.checkpoint_every = 200
  c.train.log_every = 20
  c.hst.pseudo_label_epoch = 3
  c.hst.prototype_every = 2
  c.hst.kmeans_iters = 30
  if tiny:
    c.train.global_batch_size = 16
    c.train.epochs = 2
    c.hst.pseudo_label_epoch = 1
    c.hst.prototype_every = 1
  return _coco.apply_args(c, ",".join(a for a in args if a != "tiny"))


def get_sweeps():
  sweeps = _coco.get_sweeps()
  sweeps["vs_baseline"] = [
      row for p in LOW_PROPORTIONS for row in (
          (f"HST prop={p:.1f}", {"data.known_label_proportion": p}),
          (f"partial BCE prop={p:.1f}", {"data.known_label_proportion": p,
                                         "method": "baseline"}))]
  return sweeps
