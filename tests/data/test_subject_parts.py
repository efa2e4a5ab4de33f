"""The builder's per-subject parts, each alone (cleaning, timeline tokenization, labels), the
record schema, and a test-only label that reaches task records and batches with no other edit."""

import collections
import dataclasses
import datetime as dt
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.configs import build_dataset as build_config
from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.data import build
from lmm_jax.data import clean as clean_lib
from lmm_jax.data import events
from lmm_jax.data import labels
from lmm_jax.data import meds_io
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.data import timeline
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data.code_systems import Role
from lmm_jax.data.fields import Field, FieldKind
from lmm_jax.insights import loading
from tests.data import meds_factory as mf

CONFIG = build_config.get_config()
ANALYZER = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(CONFIG))
NULL = meds_io.NULL_TIME
INDEX = 18305   # 2020-02-12

# One subject, sorted by (time, claim, role) as cleaning leaves it: (day, code, value, claim).
SUBJECT = [
    (None, "GENDER//F", None, -1),
    (0, "MEDS_BIRTH", None, -1),
    (17500, "ENROLLMENT//START//COMMERCIAL", None, -1),
    (18300, "CLAIM//PROFESSIONAL", None, 0),
    (18300, "ICD10CM//E11.9", None, 0),
    (18300, "COST//ALLOWED", 120.0, 0),
    (18310, "CLAIM//PROFESSIONAL", None, 1),
    (18310, "CPT//99213", None, 1),
    (18310, "COST//ALLOWED", 50.0, 1),
    (19000, "ENROLLMENT//END//COMMERCIAL", None, -1),
]


def _chunk(rows, subject_id=7) -> events.CleanRows:
  """A cleaned chunk of one subject, by hand."""
  codes = list(dict.fromkeys(r[1] for r in rows))
  infos = [ANALYZER.analyze(c) for c in codes]
  cidx = np.array([codes.index(r[1]) for r in rows], np.int32)
  day = np.array([NULL if r[0] is None else r[0] for r in rows], np.int64)
  n = len(rows)
  return events.CleanRows(
      "by hand", n, collections.Counter(), np.array([subject_id]), np.full(n, subject_id),
      np.zeros(n, np.int8), np.where(day == NULL, NULL, day * meds_io.US_PER_DAY), day,
      np.array([infos[i].role for i in cidx], np.int8), cidx,
      np.array([np.nan if r[2] is None else r[2] for r in rows], np.float32),
      np.array([r[3] for r in rows], np.int64), events.CodeTable(codes, infos), 0)


def _subject(rows=SUBJECT) -> events.SubjectEvents:
  (ev,) = _chunk(rows).subjects(open_end=20000)
  return ev


def _tokenizer() -> tok_lib.Tokenizer:
  counts = {"ICD10CM//E11.9": 10, "CPT//99213": 10, "CLAIM//PROFESSIONAL": 20}
  return tok_lib.Tokenizer(tok_lib.build_vocabulary(tok_lib.tokenizer_config(CONFIG), counts,
                                                    [100.0], ["COMMERCIAL"]))


# ---------------------------------------------------------------------------------------------
# Cleaning.


def test_cleaning_counts_drops_and_sorts_a_subjects_rows(tmp_path):
  t = lambda d, h=9: dt.datetime(2020, 1, 1) + dt.timedelta(days=d, hours=h)
  rows = [  # subject 1 out of time order; subject 2 has no event; subject 3 died
      (1, t(30), "CPT//99213", None, "b"),
      (1, t(30), "CLAIM//PROFESSIONAL", None, "b"),
      (1, None, "GENDER//M", None, None),
      (1, t(-9000), "MEDS_BIRTH", None, None),
      (1, t(5), "CLAIM//PROFESSIONAL", None, "a"),
      (1, t(5), "COST//ALLOWED", 10.0, "a"),
      (1, t(5), "COST//ALLOWED", 10.0, "a"),        # duplicate_row
      (1, t(5), "COST//ALLOWED", -1.0, "a"),        # negative_cost
      (1, None, "ICD10CM//I10", None, None),        # null_time
      (2, None, "GENDER//F", None, None),           # subject_without_events (both rows)
      (2, t(-5000), "MEDS_BIRTH", None, None),
      (3, t(-8000), "MEDS_BIRTH", None, None),
      (3, t(1), "CPT//99214", None, "c"),
      (3, t(2), "MEDS_DEATH", None, None),
      (3, t(9), "CPT//99214", None, "d"),           # event_after_death
  ]
  path = str(tmp_path / "f.parquet")
  pq.write_table(pa.table({
      "subject_id": pa.array([r[0] for r in rows], pa.int64()),
      "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
      "code": pa.array([r[2] for r in rows]),
      "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
      "claim_id": pa.array([r[4] for r in rows])}), path)
  c = clean_lib.clean(meds_io.read_shard(path), ANALYZER, None, (1.0, 0.0, 0.0))
  assert c.input_rows == len(rows) and c.hashed_subjects == 3
  assert {k: v for k, v in c.dropped.items() if v} == {
      "duplicate_row": 1, "negative_cost": 1, "null_time": 1, "subject_without_events": 2,
      "event_after_death": 1}
  assert set(c.dropped) == set(clean_lib.DROP_REASONS)
  assert c.input_rows == c.subject.size + sum(c.dropped.values())
  codes = [c.codes.codes[i] for i in c.code_index]
  assert c.subject.tolist() == [1] * 6 + [3] * 3
  assert codes[:6] == ["GENDER//M", "MEDS_BIRTH", "CLAIM//PROFESSIONAL", "COST//ALLOWED",
                       "CLAIM//PROFESSIONAL", "CPT//99213"]   # by time, then role in a claim
  ev1, ev3 = c.subjects(open_end=20000)
  assert (ev1.subject_id, ev1.sex, ev1.death, ev1.spans) == (
      1, "M", None, [(ev1.start_day, 20000, "")])
  assert ev3.death == ev3.day[-1] and ev3.spans[0][1] == ev3.death  # coverage ends at death


def test_subject_events_and_coverage():
  ev = _subject()
  assert (ev.sex, ev.birth, ev.death, ev.start_day) == ("F", 0, None, 17500)
  assert ev.spans == [(17500, 19000, "COMMERCIAL")]
  assert ev.age_at(365.25 * 40) == pytest.approx(40)
  # A START pairs with the earliest unused END of its line of business on or after it; spans
  # are not merged, and coverage tolerates one-day gaps between them.
  spans = events.enrollment_spans([(10, "A"), (0, "A"), (21, "B")], [(20, "A"), (5, "A")], 99)
  assert spans == [(0, 5, "A"), (10, 20, "A"), (21, 99, "B")]
  assert events.covered(spans, 0, 99) is False          # days 6-9 are not covered
  assert events.covered(spans, 10, 99) is True          # 20 -> 21 is a one-day step
  assert events.lob_at(spans, 30) == "B" and events.lob_at(spans, 7) == "A"


# ---------------------------------------------------------------------------------------------
# Timeline tokenization.


def test_timeline_tokens_days_ages_and_stats():
  tok = _tokenizer()
  ev = _subject()
  stats = timeline.Stats.zeros(tok)
  out = timeline.tokenize(ev, tok, timeline.code_token_ids(tok, ev.codes), stats)
  names = [tok.vocab.tokens[i] for i in out["tokens"]]
  assert names == [
      "[BOS]", "GENDER//F", "LOB//COMMERCIAL", "AGE//47",             # prefix at day 17500
      "AGE//50", "CLAIM//PROFESSIONAL", "ICD10CM//E11", "ICD10CM//E11.9", "COST//BIN01",
      "TIME//7-30d", "CLAIM//PROFESSIONAL", "CPT//99213", "COST//BIN00", "[EOS]"]
  assert int(out["prefix_len"]) == 4
  assert out["days"].tolist() == [17500] * 4 + [18300] * 5 + [18310] * 5
  np.testing.assert_allclose(out["age"][4], 18300 / 365.25, rtol=1e-6)
  assert out["tokens"].dtype == np.int32 and out["age"].dtype == np.float32
  assert stats.cost_sums.tolist() == [50.0, 120.0] and stats.cost_counts.tolist() == [1, 1]
  assert stats.gap_sums[tok.gap_index(10)] == 10 and stats.gap_counts.sum() == 1
  assert stats.token_counts.sum() == len(names)
  # The task inputs: strictly before the index day, prefix kept, no EOS, then the anchor at the
  # index: the gap since the last event and the age at the index.
  hist = timeline.history_at(out, INDEX, tok)
  gap = INDEX - 18300
  assert [tok.vocab.tokens[i] for i in hist["tokens"]] == names[:9] + [
      tok.vocab.tokens[tok.gap_token(gap)], f"AGE//{int(INDEX // 365.25)}"]
  assert set(hist) == set(records.SEQUENCE_FIELDS)
  assert hist["days"][-2:].tolist() == [INDEX, INDEX]
  np.testing.assert_allclose(hist["age"][-1], INDEX / 365.25, rtol=1e-6)
  assert hist["tokens"].dtype == np.int32 and hist["days"].dtype == out["days"].dtype
  # A prediction time before every event: the prefix, then its anchor.
  late = timeline.history_at(out, 17600, tok)
  assert late["tokens"].tolist() == out["tokens"][:4].tolist() + [tok.gap_token(100),
                                                                    tok.age_token(48)]
  # On the prefix's own day there is no gap to carry: the age alone anchors.
  same = timeline.history_at(out, 17500, tok)
  assert same["tokens"].tolist() == out["tokens"][:4].tolist() + [tok.age_token(47)]
  # Without a birth date (ages -1) only the gap anchors; a timeline without EOS is accepted.
  no_age = dict(out, age=np.full_like(out["age"], -1.0))
  no_age = {k: (v[:-1] if k in records.SEQUENCE_FIELDS else v) for k, v in no_age.items()}
  h = timeline.history_at(no_age, INDEX, tok)
  assert h["tokens"].tolist() == out["tokens"][:9].tolist() + [tok.gap_token(gap)]
  assert h["age"][-1] == -1.0


# ---------------------------------------------------------------------------------------------
# Labels.


def test_labels_of_one_subject():
  ev, w = _subject(), labels.Window(INDEX)
  assert labels.exclusion(ev, w, CONFIG) is None
  values = labels.compute(ev, w)
  assert list(values) == [f.name for f in labels.fields()]
  assert values["cost_next"] == 50.0 and values["cost_prior"] == 120.0
  assert values["cost_next_capped"] == 50.0
  # One professional claim with E11.9 is no case (the CCW-style rule asks for two on different
  # days, tests/data/test_case_rule.py); the code is still a prior diagnosis.
  assert values["cond_prior"].sum() == 0
  assert values["cond_next"].sum() == 0 and values["dx_prior"] == ["E119"]
  assert (values["sex"], values["lob"]) == (1, 1)
  assert values["age_at_index"] == pytest.approx(INDEX / 365.25)
  # Costs are summed per window and capped; a diagnosis in the target year is a target.
  rows = SUBJECT[:-1] + [(18400, "CLAIM//INPATIENT", None, 2), (18400, "ICD10CM//I50.9", None, 2),
                         (18400, "COST//ALLOWED", 3e5, 2), SUBJECT[-1]]
  values = labels.compute(_subject(rows), w)
  assert values["cost_next"] == 50.0 + 3e5
  assert values["cost_next_capped"] == conventions.COST_CAP
  assert values["cond_next"][conditions.CONDITION_NAMES.index("heart_failure")] == 1


@pytest.mark.parametrize("change,config,reason", [
    (dict(birth=None), {}, "no_birth_date"),
    (dict(death=18000), {}, "died_before_index"),
    (dict(spans=[(18000, 19000, "COMMERCIAL")]), {}, "too_little_history"),
    (dict(start_day=INDEX), {}, "no_history_before_index"),
    (dict(spans=[(17500, 18500, "COMMERCIAL")]), {}, "not_enrolled_through_target_year"),
    (dict(spans=[(17500, 18500, "COMMERCIAL")]), {"require_full_target_year": False}, None),
    (dict(death=18500, spans=[(17500, 18500, "COMMERCIAL")]), {}, None),
    (dict(death=18500, spans=[(17500, 18400, "COMMERCIAL")]), {},
     "not_enrolled_through_target_year"),
    (dict(death=18500), {"keep_decedents": False}, "died_in_target_year"),
])
def test_task_exclusions(change, config, reason):
  ev = dataclasses.replace(_subject(), **change)
  cfg = {**CONFIG.to_dict(), **config}
  assert labels.exclusion(ev, labels.Window(INDEX), cfg) == reason
  assert reason is None or reason in labels.TASK_EXCLUSIONS


# ---------------------------------------------------------------------------------------------
# The schema, and a new target that needs no edit outside the labels module.


def test_schema_order_and_casting():
  assert records.field_names(records.TASK)[:6] == records.TIMELINE_FIELDS + ("index_day",)
  assert records.SEQUENCE_FIELDS == ("tokens", "days", "age")
  task = records.schema(records.TASK)
  by_name = {f.name: f for f in task}
  assert by_name["cond_next"].shape == (conditions.NUM_CONDITIONS,)
  assert by_name["cost_next"].kind == FieldKind.TARGET
  assert by_name["cond_prior"].kind == FieldKind.COVARIATE
  assert by_name["index_day"].kind == FieldKind.META
  rec = records.make_record(records.TIMELINE, {"subject_id": 3, "tokens": [1, 2], "days": [5, 6],
                                               "age": [1.0, 2.0], "prefix_len": 1})
  assert list(rec) == list(records.TIMELINE_FIELDS)
  assert rec["subject_id"].dtype == np.int64 and rec["days"].dtype == np.int32
  with pytest.raises(ValueError, match="missing.*prefix_len"):
    records.make_record(records.TIMELINE, {"subject_id": 3, "tokens": [1], "days": [5],
                                           "age": [1.0]})
  with pytest.raises(ValueError, match="'cond_next' has shape"):
    by_name["cond_next"].encode(np.zeros(3))
  with pytest.raises(ValueError, match="'sex' is a scalar"):
    by_name["sex"].encode([1, 2])


def _claims_next(ev: events.SubjectEvents, w: labels.Window) -> dict:
  """Claims in the target year (test-only target)."""
  rows = (ev.role == Role.CLAIM) & w.target_year(ev.day)
  return {"claims_next": len(set(zip(ev.time_us[rows].tolist(), ev.claim[rows].tolist())))}


CLAIMS_NEXT = labels.Label("claims_next", (Field(
    "claims_next", FieldKind.TARGET, "int16", doc="claims in the target year",
    batch_dtype="int32", batch_pad=-1),), _claims_next)


def test_a_new_label_reaches_task_records_and_batches(tmp_path):
  rows = mf.claims_world(14, seed=2)
  meds = mf.write_meds(str(tmp_path / "meds"), rows, num_files=2)
  out = str(tmp_path / "out")
  index, end = dt.datetime(2021, 1, 1), dt.datetime(2022, 1, 1)
  expected = collections.Counter(r["subject_id"] for r in rows
                                 if r["code"].startswith("CLAIM//") and index <= r["time"] < end)
  with labels.registered(CLAIMS_NEXT):
    build.build_dataset(meds, out, mf.build_config(min_code_count=1,
                                                   hash_split_fractions=(1.0, 0.0, 0.0)))
    recs = {int(r["subject_id"]): r for r in records.read_records(out, records.TASK, "train")}
    assert len(recs) == 14
    for sid, rec in recs.items():
      assert list(rec)[-1] == "claims_next" and rec["claims_next"] == expected[sid] > 0
    seen = 0
    for batch in pipeline.iterate_eval_batches(out, records.TASK, "train", seq_len=64,
                                               batch_size=4, shard_index=0, shard_count=1):
      assert batch["claims_next"].dtype == np.int32
      for r in range(4):
        sid = int(batch["subject_id"][r])
        assert batch["claims_next"][r] == (expected[sid] if batch["valid"][r] else -1)
        seen += int(batch["valid"][r])
    assert seen == 14
    assert loading.record_to_row(recs[1000], 64)["claims_next"] == expected[1000]
  assert "claims_next" not in records.field_names(records.TASK)
  # Timelines do not change with a task label.
  out2 = str(tmp_path / "out2")
  build.build_dataset(meds, out2, mf.build_config(min_code_count=1,
                                                  hash_split_fractions=(1.0, 0.0, 0.0)))
  for name in sorted(os.listdir(os.path.join(out, records.TIMELINE))):
    with open(os.path.join(out, records.TIMELINE, name), "rb") as a, \
        open(os.path.join(out2, records.TIMELINE, name), "rb") as b:
      assert a.read() == b.read()


def test_label_registry_rejects_clashes():
  with pytest.raises(ValueError, match="taken"):
    labels.add(labels.Label("again", (Field("cost_next", FieldKind.TARGET, "float32"),),
                            _claims_next))
  with pytest.raises(ValueError, match="COVARIATE or TARGET"):
    labels.add(labels.Label("meta", (Field("x", FieldKind.META, "int32"),), _claims_next))
  bad = labels.Label("bad", (Field("y", FieldKind.TARGET, "int32"),), lambda ev, w: {"z": 1})
  with labels.registered(bad):
    with pytest.raises(ValueError, match="returned"):
      labels.compute(_subject(), labels.Window(INDEX))
  assert "y" not in records.field_names(records.TASK)


def test_log_cost_edges_span_one_dollar_to_500k():
  edges = tok_lib.cost_edges("log", 40, np.zeros(0))
  assert len(edges) == 39 and edges[0] == 1.0 and edges[-1] == 500_000.0
  ratios = np.diff(np.log(edges))
  np.testing.assert_allclose(ratios, np.log(5e5) / 38, atol=0.01)  # equal factors (to the cent)
  assert tok_lib.cost_edges("quantile", 4, np.arange(1.0, 101.0)) == [25.75, 50.5, 75.25]
  with pytest.raises(ValueError, match="cost_bin_spacing='linear'"):
    tok_lib.cost_edges("linear", 40, np.zeros(0))
  with pytest.raises(ValueError, match="num_cost_bins >= 3"):
    tok_lib.cost_edges("log", 2, np.zeros(0))
