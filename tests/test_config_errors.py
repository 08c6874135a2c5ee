"""Config mistakes give one clear paragraph before any data is read or compiled."""
import os
import subprocess
import sys
import time

import pytest

from _configs import tiny_config
from jaxmlc import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c.data, "known_label_proportion", 0.0),
     r"known_label_proportion=0.0 is outside \(0, 1\]"),
    (lambda c: setattr(c.data, "known_label_proportion", 1.5),
     r"known_label_proportion=1.5 is outside \(0, 1\]"),
    (lambda c: setattr(c, "method", "hts"), r"'hts' is not a known method. "
     r"Did you mean 'hst'\?"),
    (lambda c: setattr(c, "method", "nonsense"), r"Known methods: .*baseline"),
    (lambda c: setattr(c.train, "global_batch_size", 20),
     r"global_batch_size=20 does not divide across the 8 devices.*16 or 24"),
    (lambda c: setattr(c.data, "image_size", 16),
     r"image_size=16 is too small for backbone 'resnet_tiny'"),
    (lambda c: setattr(c.train, "precision", "fp16"),
     r"train.precision='fp16': expected one of 'float32', 'bfloat16'"),
    (lambda c: setattr(c.train, "nan_policy", "ignore"),
     r"nan_policy='ignore'"),
    (lambda c: setattr(c.data, "crop_scales", (512, 448)),
     r"crop_scales=\(512, 448\): crop sides are fractions"),
])
def test_config_errors_are_clear(edit, message, tmp_path):
  config = tiny_config(str(tmp_path / "no_data_needed"))
  edit(config)
  start = time.perf_counter()
  with pytest.raises(ValueError, match=message):
    train.validate(config)
  assert time.perf_counter() - start < 5
  assert not os.path.exists(tmp_path / "no_data_needed")   # nothing was read


def _launch(*flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "main.py"),
       f"--config={REPO}/configs/baseline_synthetic.py:tiny", *flags],
      env=env, capture_output=True, text=True, timeout=300)


def test_launcher_prints_one_paragraph_not_a_traceback(tmp_path):
  out = _launch(f"--workdir={tmp_path}", "--config.method=hts")
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  assert "error: config.method='hts' is not a known method. Did you mean 'hst'?" \
      in out.stderr


def test_launcher_rejects_unknown_and_mistyped_keys(tmp_path):
  out = _launch(f"--workdir={tmp_path}", "--config.train.stepz=5")
  assert out.returncode != 0 and "stepz" in out.stderr
  out = _launch(f"--workdir={tmp_path}", "--config.train.steps=many")
  assert out.returncode != 0 and "steps" in out.stderr


@pytest.mark.parametrize("path", sorted(
    p for p in os.listdir(os.path.join(REPO, "configs")) if p.endswith(".py")))
def test_every_shipped_config_passes_validation(path, monkeypatch):
  """A paper config with a bad value would only fail on the real data."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "config_under_test", os.path.join(REPO, "configs", path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  # Batch sizes are checked against the devices of the run, not these 8.
  monkeypatch.setattr(train, "check_batch_size", lambda *a, **k: None)
  train.validate(config)


@pytest.mark.parametrize("section, key, closest", [
    ("hst", "use_itst", "use_ist"), ("dmacn", "lambda_mvv", "lambda_mv"),
    ("cma", "atention", "attention"), ("mscnn", "knnn", "knn"),
    ("mmdl", "holdout_evry", "holdout_every")])
def test_method_sections_reject_typos_with_the_closest_key(section, key,
                                                           closest):
  import importlib
  module = importlib.import_module(f"jaxmlc.methods.{section}")
  config = tiny_config("unused")
  with config.unlocked():
    config[section] = {key: 1}
  with pytest.raises(ValueError, match=rf"config.{section} has unknown key\(s\) "
                     rf"'{key}' \(did you mean '{closest}'\?\)"):
    getattr(module, f"{section}_config")(config)
