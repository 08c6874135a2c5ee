"""Runs a named set of variants of one config and prints the comparison table.

  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=proportions
  python launch/sweep.py --config=configs/hst_synthetic.py --sweep=ablation \
      --config.train.epochs=4          # overrides apply to every row

A config file offers sweeps with `get_sweeps()`:
  {"ablation": [("HST (full)", {}), ("no IST", {"hst.use_ist": False}), ...]}
each row a label and dotted-key overrides of `get_config()`. Every row trains
in WORKDIR/<row> (so an interrupted sweep resumes) and the table, a JSON and
a PNG bar plot are written to WORKDIR.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=False)
_SWEEP = flags.DEFINE_string("sweep", None, "Name of a sweep in the config "
                             "file's get_sweeps().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Default runs/<config>_<sweep>.")
_METRIC = flags.DEFINE_string("metric", "", "Column to report first (default: "
                              "the sweep's own, else mAP).")
_ROWS = flags.DEFINE_string("rows", "", "Comma-separated row labels to run "
                            "(default: all).")


def load_sweeps(config_path: str) -> dict:
  path = config_path.split(":")[0]
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweeps"):
    raise ValueError(f"{path} defines no get_sweeps(); nothing to sweep.")
  return module.get_sweeps()


def apply_overrides(config, overrides: dict):
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"sweep override {key!r}: no such config key.")
    node[leaf] = value
  return config


def slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def metric(results: dict, column: str):
  """results["top3"]["OP"] for column "top3.OP"; None where absent."""
  value = results
  for key in column.split("."):
    if not isinstance(value, dict) or key not in value:
      return None
    value = value[key]
  return float(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
  head = f"| {'run':<28} | " + " | ".join(f"{c:>8}" for c in columns) + " |"
  line = "|" + "-" * 30 + "|" + "|".join("-" * 10 for _ in columns) + "|"
  out = [head, line]
  for r in rows:
    cells = []
    for c in columns:
      v = r.get(c)
      cells.append(f"{100 * v:8.2f}" if isinstance(v, float) else f"{'':>8}")
    out.append(f"| {r['run']:<28} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def run_sweep(config, rows, workdir: str, columns: list[str]) -> list[dict]:
  from jaxmlc import train, plots  # noqa: F401
  table = []
  for label, overrides in rows:
    row_config = apply_overrides(config, overrides)
    row_dir = os.path.join(workdir, slug(label))
    results_path = os.path.join(row_dir, "results.json")
    if os.path.exists(results_path):   # finished earlier: reuse
      train.check_same_config(row_config, row_dir)
      with open(results_path) as f:
        out = json.load(f)
    else:
      out = train.train_and_evaluate(row_config, row_dir)
    values = {c: metric(out["test"], c) for c in columns}
    table.append({"run": label, "overrides": overrides,
                  **{c: v for c, v in values.items() if v is not None}})
    print(format_table(table, columns), flush=True)
  return table


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  sweeps = load_sweeps(config_path)
  name = _SWEEP.value
  if name not in sweeps:
    raise app.UsageError(f"--sweep={name!r}: the config offers "
                         f"{', '.join(sorted(sweeps))}.")
  spec = sweeps[name]
  rows = spec["rows"] if isinstance(spec, dict) else spec
  columns = (spec.get("columns") if isinstance(spec, dict) else None) or [
      "mAP_voc", "mAP", "CF1", "OF1"]
  if _METRIC.value:
    columns = [_METRIC.value] + [c for c in columns if c != _METRIC.value]
  if _ROWS.value:
    wanted = set(_ROWS.value.split(","))
    rows = [r for r in rows if r[0] in wanted]
  base = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  arg = config_path.partition(":")[2].replace(",", "_")
  workdir = _WORKDIR.value or os.path.join(
      "runs", "_".join(filter(None, (base, arg, name))))
  os.makedirs(workdir, exist_ok=True)
  table = run_sweep(_CONFIG.value, rows, workdir, columns)
  text = format_table(table, columns)
  average = {c: sum(r[c] for r in table) / len(table) for c in columns
             if all(c in r for r in table)}
  print(f"\n{name} ({config_path})\n{text}")
  print("average: " + ", ".join(f"{c} {100 * v:.2f}" for c, v in
                                 average.items()))
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump({"sweep": name, "config": config_path, "rows": table,
               "average": average}, f, indent=2, default=str)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(text + "\n")
  _plot(table, columns[0], os.path.join(workdir, f"{name}.png"), name)


def _plot(table, column, path, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(table)), 4))
  ax.bar(range(len(table)), [100 * r.get(column, 0.0) for r in table])
  ax.set_xticks(range(len(table)))
  ax.set_xticklabels([r["run"] for r in table], rotation=45, ha="right",
                     fontsize=8)
  ax.set_ylabel(column + " (%)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "sweep"])
  app.run(main)
