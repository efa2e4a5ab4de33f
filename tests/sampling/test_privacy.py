"""A raw code string seen once never leaks: not into vocab.json, not into generated timelines,
not past the memorization audit (issue 15, item 2)."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pyarrow.parquet as pq

from lmm_jax import conventions
from lmm_jax.conventions import TokenKind
from lmm_jax.data import build
from lmm_jax.data import records
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.sampling import audit as audit_lib
from lmm_jax.sampling import decode
from lmm_jax.sampling import synthetic
from tests.data import meds_factory as mf

PLANTED = "PATIENTNAME//John Q Public SSN 123-45-6789"
SECRETS = ("John Q Public", "123-45-6789")


def _build_with_planted_code(tmp_path) -> tuple[str, vocab_lib.Vocabulary]:
  rows = mf.claims_world(30, seed=11)
  first = rows[0]["subject_id"]
  rows.append({"subject_id": first, "time": dt.datetime(2020, 2, 3, 9), "code": PLANTED,
               "claim_id": "planted"})
  meds = mf.write_meds(str(tmp_path / "meds"), rows,
                       splits={r["subject_id"]: "train" for r in rows})
  out = str(tmp_path / "records")
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))
  return out, vocab_lib.Vocabulary.load(out)


def test_planted_code_is_nowhere_in_vocab_and_unk_tokens_have_no_sources(tmp_path):
  out, vocab = _build_with_planted_code(tmp_path)
  with open(os.path.join(out, records.VOCAB_FILE)) as f:
    text = f.read()
  assert not any(s in text for s in SECRETS)
  unk = [e for e in vocab.entries if e["token"].endswith("//[UNK]")]
  assert unk and all(e["sources"] == [] for e in unk)
  other_unk = next(e for e in unk if e["token"] == "OTHER//[UNK]")
  assert other_unk["folded_codes"] >= 1 and other_unk["count"] >= 1   # the planted row
  # Every stored source occurs at least min_code_count times on train.
  train_counts: dict[str, int] = {}
  for path in pq.ParquetDataset(os.path.join(str(tmp_path / "meds"), "data")).files:
    for c in pq.read_table(path, columns=["code"]).column("code").to_pylist():
      train_counts[c] = train_counts.get(c, 0) + 1
  sources = [s for e in vocab.entries for s in e["sources"]]
  assert sources and all(train_counts[s] >= 3 for s in sources)


class _EveryToken:
  """A 'sampler' that emits every vocabulary id in turn (as a model gone wrong might)."""

  def __init__(self, vocab: vocab_lib.Vocabulary, banned: np.ndarray):
    self.sc = decode.SamplingConfig(num_samples=1, max_new_tokens=8)
    ids = np.setdiff1d(np.arange(vocab.size), np.r_[banned, vocab.eos_id, vocab.pad_id,
                                                    vocab.ids_of_kind(TokenKind.DEATH)])
    self.ids = ids.astype(np.int32)

  def generate(self, histories, patient_index=None, seed=0):
    n = len(histories)
    tokens = np.tile(self.ids, (n, 1))
    return decode.Futures(tokens=tokens, clock=np.zeros(tokens.shape, np.float32),
                          num_tokens=np.full(n, tokens.shape[1], np.int32),
                          stop_reason=np.zeros(n, np.int8), num_samples=1)


def test_planted_code_cannot_reach_a_synthetic_cohort_and_fails_the_audit(tmp_path):
  out, vocab = _build_with_planted_code(tmp_path)
  k = audit_lib.min_code_count_of(vocab)
  assert k == 3
  banned = decode.banned_token_ids(vocab, k)
  unk_ids = [i for i, t in enumerate(vocab.tokens) if t.endswith("//[UNK]")]
  assert vocab.pad_id in banned and set(unk_ids) <= set(banned.tolist())
  rare = [i for i in range(vocab.size) if vocab.kinds[i] in decode.CODE_KINDS
          and vocab.counts[i] < k]
  assert set(rare) <= set(banned.tolist())
  # Even emitting every allowed token, and the banned ones too, writes no planted string.
  for ban in (banned, np.zeros(0, np.int64)):
    cohort = synthetic.generate_cohort(
        _EveryToken(vocab, ban), vocab, out, str(tmp_path / f"synth{ban.size}"), num_patients=3,
        seed=0, start_date="2020-01-01", split=conventions.TRAIN, first_subject_id=900_000)
    table = pq.read_table(cohort["summary"]["files"]["data"])
    codes = table.column("code").to_pylist()
    assert codes and not any(s in c for c in codes for s in SECRETS)
    with open(os.path.join(str(tmp_path / f"synth{ban.size}"), "metadata", "codes.parquet"),
              "rb") as f:
      assert not any(s.encode() in f.read() for s in SECRETS)
  # The audit fails a cohort holding an [UNK] (a code below the count), and passes its rule
  # for one holding only frequent codes.
  special = audit_lib.special_ids(vocab)
  train = audit_lib.load_references(out, conventions.TRAIN, special)
  frequent = [t[~np.isin(t, banned)] for t in train[:5]]
  kw = dict(ngram=8, reference_patients=10, seed=0, max_exact_share=1.0, max_ngram_excess=1.0,
            max_closer_to_train=1.0, min_train_count=k)
  ok = audit_lib.audit(frequent, train, train, vocab, **kw)
  assert ok["rare_codes"] == 0 and ok["passed"]
  leaky = [np.r_[frequent[0], vocab.id_of("OTHER//[UNK]")]] + frequent[1:]
  bad = audit_lib.audit(leaky, train, train, vocab, **kw)
  assert bad["rare_codes"] == 1 and bad["timelines_with_rare_codes"] == 1 and not bad["passed"]
  assert "occur fewer than 3 times in train or are [UNK]" in bad["failures"][0]
  assert not any(s in json.dumps(bad) for s in SECRETS)
