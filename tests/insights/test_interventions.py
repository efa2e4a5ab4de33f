"""Intervention effects: the history edits, the simulator's replay and truth, the intervals."""

import os

import numpy as np
import pytest

from lmm_jax import conditions
from lmm_jax.data import records
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.insights import interventions as iv
from lmm_jax.synth import intervene
from lmm_jax.synth import model as world


@pytest.fixture(scope="module")
def book(tiny_data_dir):
  return iv.Codebook(vocab_lib.Vocabulary.load(os.path.join(tiny_data_dir, "vocab.json")))


@pytest.fixture(scope="module")
def recs(tiny_data_dir):
  return [r for s in ("train", "tuning", "held_out")
          for r in records.read_records(tiny_data_dir, records.TASK, s)]


@pytest.fixture(scope="module")
def replay(tiny_meds_dir):
  return intervene.replay(tiny_meds_dir, 0)


def _first(recs, book, name):
  for r in recs:
    h = iv.parse(r, book)
    e = iv.EDITS[name](h, book, np.asarray(r["cond_prior"]))
    if e is not None:
      return r, h, e
  pytest.fail(f"no member of the tiny world is eligible for {name}")


def _added(h, e):
  old = list(h.units)
  out = []
  for u in e.history.units:
    if u in old:
      old.remove(u)
    else:
      out.append(u)
  return out, old   # units added, units of h left over (removed)


def test_parse_render_round_trip(recs, book):
  for r in recs:
    out = iv.render(iv.parse(r, book), book, r)
    for k in ("tokens", "days", "age"):
      np.testing.assert_array_equal(out[k], np.asarray(r[k]), err_msg=k)


def test_start_drug_appends_tokenized_fills(recs, book):
  r, h, e = _first(recs, book, "start_drug")
  added, removed = _added(h, e)
  assert not removed and len(added) == iv.START_MONTHS
  klass = book.maintenance_classes(e.condition)[0]
  assert np.asarray(r["cond_prior"])[e.condition]
  tok = book.tok
  for u in added:
    assert u.tokens == book.fill_unit_tokens(klass)
    # What the builder makes of a pharmacy claim: claim type, place of service, NDC, cost bin.
    assert u.tokens[:2] == tok.code_token_ids(iv.PHARMACY) + tok.code_token_ids("POS//01")
    assert u.tokens[2] in book.drug_ids[klass]
    assert book.cost_V[u.tokens[3]]
    assert h.index_day - iv.START_MONTHS * iv.FILL_DAYS <= u.day < h.index_day
  out = iv.render(e.history, book, r)
  assert len(out["tokens"]) > len(r["tokens"])
  # Read back, the rendered history holds exactly the edited claims, in day order.
  back = [(u.day, u.tokens) for u in iv.parse(out, book).units]
  assert back == [(u.day, u.tokens) for u in sorted(e.history.units, key=lambda u: u.day)]


def test_adherence_edit_raises_pdc(recs, book):
  r, h, e = _first(recs, book, "adherence")
  before, after = iv.member_pdc(h, book), iv.member_pdc(e.history, book)
  assert min(before.values()) < iv.TARGET_PDC <= min(after.values())
  added, removed = _added(h, e)
  assert added and not removed
  fills = {u.tokens for u in h.units}
  assert all(u.tokens in fills for u in added)   # copies of the member's own fills
  assert all(u.day < h.index_day for u in added)


def test_remove_admission_removes_exactly_the_stay(recs, book):
  r, h, e = _first(recs, book, "remove_admission")
  added, removed = _added(h, e)
  assert not added and removed
  day = max(u.day for u in h.units if u.tokens[0] == book.inpatient)
  assert {u.day for u in removed} == {day}
  assert any(u.tokens[0] == book.inpatient for u in removed)
  for u in removed:
    assert u.tokens[0] == book.inpatient or book.inpatient_pos in u.tokens
  assert not any(u.tokens[0] == book.inpatient and u.day == day for u in e.history.units)


def test_replay_equals_written_data(tiny_meds_dir, replay):
  run = replay.run
  ids = run.subject_id[run.ever]
  assert intervene.verify_history(tiny_meds_dir, replay, ids) > 0
  chunk, within = intervene.chunk_of(tiny_meds_dir, ids)
  assert (chunk == 0).all() and (run.subject_id[within] == ids).all()


def test_true_effect_common_random_numbers(tiny_meds_dir, replay):
  snap = replay.run.snap
  dm = conditions.CONDITION_NAMES.index("diabetes_t2")
  idx = np.flatnonzero(snap.alive & replay.run.ever & snap.present[:, dm])[:6]
  assert len(idx)
  adherence_before = snap.adherence.copy()
  null = intervene.true_effect(replay, idx, "none", rollouts=4, seed=1)
  np.testing.assert_array_equal(null.cost_int_RxN, null.cost_base_RxN)
  np.testing.assert_array_equal(null.cond_effect_NxC, 0.0)
  eff = intervene.true_effect(replay, idx, "start_drug", [dm] * len(idx), rollouts=4, seed=1)
  np.testing.assert_array_equal(eff.cost_base_RxN, null.cost_base_RxN)   # same streams
  assert np.any(eff.cost_int_RxN != eff.cost_base_RxN)   # the target year changes
  # Nothing before the index changes: the snapshot is untouched and the history still matches.
  np.testing.assert_array_equal(snap.adherence, adherence_before)
  assert intervene.verify_history(tiny_meds_dir, replay, replay.run.subject_id[idx]) > 0
  assert (eff.cost_base_RxN >= 0).all()
  with pytest.raises(ValueError, match="no maintenance drug"):
    intervene.true_effect(replay, idx[:1], "start_drug", [0], rollouts=1, seed=1)
  assert world.GAP_CONDITIONS[0] == "diabetes_t2"


def test_bootstrap_intervals():
  m, lo, hi = iv.bootstrap_mean(np.full(20, 3.0))
  assert m == lo == hi == 3.0
  x = np.random.default_rng(0).normal(5.0, 2.0, 400)
  m, lo, hi = iv.bootstrap_mean(x, num=2000, seed=1)
  assert lo < m < hi
  assert abs((hi - lo) - 2 * 1.96 * x.std() / np.sqrt(len(x))) < 0.05
  assert np.isnan(iv.bootstrap_mean(np.array([np.nan]))[0])
  lo, hi = iv.bootstrap_difference(np.array([1.0, 2.0, np.nan, 3.0]), np.zeros(4))
  assert 1.0 <= lo <= hi <= 3.0
  # Standardized contrast: +10 within each stratum whatever the strata's mix.
  strata = np.array([0, 0, 0, 1, 1, 1])
  treated = np.array([1, 0, 0, 1, 0, 0], bool)
  y = np.array([110.0, 100.0, 100.0, 30.0, 20.0, 20.0])
  assert iv.standardized_contrast(y, treated, ~treated, strata) == pytest.approx(10.0)


@pytest.mark.time_limit(120)
def test_unedited_history_has_zero_model_effect(pretrained, tiny_data_dir, recs, book):
  from lmm_jax import runs   # pylint: disable=g-import-not-at-top
  from lmm_jax.sampling import decode   # pylint: disable=g-import-not-at-top
  run = runs.load_run(pretrained, data_dir=tiny_data_dir)
  sizes = iv.Sizes(futures=2, seed=3)
  sc = decode.SamplingConfig(num_samples=sizes.futures, max_new_tokens=16)
  sampler = decode.Sampler(run.model, book.vocab.time_gap_days, book.vocab.eos_id, sc,
                           context_len=64)
  base = recs[:3]
  same = [iv.render(iv.parse(r, book), book, r) for r in base]
  c0, k0, _ = iv.sample_outcomes(sampler, base, book.vocab, [0, 1, 2], sizes, 4)
  c1, k1, _ = iv.sample_outcomes(sampler, same[::-1], book.vocab, [2, 1, 0], sizes, 4)
  np.testing.assert_array_equal(c0, c1[::-1])   # common random numbers: the same futures
  np.testing.assert_array_equal(k0, k1[::-1])
