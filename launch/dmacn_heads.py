"""DMACN: test mAP and OF1 of each prediction head of a trained run.

  python launch/dmacn_heads.py --config=configs/dmacn_synthetic.py --workdir=runs/dmacn

Fig. 3 averages the probabilities of classifier v on G_v(x2) and on
SFT2(G_v(x2)) (and, "Our-m", on SFT1 of the image's features). This scores
each head alone, the tag heads' average and the run's own average, on the
test split from the workdir's latest checkpoint, so that a weak head (e.g.
translators that do not translate) is visible instead of diluting the
average. Writes WORKDIR/dmacn_heads.json.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained DMACN run.")

HEADS = ("G_v(x2)", "SFT2(G_v(x2))", "SFT1(image)")


def head_scores(config, workdir: str):
  """Test split: (probabilities [N, H, 2, C], labels [N, C], label mask
  [N, C], the H head names)."""
  import jax
  import jax.numpy as jnp
  from jaxmlc import evaluate, train
  from jaxmlc.methods import dmacn
  s, variables, _ = train.restore_for_inference(config, workdir)
  cfg = dmacn.dmacn_config(config)
  if cfg.baseline_only:
    raise app.UsageError("dmacn.baseline_only runs have one head (G2).")
  model = dmacn.build_model(config, s.info, cfg)
  adjacency = jnp.asarray(dmacn.adjacency_of(config, s.info, cfg))
  image_key = dmacn.image_key_of(s.info)
  names = [HEADS[0]] + [HEADS[1]] * bool(cfg.use_translators) + [
      HEADS[2]] * bool(cfg.predict_with_image)

  def flat(variables, examples):   # [B, H * 2 * C]: predict_split keeps rows
    p = dmacn.head_probabilities(
        model, variables, examples, cfg, adjacency, image_key=image_key,
        nonimage_key=cfg.nonimage_key, with_gcn=dmacn.gcn_used(cfg))
    return jnp.moveaxis(p, 2, 0).reshape(p.shape[2], -1)

  scores, labels, mask = evaluate.predict_split(
      config, s.source, config.data.test_split,
      jax.jit(flat, out_shardings=s.batch_sharding), variables,
      lambda b: train.to_global(b, s.batch_sharding))
  return scores.reshape(len(labels), len(names), 2, -1), labels, mask, names


def main(argv):
  del argv
  import numpy as np
  from jaxmlc import metrics
  config, workdir = _CONFIG.value, _WORKDIR.value
  if not workdir:
    raise app.UsageError("--workdir: the trained DMACN run to score.")
  p, labels, mask, names = head_scores(config, workdir)
  rows = [(f"classifier {v + 1} on {name}", p[:, h, v])
          for h, name in enumerate(names) for v in range(2)]
  rows += [("average of the G_v(x2) heads", p[:, 0].mean(1)),
           ("average of every head (the run's)", p.mean((1, 2)))]
  table = []
  print(f"| {'head':<36} | mAP | OF1 | mean score |\n|---|---|---|---|")
  for label, scores in rows:
    summary = metrics.summarize(scores, labels, mask)
    table.append({"head": label, "mAP": summary["mAP"],
                  "OF1": summary["OF1"], "mean": float(np.mean(scores))})
    print(f"| {label:<36} | {100 * summary['mAP']:.2f} | "
          f"{100 * summary['OF1']:.2f} | {np.mean(scores):.3f} |")
  with open(os.path.join(workdir, "dmacn_heads.json"), "w") as f:
    json.dump(table, f, indent=2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
