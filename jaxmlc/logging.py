"""Run logs: a console progress line, WORKDIR/metrics.jsonl, TensorBoard."""
from __future__ import annotations

import json
import logging as _pylogging
import math
import os
import sys
import time
from typing import Any, Mapping

log = _pylogging.getLogger("jaxmlc")


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  out = {}
  for k, v in metrics.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + "/"))
    elif isinstance(v, (int, float)) or hasattr(v, "__float__"):
      out[name] = float(v)
  return out


class MetricWriter:
  """Appends one JSON object per record to metrics.jsonl, mirrors to TensorBoard.

  Only process 0 writes (`enabled=False` elsewhere).
  """

  def __init__(self, workdir: str, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # optional: JSONL is the record of truth
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    flat = _flatten(metrics)
    record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v))
                                    for k, v in flat.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in flat.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """One console line per log step: step, epoch, loss, throughput, ETA."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
    self.total = total_steps
    self.enabled = enabled
    self._t0 = time.perf_counter()
    self._s0 = start_step

  def update(self, step: int, epoch: int, loss: float,
             examples_per_sec: float) -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self._t0
    done = max(step - self._s0, 1)
    eta = elapsed / done * max(self.total - step, 0)
    line = (f"step {step}/{self.total}  epoch {epoch}  loss {loss:.4f}  "
            f"{examples_per_sec:.1f} ex/s  ETA {_hms(eta)}")
    print(line, file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
