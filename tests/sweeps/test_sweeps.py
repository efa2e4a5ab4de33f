"""The sweep runner: expansion, ranking, skipping finished points, failures."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = textwrap.dedent('''
    BINARY = "tests.sweeps.fake_binary"
    SWEEP_METRIC = ("eval_loss", "min")

    def get_config(arg="tiny"):
      return None

    def sweep(arg=None):
      for lr in (1e-4, 1e-3, 1e-2):
        for width in (64, 128):
          yield {"optimizer.learning_rate": lr, "model.d_model": width}
    ''')


@pytest.fixture
def config_path(tmp_path):
  path = tmp_path / "config.py"
  path.write_text(_CONFIG)
  return str(path)


def test_expand_names_points_uniquely(config_path):
  points = sweeps.expand(sweeps.load_config_module(config_path + ":tiny"), "tiny")
  assert len(points) == 6
  assert len({p.name for p in points}) == 6
  assert "learning_rate=0.001" in {n for p in points for n in p.name.split(",")}


def test_runs_ranks_and_skips_finished_points(config_path, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  workdir = str(tmp_path / "sweep")
  results = sweeps.run_sweep(config_path + ":tiny", workdir, parallel=2)
  best = results[0]
  assert best["overrides"] == {"optimizer.learning_rate": 1e-3, "model.d_model": 64}
  losses = [r["metrics"]["eval_loss"] for r in results]
  assert losses == sorted(losses)
  with open(os.path.join(workdir, "sweep_results.json")) as f:
    assert json.load(f)["best_overrides"] == best["overrides"]
  table = open(os.path.join(workdir, "sweep_results.md")).read()
  assert "--config.model.d_model=64 --config.optimizer.learning_rate=0.001" in table
  with open(os.path.join(workdir, "runs.txt")) as f:
    assert len(f.read().splitlines()) == 6
  # A restart skips every finished point: the binary does not run again.
  again = sweeps.run_sweep(config_path + ":tiny", workdir)
  assert all(r["skipped"] for r in again)
  with open(os.path.join(workdir, "runs.txt")) as f:
    assert len(f.read().splitlines()) == 6


@pytest.mark.time_limit(120)
def test_failed_point_names_its_log(config_path, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(RuntimeError, match="stdout.log") as e:
    sweeps.run_sweep(config_path + ":tiny", str(tmp_path / "s"), extra_flags=["--config.fail=True"])
  assert "(exit 3)" in str(e.value) and "fake failure of the point" in str(e.value)


@pytest.mark.time_limit(120)
def test_failed_point_stops_the_parallel_sweep_promptly(config_path, tmp_path, monkeypatch):
  """Two points at once: the d_model=64 one fails at once, the other (60 s) is stopped, the
  points not started yet never start, and the error names the point and shows its stderr."""
  monkeypatch.chdir(REPO)
  workdir = str(tmp_path / "s")
  start = time.time()
  with pytest.raises(RuntimeError) as e:
    sweeps.run_sweep(config_path + ":tiny", workdir, parallel=2,
                     extra_flags=["--config.fail_width=64", "--config.sleep=60"])
  assert time.time() - start < 45
  message = str(e.value)
  assert message.startswith("sweep point d_model=64,learning_rate=0.0001 failed (exit 3)")
  assert "| fake failure of the point with d_model=64" in message
  assert not os.path.exists(os.path.join(workdir, "runs.txt"))  # no point finished
  started = os.listdir(os.path.join(workdir, "points"))
  assert "d_model=128,learning_rate=0.0001" in started and len(started) < 6
  assert not any(os.path.exists(os.path.join(workdir, "points", p, sweeps.DONE_FILE))
                 for p in started)


@pytest.mark.time_limit(120)
def test_killed_point_is_reported(config_path, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(RuntimeError, match=r"d_model=64,learning_rate=0\.0001 failed \(killed by "
                     r"signal 9 \(SIGKILL\)\)"):
    sweeps.run_sweep(config_path + ":tiny", str(tmp_path / "s"), parallel=2,
                     extra_flags=["--config.kill_width=64", "--config.sleep=60"])


@pytest.mark.time_limit(120)
def test_sweep_binary_exits_nonzero_on_a_failed_point(config_path, tmp_path):
  start = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--config={config_path}:tiny",
       f"--workdir={tmp_path / 's'}", "--parallel=2", "--", "--config.fail_width=64",
       "--config.sleep=60"],
      cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
  assert proc.returncode != 0
  assert "sweep point d_model=64,learning_rate=0.0001 failed" in proc.stderr
  assert "fake failure of the point with d_model=64" in proc.stderr
  assert time.time() - start < 60


def test_config_without_sweep_is_rejected(tmp_path):
  path = tmp_path / "plain.py"
  path.write_text("def get_config(arg=None):\n  return None\n")
  with pytest.raises(AttributeError, match="sweep"):
    sweeps.load_config_module(str(path))


@pytest.mark.parametrize("name", ["pretrain", "cost", "chronic"])
def test_experiment_sweeps_override_existing_keys(name):
  """Every override of every declared sweep names a key of the preset's (locked) config."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs", f"{name}.py")
  module = sweeps.load_config_module(path)
  for preset in ("tiny", "demo"):
    config = module.get_config(preset)
    points = sweeps.expand(module, preset)
    assert len(points) >= 2
    for point in points:
      # A locked config refuses unknown keys and values of the wrong type.
      config.update_from_flattened_dict(point.overrides)
