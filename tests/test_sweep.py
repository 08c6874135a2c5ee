"""launch/sweep.py: every shipped sweep row applies, and finished rows make
the table (nested metrics such as top3.OP included) without training again.

sweep.py defines absl flags at import, so it runs in subprocesses here.
"""
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, *args, timeout=240):
  env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "launch"))
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_every_shipped_sweep_row_applies_to_its_config():
  code = r"""
import glob, importlib.util, os, sys
import sweep
checked = 0
for path in sorted(glob.glob("configs/*.py")):
  spec = importlib.util.spec_from_file_location("c", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweeps"):
    continue
  config = module.get_config()
  for name, spec in module.get_sweeps().items():
    rows = spec["rows"] if isinstance(spec, dict) else spec
    labels = [label for label, _ in rows]
    assert all("," not in l for l in labels), (path, name, labels)
    slugs = [sweep.slug(l) for l in labels]
    assert len(set(slugs)) == len(slugs), (path, name, slugs)
    for label, overrides in rows:
      sweep.apply_overrides(config, overrides)   # raises on an unknown key
      checked += 1
print("rows", checked)
"""
  out = run_python(code)
  assert out.returncode == 0, out.stderr[-3000:]
  assert int(out.stdout.split("rows")[-1]) > 20


def test_finished_rows_make_the_table_with_nested_metrics(tmp_path):
  code = r"""
import importlib.util
spec = importlib.util.spec_from_file_location("c", "configs/dmacn_synthetic.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for label, _ in module.get_sweeps()["ablation"]["rows"]:
  print(label)
"""
  labels = run_python(code).stdout.strip().splitlines()
  assert len(labels) == 8
  for k, label in enumerate(labels):   # sweep.py's row directories
    row = tmp_path / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
    row.mkdir()
    (row / "results.json").write_text(json.dumps({"step": 1, "test": {
        "mAP": 0.5 + k / 100, "OP": 0.25, "OR": 0.5, "OF1": 1 / 3,
        "top3": {"OP": 0.125, "OR": 0.75, "OF1": 0.2}}}))
  out = subprocess.run(
      [sys.executable, "launch/sweep.py", "--config=configs/dmacn_synthetic.py",
       "--sweep=ablation", f"--workdir={tmp_path}"], cwd=REPO,
      capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  table = json.loads((tmp_path / "ablation.json").read_text())
  assert [r["run"] for r in table["rows"]] == labels
  first = table["rows"][0]
  assert first["top3.OP"] == 0.125 and first["top3.OF1"] == 0.2
  assert abs(table["average"]["mAP"] - 0.535) < 1e-9
  assert "|    12.50 |" in out.stdout and (tmp_path / "ablation.png").exists()


def test_a_finished_row_of_another_config_is_refused(tmp_path):
  # Reusing results across configs (e.g. a --config.seed=1 sweep in the
  # seed-0 workdir) would silently report the wrong runs.
  code = r"""
import importlib.util, json, os, sys
import sweep
spec = importlib.util.spec_from_file_location("c", "configs/dmacn_synthetic.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
for label, overrides in module.get_sweeps()["ablation"]["rows"]:
  row = os.path.join(sys.argv[1], sweep.slug(label))
  os.makedirs(row)
  with open(os.path.join(row, "config.json"), "w") as f:
    f.write(sweep.apply_overrides(config, overrides).to_json_best_effort())
  with open(os.path.join(row, "results.json"), "w") as f:
    json.dump({"step": 1, "test": {"mAP": 0.5}}, f)
"""
  made = run_python(code, str(tmp_path))
  assert made.returncode == 0, made.stderr[-3000:]
  cmd = [sys.executable, "launch/sweep.py", "--config=configs/dmacn_synthetic.py",
         "--sweep=ablation", f"--workdir={tmp_path}", "--metric=mAP"]
  same = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=240)
  assert same.returncode == 0, same.stderr[-3000:]
  other = subprocess.run(cmd + ["--config.seed=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=240)
  assert other.returncode != 0
  assert "another config (seed: 0 there, 1 now" in other.stderr
  assert "--workdir" in other.stderr
