"""Metric writers: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard event files
(tensorboardX) and the console. Only process 0 writes; other processes get a no-op writer."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from absl import logging
import jax
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"

# Device peak dense bf16 FLOP/s (per chip) for the MFU estimate; overridable in the config.
PEAK_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v6": 918e12,
}


def peak_flops_per_device(configured: float = 0.0) -> float | None:
  """The configured peak, else a lookup by device kind, else None (e.g. CPU: no MFU)."""
  if configured > 0:
    return configured
  kind = jax.devices()[0].device_kind.lower()
  for name, flops in PEAK_FLOPS.items():
    if name in kind:
      return flops
  return None


def _jsonable(v: Any) -> Any:
  v = float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard; process 0 only."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._file = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _jsonable(v) for k, v in sorted(metrics.items())})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float)) or hasattr(v, "__float__"):
        self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()

  def trim_after(self, step: int) -> int:
    """Drops the rows logged after `step` (a resumed run's steps past its checkpoint, written
    before a crash, and a torn last line); returns how many rows were dropped."""
    if not self.enabled:
      return 0
    self._file.close()
    path = os.path.join(os.path.dirname(self._file.name), METRICS_FILE)
    with open(path, encoding="utf-8") as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if int(row.get("step", 0)) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
    self._file = open(path, "a", encoding="utf-8")
    return len(lines) - len(kept)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def console(step: int, num_steps: int, metrics: Mapping[str, Any], keys: tuple[str, ...]) -> None:
  parts = [f"step {step}/{num_steps}"]
  for k in keys:
    if k in metrics:
      parts.append(f"{k} {float(metrics[k]):.4g}")
  logging.info(" | ".join(parts))
