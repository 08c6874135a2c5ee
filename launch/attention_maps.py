"""CMA attention maps of a trained run (the paper's Fig. 4 / Fig. 5).

  python launch/attention_maps.py --config=configs/cma_synthetic.py \
      --workdir=runs/cma --num_examples=6

Restores WORKDIR's latest checkpoint, runs the first --num_examples test
examples and writes WORKDIR/plots/attention_<n>.png: per example its top-3
classes (score, and +/- for the true label), each scale's category
attention over the image (images) or over time steps (video). With
attention="self" the one shared map is shown for every class.
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained CMA run.")
_NUM = flags.DEFINE_integer("num_examples", 4, "Test examples to draw.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "Classes per example.")


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  from jaxmlc import train
  from jaxmlc.data import pipeline
  from jaxmlc.methods import cma
  config = _CONFIG.value
  if config.method != "cma":
    raise app.UsageError(f"config.method is {config.method!r}; attention maps "
                         "exist for 'cma' runs only.")
  s, variables, _ = train.restore_for_inference(config, _WORKDIR.value)
  batch = next(pipeline.eval_batches(config, s.source, config.data.test_split,
                                     batch_size=_NUM.value))["labeled"]
  inputs = cma.input_of(batch, s.info.input_kind)
  scores, maps = cma.attention_maps(config, s.info, variables, inputs)
  paths = cma.save_attention_maps(
      inputs, scores, maps, s.info.class_names,
      os.path.join(_WORKDIR.value, "plots"), targets=batch["labels"],
      top_k=_TOP_K.value)
  print("\n".join(paths))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
