"""HST on Pascal VOC 2007 (trainval / test) with the paper's recipe.

  python launch/main.py --config=configs/hst_voc2007.py --workdir=runs/hst_voc
  python launch/sweep.py --config=configs/hst_voc2007.py --sweep=proportions

Same recipe and `:ARGS` as configs/hst_coco.py. Difficult objects are
dropped from training labels and ignored at test (mask 0, the VOC
protocol); `--config.data.voc_difficult_as_negative=True` counts them as
negatives as the authors' code does.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_hst_coco", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "hst_coco.py"))
_coco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_coco)


def get_config(arg=None):
  c = _coco.paper_config("voc2007", "data/voc")
  c.data.voc_difficult_as_negative = False
  return _coco.apply_args(c, arg)


def get_sweeps():
  return _coco.get_sweeps()
