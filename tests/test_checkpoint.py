"""Checkpoints: damaged ones are skipped, mismatched ones refused, never half-loaded."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlc import checkpoint as ckpt_lib


def _state(value, width=4):
  return {"params": {"dense": {"kernel": jnp.full((width, 3), value)}},
          "step": jnp.asarray(int(value), jnp.int32)}


def _abstract(width=4):
  return jax.eval_shape(lambda: _state(0.0, width))


def _save_steps(tmp_path, *steps):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  for s in steps:
    ckpt.save(s, _state(float(s)), {"method": "baseline", "step": s})
  ckpt.wait()
  return ckpt


def test_restores_newest(tmp_path):
  ckpt = _save_steps(tmp_path, 10, 20)
  state, meta = ckpt.restore(_abstract(), {"method": "baseline"})
  assert meta["step"] == 20
  np.testing.assert_array_equal(state["params"]["dense"]["kernel"], 20.0)


def _array_files(root, step):
  files = [f for f in glob.glob(os.path.join(root, "latest", str(step), "state",
                                             "**", "*"), recursive=True)
           if os.path.isfile(f) and "d/" in f.replace(os.sep, "/")]
  assert files, "expected OCDBT data files"
  return files


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, caplog):
  ckpt = _save_steps(tmp_path, 10, 20)
  for f in _array_files(ckpt.root, 20):
    with open(f, "r+b") as fh:
      fh.truncate(max(os.path.getsize(f) // 3, 1))
  state, meta = ckpt.restore(_abstract(), {"method": "baseline"})
  assert meta["step"] == 10
  np.testing.assert_array_equal(state["params"]["dense"]["kernel"], 10.0)
  assert "step 20 failed to restore" in caplog.text


def test_damaged_metadata_falls_back(tmp_path, caplog):
  ckpt = _save_steps(tmp_path, 10, 20)
  meta_dir = os.path.join(ckpt.root, "latest", "20", "meta")
  for f in glob.glob(os.path.join(meta_dir, "*")):
    with open(f, "w") as fh:
      fh.write("{not json")
  _, meta = ckpt.restore(_abstract(), {"method": "baseline"})
  assert meta["step"] == 10


def test_all_damaged_is_an_error_naming_the_fix(tmp_path):
  ckpt = _save_steps(tmp_path, 10)
  for f in _array_files(ckpt.root, 10):
    with open(f, "wb") as fh:
      fh.write(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match="could be restored.*new --workdir"):
    ckpt.restore(_abstract(), {"method": "baseline"})


def test_half_written_checkpoint_is_invisible(tmp_path):
  ckpt = _save_steps(tmp_path, 10)
  # What a save killed before its final rename leaves behind.
  os.makedirs(os.path.join(ckpt.root, "latest",
                           "20.orbax-checkpoint-tmp-123", "state"))
  fresh = ckpt_lib.Checkpointer(str(tmp_path))
  assert fresh.steps() == [10]
  _, meta = fresh.restore(_abstract(), {"method": "baseline"})
  assert meta["step"] == 10


def test_other_model_or_method_is_refused(tmp_path):
  ckpt = _save_steps(tmp_path, 10)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"does not match this model: params/dense/kernel: "
                     r"model float32\[8,3\], checkpoint float32\[4,3\]"):
    ckpt.restore(_abstract(width=8), {"method": "baseline"})
  with pytest.raises(ckpt_lib.CheckpointError,
                     match="written with method='baseline'.*method='hst'"):
    ckpt.restore(_abstract(), {"method": "hst"})
