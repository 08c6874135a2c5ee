"""YouTube-8M metrics (GAP@20, Hit@1, PERR, mAP) of trained video runs.

The trainer's results.json holds `metrics.summarize` (mAP, F1, ...); video
papers report GAP, Hit@1 and PERR. This script restores a run's latest
checkpoint, scores the test split, writes WORKDIR/video_results.json and
adds the four numbers to results.json's "test" (so `launch/sweep.py` can
show them as columns).

  # one trained run
  python launch/eval_video.py --config=configs/cma_synthetic.py:video \
      --workdir=runs/cma_video
  # a sweep from the config's get_sweeps(): trains the rows that have no
  # results yet (as launch/sweep.py does), then evaluates every row
  python launch/eval_video.py --config=configs/cma_synthetic.py:video \
      --sweep=video
"""
from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# launch/sweep.py defines --config, --sweep, --workdir and --rows; we reuse
# its flags and helpers (defining them twice would be an error).
import sweep as sweep_lib  # noqa: E402

_TOP_K = flags.DEFINE_integer("top_k", 20, "GAP's predictions per video.")

COLUMNS = ["GAP", "Hit@1", "PERR", "mAP"]


def video_metrics(scores, labels, mask, top_k: int = 20) -> dict:
  """GAP@top_k, Hit@1, PERR (unknown labels count as negatives: these
  metrics take no mask) and the masked mAP."""
  from jaxmlc import metrics
  targets = labels * mask
  return {"GAP": metrics.global_average_precision(scores, targets, top_k),
          "Hit@1": metrics.hit_at_one(scores, targets),
          "PERR": metrics.precision_at_equal_recall(scores, targets),
          "mAP": metrics.mean_average_precision(scores, labels, mask)}


def evaluate_run(config, workdir: str, top_k: int = 20) -> dict:
  """Restores WORKDIR's latest checkpoint and scores the test split."""
  import jax
  from jaxmlc import evaluate, train
  s, variables, meta = train.restore_for_inference(config, workdir)
  predict_step = jax.jit(s.method.predict_fn, out_shardings=s.batch_sharding)
  scores, labels, mask = evaluate.predict_split(
      config, s.source, config.data.test_split, predict_step, variables,
      lambda b: train.to_global(b, s.batch_sharding))
  out = video_metrics(scores, labels, mask, top_k)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "video_results.json"), "w") as f:
      json.dump({"step": int(meta["step"]), "test": out}, f, indent=2)
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
      with open(results_path) as f:
        results = json.load(f)
      results["test"].update(out)
      with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
  return out


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  from jaxmlc import train
  config = sweep_lib._CONFIG.value
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  name, workdir = sweep_lib._SWEEP.value, sweep_lib._WORKDIR.value
  if not name:
    if not workdir:
      raise app.UsageError("--workdir is required without --sweep.")
    print(json.dumps(evaluate_run(config, workdir, _TOP_K.value), indent=2))
    return
  sweeps = sweep_lib.load_sweeps(config_path)
  if name not in sweeps:
    raise app.UsageError(f"--sweep={name!r}: the config offers "
                         f"{', '.join(sorted(sweeps))}.")
  spec = sweeps[name]
  rows = spec["rows"] if isinstance(spec, dict) else spec
  if sweep_lib._ROWS.value:
    wanted = set(sweep_lib._ROWS.value.split(","))
    rows = [r for r in rows if r[0] in wanted]
  base = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  sweep_dir = workdir or os.path.join("runs", f"{base}_{name}")
  table = []
  for label, overrides in rows:
    row_config = sweep_lib.apply_overrides(config, overrides)
    row_dir = os.path.join(sweep_dir, sweep_lib.slug(label))
    if not os.path.exists(os.path.join(row_dir, "results.json")):
      train.train_and_evaluate(row_config, row_dir)
    out = evaluate_run(row_config, row_dir, _TOP_K.value)
    table.append({"run": label, "overrides": overrides, **out})
    print(sweep_lib.format_table(table, COLUMNS), flush=True)
  text = sweep_lib.format_table(table, COLUMNS)
  print(f"\n{name} ({config_path})\n{text}")
  with open(os.path.join(sweep_dir, f"{name}_video.json"), "w") as f:
    json.dump({"sweep": name, "config": config_path, "rows": table},
              f, indent=2, default=str)
  with open(os.path.join(sweep_dir, f"{name}_video.md"), "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
