"""The trainer: artifacts, exact resume, NaN guard, device-count invariance."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _configs import tiny_config
from jaxmlc import checkpoint as ckpt_lib
from jaxmlc import train
from jaxmlc.methods import base, baseline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, config):
  s, variables, meta = train.restore_for_inference(config, workdir)
  return jax.device_get(variables["params"]), meta


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
  """An uninterrupted 20-step run on the 8 fake devices."""
  workdir = str(tmp_path_factory.mktemp("full"))
  config = tiny_config(data_dir)
  out = train.train_and_evaluate(config, workdir)
  return config, workdir, out


def test_artifacts(full_run):
  config, workdir, out = full_run
  assert jax.device_count() == 8
  for name in ("config.json", "metrics.jsonl", "results.json",
               "plots/pr_curves.png", "plots/per_class_ap.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 20
  for key in ("mAP", "mAP_voc", "CP", "CR", "CF1", "OP", "OR", "OF1",
              "hamming_loss"):
    assert 0.0 <= results["test"][key] <= 1.0, key
  assert set(results["test"]["top3"]) >= {"CP", "CR", "CF1", "OP", "OR", "OF1"}
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      "metrics.jsonl"))]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [5, 10, 15, 20]
  assert all(r["examples_per_sec"] > 0 for r in train_records)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "latest", "20"))


def test_resume_equals_uninterrupted(full_run, data_dir, tmp_path):
  config, full_dir, full_out = full_run
  workdir = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(data_dir, steps=10), workdir)
  out = train.train_and_evaluate(tiny_config(data_dir, steps=20), workdir)
  p_full, _ = _params(full_dir, config)
  p_resumed, meta = _params(workdir, config)
  assert meta["step"] == 20
  jax.tree.map(np.testing.assert_array_equal, p_full, p_resumed)
  assert out["test"] == full_out["test"]
  assert _losses(workdir)[20] == _losses(full_dir)[20]


def test_checkpoint_of_other_model_is_refused(full_run, data_dir):
  config, workdir, _ = full_run
  other = tiny_config(data_dir)
  other.model.width = 16
  with pytest.raises(ckpt_lib.CheckpointError, match="does not match"):
    train.restore_for_inference(other, workdir)
  other = tiny_config(data_dir)
  other.data.known_label_proportion = 0.3
  with pytest.raises(ckpt_lib.CheckpointError, match="known_label_proportion"):
    train.restore_for_inference(other, workdir)


@base.register("_nan_at_step_12")
def _nan_method(config, info):
  """The baseline whose loss turns NaN at step 12 (tests only)."""
  m = baseline.build(config, info)
  def loss_fn(variables, batch, rng, step):
    loss, aux, new = m.loss_fn(variables, batch, rng, step)
    return jnp.where(step == 12, jnp.nan, loss), aux, new
  return base.Method(name=m.name, init=m.init, loss_fn=loss_fn,
                     predict_fn=m.predict_fn, optimizer=m.optimizer)


def test_nan_stops_and_names_step(data_dir, tmp_path):
  config = tiny_config(data_dir, method="_nan_at_step_12")
  with pytest.raises(train.TrainingError,
                     match=r"at step 12.*last good checkpoint is step 10"):
    train.train_and_evaluate(config, str(tmp_path))


def test_nan_skip_policy_drops_the_batch(data_dir, tmp_path):
  config = tiny_config(data_dir, method="_nan_at_step_12", nan_policy="skip",
                       steps=15, checkpoint_every=0)
  out = train.train_and_evaluate(config, str(tmp_path))
  assert out["step"] == 15
  params, _ = _params(str(tmp_path), config)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_batch_must_divide_devices(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.train.global_batch_size = 12
  with pytest.raises(ValueError, match="does not divide across the 8 devices"):
    train.setup(config, str(tmp_path))


def test_one_device_gives_the_same_losses(full_run, data_dir, tmp_path):
  """The same run on 1 device (a subprocess) matches the 8-device losses."""
  _, full_dir, _ = full_run
  workdir = str(tmp_path / "one")
  code = (
      "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
      "from _configs import tiny_config\n"
      "from jaxmlc import train\n"
      "import jax; assert jax.device_count() == 1\n"
      "train.train_and_evaluate(tiny_config(%r), %r)\n"
      % (os.path.join(REPO, "tests"), REPO, data_dir, workdir))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  subprocess.run([sys.executable, "-c", code], env=env, check=True,
                 timeout=600)
  one, eight = _losses(workdir), _losses(full_dir)
  assert one.keys() == eight.keys()
  for step in one:
    np.testing.assert_allclose(one[step], eight[step], rtol=1e-3)


def test_check_same_config_refuses_another_runs_workdir(tmp_path):
  from jaxmlc.config_base import base_config
  c = base_config()
  train.check_same_config(c, str(tmp_path))          # no config.json: fine
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  train.check_same_config(c, str(tmp_path))          # the same config: fine
  other = c.copy_and_resolve_references()
  other.seed = 3
  other.data.known_label_proportion = 0.2
  with pytest.raises(ValueError, match=r"data.known_label_proportion: .* "
                     r"there, 0.2 now, seed: 0 there, 3 now.*--workdir"):
    train.check_same_config(other, str(tmp_path))
