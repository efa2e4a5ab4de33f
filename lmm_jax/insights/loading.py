"""Task records as padded rows, and the `Predictor`: a fine-tuned model as pure functions.

The insights need what the pipeline's batches do not carry (the demographic prefix length, to
never attribute or delete it), so task records are read here and truncated exactly as the
pipeline does ('recent': the prefix plus the most recent events; days relative to the first
kept token).

A `Predictor` holds parameters and three pure functions of them:
  embed_fn(params, batch) -> x_BxLxD                  the input embeddings (token + time)
  outputs_fn(params, x_BxLxD, batch) -> {name: [B...]} the heads on top of those embeddings
  score(batch, select) -> [B]                          jitted: select(outputs_fn(embed_fn(...)))
so attribution can differentiate with respect to the embeddings, and relationships can re-run the
model on edited histories.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import runs
from lmm_jax import xla_options
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.data.fields import FieldKind
from lmm_jax.tasks.finetune import FinetuneTask


def record_to_row(rec: Mapping[str, Any], seq_len: int) -> dict[str, np.ndarray]:
  """One task record as a padded row (pipeline 'recent' truncation) plus its task fields."""
  tokens = np.asarray(rec["tokens"], np.int32)
  n = len(tokens)
  prefix_len = int(rec["prefix_len"])
  keep = pipeline.keep_indices(n, prefix_len, seq_len, "recent", None)
  kept_days = np.asarray(rec["days"], np.int64)[keep]
  m = len(kept_days)
  row: dict[str, np.ndarray] = {}
  row["tokens"] = np.zeros(seq_len, np.int32)
  row["tokens"][:m] = tokens[keep]
  row["age"] = np.zeros(seq_len, np.float32)
  row["age"][:m] = np.asarray(rec["age"], np.float32)[keep]
  row["days"] = np.zeros(seq_len, np.float32)
  row["days"][:m] = (kept_days - kept_days[0]).astype(np.float32) if m else 0.0
  row["segment_ids"] = (np.arange(seq_len) < m).astype(np.int32)
  row["positions"] = np.where(row["segment_ids"] > 0, np.arange(seq_len), 0).astype(np.int32)
  row["length"] = np.int32(m)
  row["valid"] = np.int32(1)
  row["prefix_len"] = np.int32(min(prefix_len, m))
  # Days from each kept token to the index date (for the report: "how long ago").
  row["days_before_index"] = np.zeros(seq_len, np.float32)
  row["days_before_index"][:m] = (int(rec["index_day"]) - kept_days).astype(np.float32)
  for f in pipeline.task_batch_fields():   # covariates and targets, as the pipeline batches them
    if f.kind != FieldKind.META:
      row[f.name] = f.batch_value(rec[f.name])
  return row


def read_rows(data_dir: str, split: str, seq_len: int, *, limit: int | None = None
              ) -> Iterator[dict[str, np.ndarray]]:
  """Padded rows of a split's task records, in file order (at most `limit`)."""
  for i, rec in enumerate(records.read_records(data_dir, records.TASK, split)):
    if limit is not None and i >= limit:
      return
    yield record_to_row(rec, seq_len)


def stack(rows: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


@dataclasses.dataclass(eq=False)
class Predictor:
  """A model as pure functions of its parameters (see the module docstring)."""
  params: Any
  embed_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array]
  outputs_fn: Callable[[Any, jax.Array, Mapping[str, jax.Array]], Mapping[str, jax.Array]]
  embedding_matrix_VxD: np.ndarray   # token embedding rows of the real vocabulary
  pad_id: int = 0
  # Names of the batch fields the functions read (others, e.g. subject_id, stay on the host).
  batch_keys: tuple[str, ...] = ("tokens", "segment_ids", "positions", "age", "days", "length")

  def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(batch[k]) for k in self.batch_keys if k in batch}

  @functools.cached_property
  def _outputs_jit(self):
    def run(params, batch):
      return self.outputs_fn(params, self.embed_fn(params, batch), batch)
    return xla_options.jit(run)

  def outputs(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = self._outputs_jit(self.params, self.device_batch(batch))
    return {k: np.asarray(v) for k, v in out.items()}

  def score(self, batch: Mapping[str, np.ndarray],
            select: Callable[[Mapping[str, Any]], Any]) -> np.ndarray:
    return np.asarray(select(self.outputs(batch)))


# ------------------------------------------------------------------------------------------------
# A fine-tuned run as a Predictor.


def load_finetuned(finetune_workdir: str, data_dir: str | None = None, *,
                   step: int | None = None) -> tuple[Predictor, FinetuneTask, Any]:
  """(Predictor, task, config) of a fine-tuning run's latest (or given) checkpoint.

  Outputs are the task's `named_outputs`: cost runs give 'cost' (predicted mean dollars) and
  'log_cost'; chronic runs give 'chronic_logit' and 'chronic_prob' [B, C]. Parameters live on the
  first device: the insights run many small batches, where cross-device traffic only costs.
  """
  run = runs.load_run(finetune_workdir, data_dir=data_dir, step=step, hint=(
      f"fine-tuning run {finetune_workdir}"))
  task = run.task
  if not isinstance(task, FinetuneTask):
    raise ValueError(f"{finetune_workdir}: task={run.config.task!r}; expected a fine-tuning run "
                     "(experiments.finetune --workdir)")
  graphdef = run.graphdef

  def embed_fn(p, batch):
    model = nnx.merge(graphdef, p)
    return model.backbone.embed(batch["tokens"], batch.get("age"), batch.get("days"))

  def outputs_fn(p, x_BxLxD, batch):
    model = nnx.merge(graphdef, p)
    out_BxO = model.from_embeddings(x_BxLxD, batch["segment_ids"], batch["positions"],
                                    batch["length"])
    return task.named_outputs(out_BxO)

  emb = np.asarray(run.params[task.backbone_key]["embedding"], np.float32)[:task.vocab.size]
  predictor = Predictor(params=run.params, embed_fn=embed_fn, outputs_fn=outputs_fn,
                        embedding_matrix_VxD=emb, pad_id=int(task.vocab.pad_id))
  return predictor, task, run.config
