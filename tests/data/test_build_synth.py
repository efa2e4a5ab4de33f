"""The builder on the session's synthetic world (conftest: tiny_meds_dir, tiny_data_dir)."""

import json
import os

import numpy as np

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.conventions import TokenKind
from lmm_jax.data import records
from lmm_jax.data import vocab as vocab_lib


def test_synthetic_world_builds(tiny_meds_dir, tiny_data_dir):
  with open(os.path.join(tiny_data_dir, records.REPORT_FILE)) as f:
    report = json.load(f)
  assert report["input_rows"] == report["used_rows"] + sum(report["dropped"].values())
  assert report["used_rows"] > 0.99 * report["input_rows"]
  assert report["meds_dir"] == os.path.abspath(tiny_meds_dir)
  assert report["splits_source"] == "metadata/subject_splits.parquet"
  vocab = vocab_lib.Vocabulary.load(os.path.join(tiny_data_dir, records.VOCAB_FILE))
  assert report["vocab_size"] == vocab.size
  for kind in (TokenKind.DIAGNOSIS, TokenKind.PROCEDURE, TokenKind.DRUG, TokenKind.COST,
               TokenKind.CLAIM, TokenKind.TIME, TokenKind.DEATH):
    ids = vocab.ids_of_kind(kind)
    assert vocab.counts[ids].sum() > 0, kind
  for split in conventions.SPLITS:
    assert report["patients"][split] > 0 and report["task_examples"][split] > 0
    tasks = list(records.read_records(tiny_data_dir, records.TASK, split))
    assert len(tasks) == report["task_examples"][split]
    for rec in tasks:
      assert np.all(rec["days"] <= rec["index_day"]) and rec["tokens"].size >= rec["prefix_len"]
      assert rec["index_day"] == report["index_day"]


def test_condition_tokens_agree_with_targets(tiny_data_dir):
  """A prevalent condition shows up as a condition-flagged diagnosis token in the history."""
  vocab = vocab_lib.Vocabulary.load(os.path.join(tiny_data_dir, records.VOCAB_FILE))
  flagged = prevalent = 0
  for rec in records.read_records(tiny_data_dir, records.TASK, conventions.TRAIN):
    from_tokens = vocab.token_conditions[rec["tokens"]].max(axis=0)
    # A token flag shows the raw code was coded (backoff can only lose specificity); the
    # CCW-style rule (one inpatient or two other claims) makes most of them prevalent cases.
    flagged += int(from_tokens.sum())
    prevalent += int(rec["cond_prior"][from_tokens == 1].sum())
  assert flagged > 0 and prevalent > 0.5 * flagged
  assert vocab.token_conditions.shape == (vocab.size, conditions.NUM_CONDITIONS)


def test_decoded_timeline_is_readable(tiny_data_dir):
  vocab = vocab_lib.Vocabulary.load(os.path.join(tiny_data_dir, records.VOCAB_FILE))
  rec = max(records.read_records(tiny_data_dir, records.TIMELINE, conventions.TRAIN),
            key=lambda r: r["tokens"].size)
  lines = vocab.decode(rec["tokens"])
  assert lines[0].startswith("start of sequence | GENDER")
  assert any(l.startswith("+") and "| CLAIM " in l and "cost $" in l for l in lines)
  assert any("ICD10CM " in l for l in lines)
