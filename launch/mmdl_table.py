"""MMDL: train once, then score every combination of modalities on the test split.

  python launch/mmdl_table.py --config=configs/mmdl_synthetic.py
  python launch/mmdl_table.py --config=configs/mmdl_synthetic.py \
      --workdir=runs/mmdl_table --config.train.epochs=4

Rows: each single modality ("single:<j>"), the uniform average and the EG
weights (the learned alpha), all from the same trained networks: the test
split is scored once per modality (calibrated P_j [N, modalities, C]) and
every row is a weighted sum of those, as `mmdl.combined_scores` computes in
predict_fn, with per-class thresholds chosen on the training data by
`mmdl.choose_thresholds` exactly as the method's epoch hook does for its
own combination (so the EG row equals the run's results.json). Prints
Hamming loss (with those thresholds and at 0.5) and mAP per row, marks the
best single modality, and writes WORKDIR/mmdl_table.{json,md}. A workdir
that already has results.json is not retrained.
"""
from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Default runs/<config>_table.")


def modality_scores(config, workdir: str) -> dict:
  """Trained weights -> calibrated P_j of the test and train splits.

  Returns {"test": (P [N, M, C], labels, mask), "train": (..., mask with
  the run's known-label mask applied), "alpha": [M], "names": M names}.
  """
  import jax
  import numpy as np
  from jaxmlc import evaluate, train
  from jaxmlc.methods import mmdl
  s, variables, _ = train.restore_for_inference(config, workdir)
  model, names = mmdl.build_model(config, s.info)
  num_modalities, num_classes = len(names), s.info.num_classes

  def flat(variables, examples):   # [B, M * C]: predict_split keeps rows
    p = mmdl.modality_probabilities(model, variables, examples)
    return p.reshape(p.shape[0], -1)

  step = jax.jit(flat, out_shardings=s.batch_sharding)
  out = {"names": names,
         "alpha": np.asarray(jax.device_get(variables["state"]["alpha"]))}
  for split in (config.data.train_split, config.data.test_split):
    scores, labels, mask = evaluate.predict_split(
        config, s.source, split, step, variables,
        lambda b: train.to_global(b, s.batch_sharding))
    if split == config.data.train_split:
      mask = mask * s.known_mask
    out["train" if split == config.data.train_split else "test"] = (
        scores.reshape(-1, num_modalities, num_classes), labels, mask)
  return out


def table_rows(scores: dict, cfg) -> list[dict]:
  """One row per combination: Hamming loss with the per-class thresholds the
  method would choose (on the fusion hold-out of the train split, or all of
  it), Hamming loss at 0.5, mAP, CF1, OF1 on the test split."""
  import numpy as np
  from jaxmlc import metrics
  from jaxmlc.methods import mmdl
  names, alpha = scores["names"], scores["alpha"]
  train_p, train_labels, train_mask = scores["train"]
  test_p, test_labels, test_mask = scores["test"]
  every = int(cfg.holdout_every)
  rows_for_thresholds = (np.arange(len(train_p)) % every == 0 if every
                         else np.ones(len(train_p), bool))
  weights = [(f"single {n}", np.eye(len(names))[j])
             for j, n in enumerate(names)]
  weights += [("uniform average", np.full(len(names), 1.0 / len(names))),
              ("EG combination", alpha)]
  rows = []
  for label, w in weights:
    fused = np.einsum("bnc,n->bc", test_p, w).astype(np.float32)
    at_half = metrics.summarize(fused, test_labels, test_mask)
    hamming = at_half["hamming_loss"]
    if cfg.thresholds:
      fit = np.einsum("bnc,n->bc", train_p[rows_for_thresholds], w)
      theta = mmdl.choose_thresholds(fit, train_labels[rows_for_thresholds],
                                     train_mask[rows_for_thresholds])
      tuned = np.asarray(mmdl.apply_thresholds(fused, theta))
      summary = metrics.summarize(tuned, test_labels, test_mask)
    else:
      summary = at_half
    rows.append({"run": label, "hamming_loss": summary["hamming_loss"],
                 "hamming_loss_at_0.5": hamming, "mAP": summary["mAP"],
                 "CF1": summary["CF1"], "OF1": summary["OF1"]})
  return rows


def format_rows(rows: list[dict]) -> str:
  singles = [r for r in rows if r["run"].startswith("single ")]
  best_hl = min(singles, key=lambda r: r["hamming_loss"])["run"]
  best_map = max(singles, key=lambda r: r["mAP"])["run"]
  out = [f"| {'combination':<30} | Hamming | Hamming@0.5 |    mAP |   CF1 |"
         "   OF1 |",
         "|" + "-" * 32 + "|---------|-------------|--------|-------|-------|"]
  for r in rows:
    mark = ("*" if r["run"] == best_hl else "") + (
        "+" if r["run"] == best_map else "")
    out.append(f"| {r['run'] + mark:<30} | {r['hamming_loss']:7.4f} | "
               f"{r['hamming_loss_at_0.5']:11.4f} | {100 * r['mAP']:6.2f} | "
               f"{100 * r['CF1']:5.2f} | {100 * r['OF1']:5.2f} |")
  out.append("* best single modality by Hamming loss, + by mAP. Hamming, CF1, "
             "OF1: per-class thresholds chosen on training data as the method "
             "does (config.mmdl.thresholds); Hamming@0.5: threshold 0.5.")
  return "\n".join(out)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  config = _CONFIG.value
  if config.method != "mmdl":
    raise app.UsageError(f"--config has method {config.method!r}; this table "
                         "is for 'mmdl' configs.")
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  workdir = _WORKDIR.value or os.path.join("runs", f"{name}_table")
  from jaxmlc import train
  if os.path.exists(os.path.join(workdir, "results.json")):
    train.check_same_config(config, workdir)   # never another run's table
  else:
    train.train_and_evaluate(config, workdir)
  from jaxmlc.methods import mmdl
  scores = modality_scores(config, workdir)
  names, alpha = scores["names"], scores["alpha"]
  rows = table_rows(scores, mmdl.mmdl_config(config))
  text = format_rows(rows)
  weights = ", ".join(f"{n} {a:.3f}" for n, a in zip(names, alpha))
  print(f"\nMMDL modalities ({path}, {workdir})\n{text}\nEG alpha: {weights}")
  with open(os.path.join(workdir, "mmdl_table.json"), "w") as f:
    json.dump({"config": path, "rows": rows,
               "alpha": dict(zip(names, map(float, alpha)))}, f, indent=2)
  with open(os.path.join(workdir, "mmdl_table.md"), "w") as f:
    f.write(text + "\n\nEG alpha: " + weights + "\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
