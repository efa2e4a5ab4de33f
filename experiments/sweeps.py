"""Hyperparameter sweeps declared beside the configs they sweep.

An experiment config module (experiments/configs/*.py) defines
  get_config(arg) -> ConfigDict      the presets
  sweep(arg) -> Iterable[dict]       override sets, e.g. {"optimizer.learning_rate": 1e-3}
  BINARY = "experiments.finetune"    the binary that runs one point
  SWEEP_METRIC = ("eval_nmae", "min")  the tuning-split metric that ranks the points
`run_sweep` runs every point as its own process (the real binary, with `--config.KEY=VALUE`
overrides) in `workdir/points/NAME/`, skips points whose run already finished, and ranks them.
The first point that fails stops the sweep: the points still running are stopped, the ones not
started are not, and the error names the point and ends with the tail of its log.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

from absl import logging

DONE_FILE = "sweep_point_done.json"
LOG_FILE = "stdout.log"
_LOG_TAIL_LINES = 20
_STOP_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: Mapping[str, Any]


def load_config_module(config_path: str):
  """Imports an experiment config module from 'path/to/config.py' (a ':PRESET' suffix is ignored)."""
  path = config_path.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + hashlib.sha1(path.encode()).hexdigest()[:8], path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot import config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for attr in ("sweep", "BINARY", "SWEEP_METRIC"):
    if not hasattr(module, attr):
      raise AttributeError(f"config file {path!r} declares no `{attr}`; a sweepable config needs "
                           "sweep(arg), BINARY and SWEEP_METRIC")
  return module


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
  """A readable, filesystem-safe, stable name for an override set."""
  parts = [f"{k.split('.')[-1]}={_format_value(v)}" for k, v in sorted(overrides.items())]
  name = ",".join(parts) or "default"
  safe = "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in name)
  if len(safe) > 80:
    safe = safe[:60] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
  return safe


def expand(module, preset: str) -> list[Point]:
  points = [Point(point_name(o), dict(o)) for o in module.sweep(preset)]
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep() yields duplicate override sets: {names}")
  return points


def _point_command(binary: str, config_arg: str, workdir: str, overrides: Mapping[str, Any],
                   extra_flags: Sequence[str]) -> list[str]:
  cmd = [sys.executable, "-m", binary, f"--config={config_arg}", f"--workdir={workdir}"]
  cmd += [f"--config.{k}={_format_value(v)}" for k, v in sorted(overrides.items())]
  return cmd + list(extra_flags)


def last_eval_metrics(run_dir: str) -> dict[str, float]:
  """The last eval entry of a run's metrics.jsonl (the trainer's `eval_*` keys)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  last: dict[str, float] = {}
  with open(path) as f:
    for line in f:
      entry = json.loads(line)
      evals = {k: v for k, v in entry.items() if k.startswith("eval_")}
      if evals:
        last = {"step": entry.get("step"), **evals}
  return last


class _Points:
  """The point processes running now, so that the first failure can stop the others."""

  def __init__(self):
    self._lock = threading.Lock()
    self._running: set[subprocess.Popen] = set()
    self.stopping = False

  def start(self, cmd: list[str], log) -> Optional[subprocess.Popen]:
    with self._lock:
      if self.stopping:
        return None
      # A session of its own: stopping a point stops the processes it started too.
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
      self._running.add(proc)
      return proc

  def finished(self, proc: subprocess.Popen) -> None:
    with self._lock:
      self._running.discard(proc)

  def stop_all(self) -> None:
    with self._lock:
      self.stopping = True
      running = list(self._running)
    for proc in running:
      _signal_group(proc, signal.SIGTERM)
    deadline = time.time() + _STOP_GRACE_S
    for proc in running:
      try:
        proc.wait(max(0.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def _log_tail(path: str, lines: int = _LOG_TAIL_LINES) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - 200 * lines))  # a training log can be long
      tail = f.read().decode(errors="replace").splitlines()[-lines:]
  except OSError as e:
    return f"  | (no log: {e})"
  return "\n".join("  | " + l for l in tail) if tail else "  | (the log is empty)"


def _exit_description(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
    except ValueError:
      return f"killed by signal {-returncode}"
  return f"exit {returncode}"


def _run_point(point: Point, binary: str, config_arg: str, sweep_dir: str,
               extra_flags: Sequence[str], points: _Points) -> Optional[dict[str, Any]]:
  """Runs one point (None when the sweep is stopping and the point was not started)."""
  run_dir = os.path.join(sweep_dir, "points", point.name)
  done = os.path.join(run_dir, DONE_FILE)
  if os.path.exists(done):
    with open(done) as f:
      return {**json.load(f), "skipped": True}
  os.makedirs(run_dir, exist_ok=True)
  cmd = _point_command(binary, config_arg, run_dir, point.overrides, extra_flags)
  start = time.time()
  log_path = os.path.join(run_dir, LOG_FILE)
  with open(log_path, "w") as log:
    proc = points.start(cmd, log)
    if proc is None:
      return None
    try:
      returncode = proc.wait()
    finally:
      points.finished(proc)
  if returncode != 0:
    if points.stopping:
      return None  # stopped because another point failed
    raise RuntimeError(f"sweep point {point.name} failed ({_exit_description(returncode)}); "
                       f"the end of {log_path}:\n{_log_tail(log_path)}")
  result = {"name": point.name, "overrides": dict(point.overrides),
            "metrics": last_eval_metrics(run_dir), "seconds": round(time.time() - start, 1)}
  with open(done, "w") as f:
    json.dump(result, f, indent=2)
  return {**result, "skipped": False}


def run_sweep(config_arg: str, workdir: str, *, parallel: int = 1,
              extra_flags: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Runs (or resumes) the sweep of `config_arg` ('path.py:PRESET'); returns ranked results."""
  module = load_config_module(config_arg)
  preset = config_arg.split(":", 1)[1] if ":" in config_arg else None
  points = expand(module, preset)
  metric, mode = module.SWEEP_METRIC
  logging.info("sweep of %d points over %s, ranked by %s (%s)", len(points), config_arg, metric,
               mode)
  results = []
  running = _Points()
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel))
  try:
    futures = [pool.submit(_run_point, p, module.BINARY, config_arg, workdir, extra_flags,
                           running) for p in points]
    for future in concurrent.futures.as_completed(futures):
      result = future.result()
      logging.info("point %s %s: %s=%s", result["name"],
                   "skipped (finished earlier)" if result["skipped"] else "done",
                   metric, result["metrics"].get(metric))
      results.append(result)
  except BaseException:
    # The first failure (or Ctrl-C) ends the sweep now: points not started never start, running
    # ones are stopped (a restart runs them again).
    pool.shutdown(wait=False, cancel_futures=True)
    running.stop_all()
    raise
  finally:
    pool.shutdown(wait=True)
  missing = [r["name"] for r in results if metric not in r["metrics"]]
  if missing:
    raise KeyError(f"metric {metric!r} is missing from the eval metrics of points {missing}")
  results.sort(key=lambda r: r["metrics"][metric], reverse=(mode == "max"))
  write_results(workdir, results, metric, mode)
  return results


def write_results(workdir: str, results: Sequence[Mapping[str, Any]], metric: str,
                  mode: str) -> None:
  """sweep_results.md / .json: points ranked by the tuning metric, best overrides first."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep_results.json"), "w") as f:
    json.dump({"metric": metric, "mode": mode, "ranked": list(results),
               "best_overrides": results[0]["overrides"] if results else None}, f, indent=2)
  keys = sorted({k for r in results for k in r["overrides"]})
  lines = [f"# Sweep results, ranked by {metric} on the tuning split ({mode} is best)", "",
           "| rank | point | " + " | ".join(keys) + f" | {metric} | step | seconds |",
           "|---" * (len(keys) + 5) + "|"]
  for rank, r in enumerate(results, 1):
    values = " | ".join(_format_value(r["overrides"].get(k, "")) for k in keys)
    lines.append(f"| {rank} | {r['name']} | {values} | {r['metrics'][metric]:.6g} | "
                 f"{r['metrics'].get('step')} | {r.get('seconds', '')} |")
  if results:
    best = " ".join(f"--config.{k}={_format_value(v)}" for k, v in sorted(results[0]["overrides"].items()))
    lines += ["", f"Best point: `{results[0]['name']}`; its overrides: `{best}`"]
  with open(os.path.join(workdir, "sweep_results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
