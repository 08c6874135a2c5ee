"""HST on Visual Genome VG-200 (the authors' ~98k / ~10k split lists).

  python launch/main.py --config=configs/hst_vg200.py --workdir=runs/hst_vg
  python launch/sweep.py --config=configs/hst_vg200.py --sweep=proportions

Same recipe and `:ARGS` as configs/hst_coco.py. 200 classes give 19,900
class pairs: the IST head's [B, 19900, 1024] activations take ~2.6 GB per
tensor in float32 at batch 32; `:bf16` halves that.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_hst_coco", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "hst_coco.py"))
_coco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_coco)


def get_config(arg=None):
  return _coco.apply_args(_coco.paper_config("vg200", "data/vg"), arg)


def get_sweeps():
  return _coco.get_sweeps()
