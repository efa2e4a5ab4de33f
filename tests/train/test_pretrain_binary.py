"""End to end: the pretrain binary on the tiny synthetic dataset writes its workdir and resumes."""

import json
import os
import subprocess
import sys

from lmm_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(data_dir: str, workdir: str, steps: int) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "experiments.pretrain",
       "--config=experiments/configs/pretrain.py:tiny", f"--workdir={workdir}",
       f"--config.data_dir={data_dir}", f"--config.num_train_steps={steps}", "--config.seed=0",
       "--config.checkpoint_every_steps=4", "--config.log_every_steps=2",
       "--config.eval_batches=2", "--config.progress=False"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_pretrain_binary_writes_workdir(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "pretrain")
  proc = _run(tiny_data_dir, workdir, 8)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "parameters" in proc.stdout and "eval_loss" in proc.stdout

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["num_train_steps"] == 8 and config["data_dir"] == tiny_data_dir
  rows = metrics_lib.read_metrics(workdir)
  train = [r for r in rows if "train_loss" in r]
  assert [r["step"] for r in train] == [2, 4, 6, 8]
  assert all(k in train[-1] for k in ("lr", "grad_norm", "tokens_per_s", "step_time_s",
                                      "train_loss/diagnosis"))
  evals = [r for r in rows if "eval_loss" in r]
  assert evals and evals[-1]["step"] == 8
  assert {"eval_perplexity", "eval_acc1", "eval_acc10", "eval_acc10/diagnosis"} <= set(evals[-1])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert "subject_id" not in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8").read()

  # The same command again resumes from the workdir (here: already done) instead of restarting.
  proc = _run(tiny_data_dir, workdir, 8)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "starting at step 8" in proc.stderr and "already trained" in proc.stderr
  assert [r["step"] for r in metrics_lib.read_metrics(workdir) if "train_loss" in r] == [2, 4, 6, 8]
