"""Prediction: one pass of a fine-tuned run over a split, every member once, written to the
predictions files of `lmm_jax.eval.predictions`.

    metrics = train_and_predict(config, workdir)     # fine-tune (or resume), then predict
    path = predict_and_write(config, workdir, task)  # predict from the run's latest checkpoint

What differs per task (calibration rows, output columns, the file written) is a method of the task
(`lmm_jax.tasks.finetune.FinetuneTask`); this module only runs the compiled eval step over the
batches on every process and gathers the outputs.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from lmm_jax import runs
from lmm_jax import tasks as tasks_lib
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import early_stopping as es_lib
from lmm_jax.train import trainer as trainer_lib


def _gather(x: Any) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def collect_outputs(trainer: trainer_lib.Trainer, params: Any,
                    batches: Iterable[Mapping[str, np.ndarray]], progress: bool = False,
                    desc: str = "predict") -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(subject ids, per-example eval outputs) over all processes' batches, padding rows dropped."""
  ids, outs = [], {}
  bar = tqdm.tqdm(desc=desc, unit="batch") if progress and jax.process_index() == 0 else None
  for batch in batches:
    out = trainer.eval_outputs(params, batch)
    # Subject ids stay on the host (int64); across processes they travel as two uint32 halves.
    sid = np.asarray(batch["subject_id"], np.int64)
    hi = _gather((sid >> 32).astype(np.int32))
    lo = _gather((sid & 0xFFFFFFFF).astype(np.uint32))
    ids.append((hi.astype(np.int64) << 32) | lo.astype(np.int64))
    for k, v in out.items():
      outs.setdefault(k, []).append(_gather(v))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if not ids:
    raise ValueError("no batches to predict")
  out = {k: np.concatenate(v) for k, v in outs.items()}
  keep = np.asarray(out["valid"]) > 0
  return np.concatenate(ids)[keep], {k: v[keep] for k, v in out.items()}


def predict_and_write(config: ml_collections.ConfigDict, workdir: str,
                      task: tasks_lib.FinetuneTask) -> str:
  """Predicts config.predict_split from the run's latest checkpoint (with early stopping: its
  best by the tuning metric); returns the file written."""
  tr = trainer_lib.Trainer(config, task)
  es = es_lib.EarlyStopping.from_config(config)
  best = None if es is None else ckpt_lib.best_step(workdir, es.metric, es.mode)
  params, step = runs.restore_params(workdir, tr.abstract_state["params"], best,
                                     hint="train before predicting")
  pcount, pindex = jax.process_count(), jax.process_index()
  shard = dict(batch_size=max(config.eval_batch_size // pcount, 1), shard_index=pindex,
               shard_count=pcount)
  progress = config.get("progress", True)
  collect = functools.partial(collect_outputs, tr, params, progress=progress)
  calibration = task.calibration(functools.partial(collect, desc="calibrate"), **shard)
  ids, outputs = collect(task.predict_batches(config.predict_split, **shard),
                         desc=f"predict {config.predict_split}")
  meta = {"kind": "finetuned", "data_dir": os.path.abspath(config.data_dir),
          "split": config.predict_split, "num_params": int(tr.num_params), "step": int(step),
          "init_from": config.init_from or None, "preset": config.preset,
          "description": (f"{task.describe()}; transformer {config.model.num_layers}x"
                          f"{config.model.d_model}, "
                          + ("pretrained backbone" if config.init_from else "from scratch")
                          + (", frozen" if config.optimizer.freeze_backbone else ""))}
  path = ""
  if pindex == 0:
    path = task.write_predictions(workdir, ids, outputs, meta, calibration)
    logging.info("wrote %d %s predictions to %s", len(ids), config.predict_split, path)
  return path


def train_and_predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (resuming when possible), evaluates on the tuning split, writes predictions."""
  task = tasks_lib.make_task(config)
  if not isinstance(task, tasks_lib.FinetuneTask):
    raise ValueError(f"config.task={config.task!r} is not a fine-tuning task; its runs predict "
                     "nothing (use experiments.pretrain)")
  final = trainer_lib.train_and_evaluate(config, workdir, task)
  final["predictions"] = predict_and_write(config, workdir, task)
  return final
