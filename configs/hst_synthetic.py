"""HST on the embedded synthetic scenes: minutes on a 2-core CPU.

  python launch/main.py --config=configs/hst_synthetic.py --workdir=runs/hst
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=vs_baseline
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=ablation
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=proportions

The loss weights are the paper's; the scale and these switches are not
(hst.md allows a small backbone here; every departure is listed):
  - tiny ResNet (width 16) from scratch on 64 px images (layer4 is 2x2),
    d = 64, batch 64, 8 epochs, Adam lr 2e-3 (x0.1 after epoch 6; lr 1e-5
    suits only a pretrained backbone), coupled weight decay 1e-4. Random
    crops of 100/87.5/75 % of the side (the paper goes down to 50 %; our
    objects are 7-22 % of the side) and flips. The `vs_baseline` rows
    train method=baseline with this same recipe (backbone, data, crops,
    batch, steps, schedule) and, for one seed, the same initial weights
    and batch order; baseline_synthetic.py differs only by a constant lr.
  - pseudo labels, DTL and L_prototype from epoch 3; prototypes recomputed
    before epochs 3, 5, 7 (K = 10, 30 Lloyd iterations).
  - hst.use_sarl = False: the classifier is the backbone's GAP + linear
    (the baseline's head); IST/CST/instance/prototype run on the pooled
    reduced map. From scratch the SARL head (decoupling + GNN + element-wise
    classifier) trains slower than GAP + linear: 4-epoch train BCE 0.29-0.30
    vs 0.27 for GAP whatever we tried (no reduce BN, layer3+layer4 fused 4x4 map,
    no GNN steps, d = 128); 8-epoch SARL alone 31.8 mAP vs 44.9 (no crops).
    The `ablation` sweep's last row puts SARL back.
  - model.isolate_aux = True: the auxiliary heads train on stop-gradient
    backbone features. Pulling on the from-scratch backbone, L_cooc (x10;
    ~17% of the backbone gradient) and L_instance slowed the BCE fit from
    epoch 0 on (train BCE 0.217 vs 0.166 at the end) and cost ~5 mAP.
  - hst.cooc_known_pairs_only = True: L_cooc ignores pairs with an unknown
    label (the reference counts them as negatives, teaching the pair head
    that exactly the pairs IST should fill do not co-occur).
  - hst.dtl_leave_one_out = True and thresholds initialised at 0.5 (clip
    relaxation, as the reference): at 1.0 the clip never opens (q, cos <= 1)
    so IST/CST/DTL never act; with the self term Q_jj = 1, DTL pulled
    theta_ist to 0.22 and IST filled 10% of unknown entries at 26%
    precision (38.1 mAP).
Fixed in hst.py for every config: the thresholds got coupled weight decay,
which under Adam moved them at the full lr while their loss gradient was 0
(measured 0.5 -> 0.24 in 160 steps; the old runs' 1.0 had drifted to
~0.7 by the pseudo-label epoch).
`:ARGS` as in hst_coco.py (a proportion, bf16, no_ist, no_cst, no_dtl,
no_sarl, already the default here), plus `tiny` (the test-size data split, 2 epochs)
and `long` (twice the steps: 16 epochs, lr decay at 12, pseudo labels from
6, prototypes every 3; ~6 min an HST run).

Measured (mask seed 0, 2-core CPU, ~2.5 min an HST run and ~1.3 min a
baseline run when the machine is idle), test mAP HST / partial BCE, mean
over seeds 0, 1, 2 (`--sweep=vs_baseline --config.seed=S --workdir=...`; per seed in
the README):
  prop 0.1: 29.84 / 30.21   prop 0.2: 40.49 / 40.42   prop 0.3: 47.73 / 47.99
  prop 0.4: 51.38 / 51.10   prop 0.5: 56.51 / 55.74
Level within the seed spread (a paired run moves by ~1 mAP from chance
alone); ten seeds at 0.3: 47.34 / 47.87 (lead -0.53, standard error 0.43).
DTL's clip rule settles where 50-73 % of the entries it opens are positive
(hst.differential_threshold_loss), hence the fills' precision. CST fills 1-7 % of unknown entries at 50-78 % precision, IST
<= 0.6 %. Without the crops (the README keeps that recipe's rows) partial
BCE scored 3-5 points lower and HST led at 0.1-0.2 only.
`:long`, prop 0.3, seeds 0-2: 59.14 / 60.96 (behind on every seed; CST
fills 9-15 % of unknown entries at 43-57 % precision).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_hst_coco", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "hst_coco.py"))
_coco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_coco)

LOW_PROPORTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  tiny = "tiny" in args
  c = _coco.paper_config("synthetic_scenes", "data")
  c.data.variant = "tiny" if tiny else "default"
  c.data.image_size = 32 if tiny else 64
  c.data.resize_size = 0
  # Random crops of 100/87.5/75 % of the side (the paper's recipe crops
  # too): without them the from-scratch net memorises its known labels and
  # DTL, fitted on those, sets thresholds the unknown entries do not meet.
  c.data.crop_scales = (1.0, 0.875, 0.75)
  c.data.known_label_proportion = 0.3
  c.model.backbone = "resnet_tiny"
  c.model.width = 16
  c.model.frozen_stages = ()
  c.model.feature_dim = 64
  c.model.attention_dim = 32
  c.model.output_dim = 64
  c.model.reduce_norm = True
  c.model.fine_feature_key = ""
  c.model.isolate_aux = True
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
  c.hst.use_sarl = False
  c.hst.cooc_known_pairs_only = True
  c.hst.dtl_leave_one_out = True
  c.hst.ist_threshold_init = 0.5
  c.hst.cst_threshold_init = 0.5
  if "long" in args:
    c.train.epochs = 16
    c.optim.decay_every_epochs = 12
    c.hst.pseudo_label_epoch = 6
    c.hst.prototype_every = 3
  if tiny:
    c.train.global_batch_size = 16
    c.train.epochs = 2
    c.hst.pseudo_label_epoch = 1
    c.hst.prototype_every = 1
  return _coco.apply_args(
      c, ",".join(a for a in args if a not in ("tiny", "long")))


def get_sweeps():
  sweeps = _coco.get_sweeps()
  # The synthetic recipe runs without SARL, so its ablation row adds it back.
  sweeps["ablation"] = [
      (label, overrides) for label, overrides in sweeps["ablation"]
      if label != "w/o SARL"] + [("with SARL", {"hst.use_sarl": True})]
  sweeps["vs_baseline"] = [
      row for p in LOW_PROPORTIONS for row in (
          (f"HST prop={p:.1f}", {"data.known_label_proportion": p}),
          (f"partial BCE prop={p:.1f}", {"data.known_label_proportion": p,
                                         "method": "baseline"}))]
  return sweeps
