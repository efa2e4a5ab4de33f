"""The MEDS -> records builder on small hand-made datasets (ours and other ETLs' spellings)."""

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.conventions import TokenKind
from lmm_jax.data import build
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.data.fields import FieldKind
from tests.data import meds_factory as mf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**overrides):
  return mf.build_config(**{"min_code_count": 3, **overrides})


def _splits(rows, held_out_every=5, tuning_every=7):
  out = {}
  for sid in sorted({r["subject_id"] for r in rows}):
    out[sid] = ("held_out" if sid % held_out_every == 0 else
                "tuning" if sid % tuning_every == 0 else "train")
  return out


def _read_all(data_dir, kind):
  out = {}
  for split in conventions.SPLITS:
    for rec in records.read_records(data_dir, kind, split):
      out[int(rec["subject_id"])] = (split, rec)
  return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  rows = mf.claims_world(40, seed=3)
  base = tmp_path_factory.mktemp("world")
  meds = mf.write_meds(str(base / "meds"), rows, num_files=3, splits=_splits(rows))
  out = str(base / "out")
  report = build.build_dataset(meds, out, _config())
  return rows, meds, out, report


def test_report_and_records(world):
  _, meds, out, report = world
  assert report["input_rows"] == report["used_rows"] + sum(report["dropped"].values())
  assert report["meds_dir"] == os.path.abspath(meds)
  assert report["index_date"] == "2021-01-01"
  assert report["splits_source"] == "metadata/subject_splits.parquet"
  assert sum(report["patients"].values()) == 40
  vocab = vocab_lib.Vocabulary.load(os.path.join(out, "vocab.json"))
  assert report["vocab_size"] == vocab.size
  n_in = report["num_input_shards"]
  for kind in (records.TIMELINE, records.TASK):
    for split in conventions.SPLITS:
      paths = records.shard_paths(out, kind, split)
      assert [os.path.basename(p) for p in paths] == [
          records.shard_name(split, i, n_in) for i in range(n_in)]
  timelines = _read_all(out, records.TIMELINE)
  tasks = _read_all(out, records.TASK)
  assert len(timelines) == 40 and len(tasks) == sum(report["task_examples"].values()) > 30
  for sid, (split, rec) in timelines.items():
    assert list(rec) == list(records.TIMELINE_FIELDS)
    t = rec["tokens"]
    assert t.dtype == np.int32 and rec["days"].dtype == np.int32 and rec["age"].dtype == np.float32
    assert t[0] == vocab.bos_id and t[-1] == vocab.eos_id
    assert np.all(np.diff(rec["days"]) >= 0)
    p = int(rec["prefix_len"])
    assert [vocab.tokens[i].split("//")[0] for i in t[1:p]] == ["GENDER", "LOB", "AGE"]
    assert report["tokens"][split] >= t.size
  for sid, (split, rec) in tasks.items():
    assert list(rec) == list(records.field_names(records.TASK))
    assert timelines[sid][0] == split
    # The history strictly before the index, then its anchor at the index (gap, age).
    anchor = rec["days"] == rec["index_day"]
    assert np.all(rec["days"] <= rec["index_day"]) and 1 <= anchor.sum() <= 2
    assert anchor[-int(anchor.sum()):].all()
    assert vocab.tokens[rec["tokens"][-1]] == f"AGE//{int(rec['age_at_index'])}"
    assert vocab.eos_id not in rec["tokens"]
    assert rec["cond_next"].shape == (conditions.NUM_CONDITIONS,)
    assert rec["cost_next_capped"] <= conventions.COST_CAP
    assert all("." not in c for c in rec["dx_prior"])
    # The task inputs are the timeline's tokens before the index date.
    tl = timelines[sid][1]
    n = rec["tokens"].size - int(anchor.sum())
    np.testing.assert_array_equal(rec["tokens"][:n], tl["tokens"][:n])
    assert tl["days"][n] >= rec["index_day"] or tl["tokens"][n] == vocab.eos_id


def _cases(rows):
  """The CCW-style case rule (lmm_jax.conditions.case_flags) over the diagnosis rows given."""
  ctype = {r.get("claim_id"): r["code"].split("//", 1)[1] for r in rows
           if r["code"].startswith("CLAIM//")}
  dx = [r for r in rows if r["code"].startswith("ICD10CM//")]
  flags = np.array([conditions.condition_flags([r["code"].split("//")[1]]) for r in dx]).reshape(
      len(dx), conditions.NUM_CONDITIONS)
  return conditions.case_flags(flags, [ctype.get(r.get("claim_id"), "") for r in dx],
                               np.array([r["time"].toordinal() for r in dx], np.int64))


def test_task_targets_match_rows(world):
  rows, _, out, report = world
  index = dt.datetime(2021, 1, 1)
  end = dt.datetime(2022, 1, 1)
  tasks = _read_all(out, records.TASK)
  for sid, (_, rec) in list(tasks.items())[:10]:
    mine = [r for r in rows if r["subject_id"] == sid and r["time"] is not None]
    cost = sum(r["numeric_value"] for r in mine if r["code"] == "COST//ALLOWED"
               and index <= r["time"] < end)
    prior = sum(r["numeric_value"] for r in mine if r["code"] == "COST//ALLOWED"
                and dt.datetime(2020, 1, 1) <= r["time"] < index)
    assert rec["cost_next"] == pytest.approx(cost, rel=1e-5)
    assert rec["cost_prior"] == pytest.approx(prior, rel=1e-5)
    np.testing.assert_array_equal(rec["cond_next"],
                                  _cases([r for r in mine if index <= r["time"] < end]))
    np.testing.assert_array_equal(rec["cond_prior"], _cases([r for r in mine if r["time"] < index]))
    assert rec["sex"] in (1, 2) and rec["lob"] in (1, 2)


def test_deterministic_and_independent_of_workers(world, tmp_path):
  _, meds, out, _ = world
  out2 = str(tmp_path / "again")
  build.build_dataset(meds, out2, _config(num_workers=2))
  with open(os.path.join(out, "vocab.json")) as f1, open(os.path.join(out2, "vocab.json")) as f2:
    assert f1.read() == f2.read()
  for kind in (records.TIMELINE, records.TASK):
    a, b = _read_all(out, kind), _read_all(out2, kind)
    assert a.keys() == b.keys()
    for sid in a:
      assert records.encode(a[sid][1]) == records.encode(b[sid][1])


def test_vocabulary_contents(world):
  _, _, out, _ = world
  vocab = vocab_lib.Vocabulary.load(os.path.join(out, "vocab.json"))
  assert vocab.pad_id == 0 and vocab.tokens[0] == "[PAD]"
  assert vocab.kinds.dtype == np.int8 and vocab.kinds.shape == (vocab.size,)
  e11 = vocab.id_of("ICD10CM//E11")
  assert vocab.kinds[e11] == TokenKind.DIAGNOSIS
  assert vocab.token_conditions[e11, conditions.CONDITION_NAMES.index("diabetes_t2")] == 1
  assert vocab.token_conditions[vocab.id_of("ICD10CM//E11.9")].sum() == 1
  assert vocab.token_conditions[vocab.id_of("CPT//99213")].sum() == 0
  assert vocab.age_years[vocab.id_of("AGE//67")] == 67
  assert vocab.age_years[e11] == -1
  costs = vocab.ids_of_kind(TokenKind.COST)
  used = costs[vocab.counts[costs] > 0]
  assert used.size > 10 and np.all(np.diff(vocab.cost_value[used]) > 0)
  # Log-spaced bins: $1 to $500k; every bin's value lies inside it (train mean or midpoint).
  edges = np.asarray(vocab.meta["cost_edges"])
  assert len(costs) == 40 and edges[0] == 1.0 and edges[-1] == 500_000.0
  lo_B, hi_B = np.r_[0.0, edges], np.r_[edges, np.inf]
  value_B = vocab.cost_value[costs]
  assert np.all((value_B >= lo_B * (1 - 1e-6)) & (value_B <= hi_B))
  gaps = vocab.ids_of_kind(TokenKind.TIME)
  assert np.all(vocab.time_gap_days[gaps][vocab.counts[gaps] > 0] >= 1)
  assert vocab.time_gap_days[vocab.id_of("TIME//30-91d")] == pytest.approx(60, abs=31)
  assert vocab.cost_value[e11] == 0 and vocab.time_gap_days[e11] == 0
  assert vocab.padded_size(128) % 128 == 0 and vocab.padded_size(128) >= vocab.size
  assert "Type 2 diabetes mellitus without complications" in vocab.describe(
      vocab.id_of("ICD10CM//E11.9"))
  assert "ICD10CM//E11.9" in vocab.entries[vocab.id_of("ICD10CM//E11.9")]["sources"]
  assert vocab.describe(vocab.id_of("POS//11")).endswith("Office")
  assert vocab.entries[vocab.id_of("CPT//99213")]["description"] == ""  # AMA copyright
  for i in range(vocab.size):
    assert vocab.id_of(vocab.tokens[i]) == i and vocab.describe(i)


def test_decoder_reads_back(world, tmp_path):
  _, _, out, _ = world
  vocab = vocab_lib.Vocabulary.load(os.path.join(out, "vocab.json"))
  rec = next(records.read_records(out, records.TIMELINE, "train"))
  lines = vocab.decode(rec["tokens"])
  assert lines[0].startswith("start of sequence | GENDER")
  assert lines[-1] == "end of sequence"
  claim_lines = [l for l in lines if "CLAIM " in l]
  assert len(claim_lines) == 24  # claims_per_year * years in the factory
  assert all(l.split(" | ")[-1].startswith("cost ") for l in claim_lines)
  assert any(l.startswith("+") for l in lines)
  # Saving and loading is lossless.
  path = str(tmp_path / "v.json")
  vocab.save(path)
  again = vocab_lib.Vocabulary.load(path)
  assert again.tokens == vocab.tokens and again.decode(rec["tokens"]) == lines
  np.testing.assert_array_equal(again.cost_value, vocab.cost_value)


def test_no_information_after_index_reaches_task_inputs(world, tmp_path):
  """Rewriting held-out patients' futures changes targets but not one input bit."""
  rows, _, out, _ = world
  splits = _splits(rows)
  index = dt.datetime(2021, 1, 1)
  rng = np.random.default_rng(0)
  changed = []
  for r in rows:
    if splits[r["subject_id"]] != "held_out" or r["time"] is None or r["time"] < index:
      changed.append(r)
      continue
    r = dict(r)
    if r["code"].startswith("ICD10CM//"):
      r["code"] = "ICD10CM//I50.9"
    if r["code"] == "COST//ALLOWED":
      r["numeric_value"] = float(r["numeric_value"] * 10)
    r["time"] = r["time"] + dt.timedelta(days=int(rng.integers(0, 3)))
    changed.append(r)
  for sid in sorted(s for s, sp in splits.items() if sp == "held_out"):
    t = dt.datetime(2021, 3, 4, 10)
    changed += [{"subject_id": sid, "time": t, "code": "CLAIM//INPATIENT", "claim_id": "x"},
                {"subject_id": sid, "time": t, "code": "ICD10CM//C34.90", "claim_id": "x"},
                {"subject_id": sid, "time": t, "code": "COST//ALLOWED", "numeric_value": 9e4,
                 "claim_id": "x"},
                {"subject_id": sid, "time": dt.datetime(2021, 11, 30), "code": "MEDS_DEATH"}]
  meds2 = mf.write_meds(str(tmp_path / "meds"), changed, num_files=3, splits=splits)
  out2 = str(tmp_path / "out")
  build.build_dataset(meds2, out2, _config())
  a, b = _read_all(out, records.TASK), _read_all(out2, records.TASK)
  held = [s for s in a if a[s][0] == "held_out"]
  assert held and set(held) == {s for s in b if b[s][0] == "held_out"}
  # Every field but the targets is an input (a new covariate is checked here automatically).
  inputs = [f.name for f in records.schema(records.TASK) if f.kind != FieldKind.TARGET]
  assert {"tokens", "cost_prior", "cond_prior", "dx_prior"} <= set(inputs)
  for sid in held:
    ra, rb = a[sid][1], b[sid][1]
    for f in inputs:
      np.testing.assert_array_equal(np.asarray(ra[f]), np.asarray(rb[f]), err_msg=f)
    at_index = rb["days"] == rb["index_day"]   # only the anchor, at the end
    assert np.all(rb["days"] <= rb["index_day"]) and at_index[-int(at_index.sum()):].all()
    assert rb["cost_next"] > ra["cost_next"]
    assert rb["cond_next"][conditions.CONDITION_NAMES.index("lung_cancer")] == 1
  ta, tb = _read_all(out, records.TIMELINE), _read_all(out2, records.TIMELINE)
  assert any(not np.array_equal(ta[s][1]["tokens"], tb[s][1]["tokens"]) for s in held)


def test_hashed_split_keeps_patients_whole(tmp_path):
  rows = mf.claims_world(60, seed=5)
  meds = mf.write_meds(str(tmp_path / "meds"), rows, num_files=4)
  out = str(tmp_path / "out")
  report = build.build_dataset(meds, out, _config(hash_split_fractions=(0.5, 0.25, 0.25)))
  assert report["splits_source"] == "hash of subject_id"
  seen = {}
  for kind in (records.TIMELINE, records.TASK):
    for split in conventions.SPLITS:
      for rec in records.read_records(out, kind, split):
        assert seen.setdefault(int(rec["subject_id"]), split) == split
  assert len(seen) == 60 and all(report["patients"][s] > 5 for s in conventions.SPLITS)
  ids = np.arange(100_000, dtype=np.int64)
  split = meds_io.hash_split(ids, (0.8, 0.1, 0.1))
  np.testing.assert_array_equal(split, meds_io.hash_split(ids, (0.8, 0.1, 0.1)))
  np.testing.assert_allclose(np.bincount(split) / ids.size, [0.8, 0.1, 0.1], atol=0.01)


def test_binary_summary_and_bad_input_exit(tmp_path):
  rows = mf.claims_world(5, seed=1)
  meds = mf.write_meds(str(tmp_path / "meds"), rows, num_files=2)
  env = dict(os.environ, PYTHONPATH=REPO)
  ok = subprocess.run([sys.executable, "-m", "data_prep.build_dataset", f"--meds_dir={meds}",
                       f"--output_dir={tmp_path / 'out'}", "--num_workers=1", "--no_progress",
                       "--min_code_count=1", "--config.drug_grouping=ndc9",
                       "--config.required_splits=('train',)"],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "input rows" in ok.stdout and "1000" not in ok.stdout  # no subject ids printed
  with open(tmp_path / "out" / "report.json") as f:
    assert json.load(f)["config"]["drug_grouping"] == "ndc9"
  # Files without a `code` column (issue 18: with two workers this once hung the build).
  paths = [os.path.join(meds, "data", f"shard_{i}.parquet") for i in range(2)]
  for path in paths:
    pq.write_table(pq.read_table(path).drop_columns(["code"]), path)
  for num_workers in (1, 2):
    bad = subprocess.run([sys.executable, "-m", "data_prep.build_dataset", f"--meds_dir={meds}",
                          f"--output_dir={tmp_path / 'out2'}", f"--num_workers={num_workers}",
                          "--no_progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "error: malformed MEDS input" in bad.stderr and "'code'" in bad.stderr
    assert any(p in bad.stderr for p in paths) and "Traceback" not in bad.stderr
