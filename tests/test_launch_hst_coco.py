"""`launch/main.py --config=configs/hst_coco.py`: fails fast without COCO,
starts training on COCO-format fixture files (the paper's config with only
the scale overridden, so the test fits a CPU)."""
import json
import os
import subprocess
import sys

from test_readers import coco_annotation, coco_image, write_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*flags, timeout=600):
  # One CPU device: the 8-device sharding has its own tests; here it would
  # only multiply the compile time of the paper-size config.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "main.py"),
       "--config=" + os.path.join(ROOT, "configs", "hst_coco.py"), *flags],
      capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
  return done


def test_missing_coco_fails_before_any_work(tmp_path):
  done = launch(f"--config.data.dir={tmp_path / 'nowhere'}",
                   f"--workdir={tmp_path / 'run'}")
  assert done.returncode != 0
  text = done.stdout + done.stderr
  assert "annotations/instances_train2014.json" in text   # the layout
  assert "tfds build coco/2014" in text                   # how to get it
  assert "Traceback" not in text                          # one paragraph
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_coco_fixture_starts_training(tmp_path):
  ids = range(1, 9)
  train = ([coco_image(i, "train2014") for i in ids],
           [coco_annotation(i, i, 1 + i % 3) for i in ids]
           + [coco_annotation(100 + i, i, 1 + (i + 1) % 3) for i in ids[::2]])
  val = ([coco_image(i, "val2014") for i in (20, 21, 22, 23)],
         [coco_annotation(200 + i, i, 1 + i % 3) for i in (20, 21, 22, 23)])
  write_coco(tmp_path / "coco2014", train=train, val=val)
  workdir = tmp_path / "run"
  done = launch(
      f"--config.data.dir={tmp_path}", f"--workdir={workdir}",
      "--config.model.backbone=resnet_tiny", "--config.model.width=8",
      "--config.model.frozen_stages=()", "--config.model.feature_dim=16",
      "--config.model.attention_dim=8", "--config.model.output_dim=16",
      "--config.data.image_size=32", "--config.data.resize_size=36",
      "--config.train.global_batch_size=8",
      "--config.train.steps=2", "--config.train.checkpoint_every=2",
      "--config.train.log_every=1", "--config.hst.kmeans_iters=2",
      "--config.hst.num_prototypes=1", "--config.hst.label_embedding_steps=20")
  assert done.returncode == 0, done.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["method"] == "hst" and config["data"]["name"] == "coco2014"
  assert config["hst"]["weight_cooc"] == 10.0          # the paper's recipe
  logged = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "loss" in r] == [1, 2]
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 2 and 0.0 <= results["test"]["mAP"] <= 1.0
