"""jaxmlc launcher: train, evaluate or predict with one config file.

  python launch/main.py --config=configs/hst_synthetic.py --workdir=runs/hst
  python launch/main.py --config=configs/hst_coco.py --config.optim.lr=1e-4
  python launch/main.py --config=... --workdir=runs/hst --mode=eval
  python launch/main.py --config=... --workdir=runs/hst --mode=predict \
      --predict_input='photos/*.jpg'
"""
from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (get_config()), optionally "
    "followed by ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, logs, results). Default: "
    "runs/<config file name>.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "What to do.")
_PREDICT_INPUT = flags.DEFINE_string(
    "predict_input", None, "--mode=predict: a folder of images or a glob.")
_PREDICT_OUTPUT = flags.DEFINE_string(
    "predict_output", None, "--mode=predict: output folder (default "
    "WORKDIR/predictions).")
_BEST = flags.DEFINE_bool("best", False, "--mode=eval/predict: use the best "
                          "checkpoint instead of the latest.")


def _default_workdir() -> str:
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  return os.path.join("runs", name)


def run(config, workdir: str, mode: str) -> None:
  import jax
  from jaxmlc import evaluate, train
  train.initialize_distributed(config)
  if mode == "train":
    out = train.train_and_evaluate(config, workdir)
  elif mode == "eval":
    s, variables, meta = train.restore_for_inference(config, workdir,
                                                     best=_BEST.value)
    predict_step = jax.jit(s.method.predict_fn, out_shardings=s.batch_sharding)
    results, per_class = evaluate.evaluate_split(
        config, s.source, config.data.test_split, predict_step, variables,
        lambda b: train.to_global(b, s.batch_sharding))
    out = {"step": int(meta["step"]), "test": results}
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "eval_results.json"), "w") as f:
        json.dump(out, f, indent=2)
  else:
    if not _PREDICT_INPUT.value:
      raise ValueError("--mode=predict needs --predict_input=FOLDER_OR_GLOB.")
    s, variables, meta = train.restore_for_inference(config, workdir,
                                                     best=_BEST.value)
    paths = evaluate.expand_inputs(_PREDICT_INPUT.value)
    batch_size = config.train.eval_batch_size or config.train.global_batch_size
    predict_step = jax.jit(s.method.predict_fn)
    out = evaluate.predict_files(
        paths, lambda images: predict_step(variables, {"image": images}),
        s.info.class_names, config.data.image_size,
        _PREDICT_OUTPUT.value or os.path.join(workdir, "predictions"),
        batch_size=batch_size, normalize=config.data.normalize)
  print(json.dumps(out, indent=2, default=float))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Our own progress and notices; libraries (orbax, tfds) only when they warn.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jaxmlc").setLevel(logging.INFO)
  config = _CONFIG.value
  workdir = _WORKDIR.value or _default_workdir()
  from jaxmlc.checkpoint import CheckpointError
  from jaxmlc.train import TrainingError
  try:
    run(config, workdir, _MODE.value)
  except (ValueError, FileNotFoundError, TrainingError, CheckpointError) as e:
    # People get one paragraph, not a traceback; --verbosity=1 shows it.
    if flags.FLAGS.verbosity >= 1:
      raise
    print(f"\nerror: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
