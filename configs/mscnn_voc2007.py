"""MSCNN-LCE-MIC on Pascal VOC 2007 (trainval / test), the paper's recipe.

  python launch/main.py --config=configs/mscnn_voc2007.py --workdir=runs/mscnn_voc \
      --config.model.pretrained=weights/vgg16_bn.safetensors
  python launch/sweep.py --config=configs/mscnn_voc2007.py --sweep=table4

Same recipe, `:ARGS` and label-propagation caveat as configs/mscnn_coco.py
(23 epochs, the paper's convergence point on VOC). Difficult objects are
dropped from training labels and ignored at test (mask 0).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_mscnn_coco", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "mscnn_coco.py"))
_coco = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_coco)


def get_config(arg=None):
  c = _coco.paper_config("voc2007", "data/voc")
  c.train.epochs = 23
  return _coco.apply_args(c, arg)


def get_sweeps():
  return _coco.get_sweeps()
