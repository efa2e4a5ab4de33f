"""Bootstrap intervals, ranking by lower bound, BH q-values and the expected-false bound."""

import numpy as np

from lmm_jax.insights import uncertainty as unc


def test_paired_ratio_interval_covers_the_true_ratio():
  """95% intervals of a ratio of paired means cover the known ratio about 95% of the time."""
  rng = np.random.default_rng(0)
  sigma, n, trials = 0.3, 150, 300
  true_ratio = 1.3 * np.exp(sigma ** 2 / 2)   # E[p0 e^Z] / E[p0], Z ~ N(log 1.3, sigma) indep.
  w = np.concatenate([np.ones((1, n)), unc.bootstrap_weights(n, 200, seed=1)])
  covered, widths = 0, []
  for _ in range(trials):
    p0 = rng.uniform(0.05, 0.3, size=(n, 1))
    p1 = p0 * np.exp(rng.normal(np.log(1.3), sigma, size=(n, 1)))
    ratio, delta, den = unc.paired_ratio(p1, p0, np.ones((n, 1), bool), w)
    iv = unc.ratio_interval(ratio[0], ratio[1:])
    covered += bool(iv.lower[0] <= true_ratio <= iv.upper[0])
    widths.append(iv.upper[0] - iv.lower[0])
    assert den[0, 0] == n and np.isclose(delta[0, 0], (p1 - p0).mean())
  assert 0.90 <= covered / trials <= 0.99, covered / trials
  assert 0.05 < np.median(widths) < 0.2


def test_masked_members_do_not_count_and_empty_cells_are_nan():
  p0 = np.array([[0.1, 0.2], [0.1, 0.2], [0.5, 0.2]])
  p1 = np.array([[0.2, 0.2], [0.2, 0.2], [9.0, 0.2]])
  mask = np.array([[1, 0], [1, 0], [0, 0]], bool)
  ratio, _, den = unc.paired_ratio(p1, p0, mask, np.ones((1, 3)))
  np.testing.assert_allclose(ratio[0, 0], 2.0)
  assert np.isnan(ratio[0, 1]) and den[0, 1] == 0
  iv = unc.ratio_interval(ratio[0], np.repeat(ratio, 5, axis=0))
  assert np.isnan(iv.lower[1]) and np.isnan(iv.p_value[1])
  assert iv.lower[0] == iv.upper[0] == 2.0 and iv.p_value[0] == 0.0


def test_rank_by_lower_bound_not_the_point_estimate():
  est = np.array([3.0, 1.6, np.nan, 2.0])
  lower = np.array([0.9, 1.4, np.nan, 1.5])   # the largest estimate is the least certain
  order = unc.rank_by_lower_bound(lower)
  assert list(order) == [3, 1, 0]
  assert np.nanargmax(est) == 0


def test_benjamini_hochberg_by_hand():
  q = unc.benjamini_hochberg(np.array([[0.01, 0.04], [0.03, np.nan], [0.5, 0.5]]))
  # Sorted 0.01 0.03 0.04 0.5 0.5 (m = 5) x m / rank: 0.05 0.075 0.0667 0.625 0.5; running min
  # from the right: 0.05 0.0667 0.0667 0.5 0.5.
  np.testing.assert_allclose(q[[0, 0, 1, 2, 2], [0, 1, 0, 0, 1]],
                             [0.05, 0.2 / 3, 0.2 / 3, 0.5, 0.5])
  assert np.isnan(q[1, 1])


def test_expected_false_bounds_the_null_count_in_the_top_k():
  """40 real effects among 400 tests: the bound on nulls in the top 40 is at least the actual
  count on average (and not absurdly loose)."""
  rng = np.random.default_rng(2)
  actual, bound = [], []
  for _ in range(200):
    p = rng.uniform(size=400)
    p[:40] = rng.uniform(0, 1e-3, size=40) * rng.uniform(size=40) ** 3 * 10
    top = np.argsort(p, kind="stable")[:40]
    actual.append(int((top >= 40).sum()))
    bound.append(unc.expected_false(p, top))
  assert np.mean(bound) >= np.mean(actual)
  assert np.mean(bound) <= 40
  assert unc.expected_false(p, np.array([], np.int64)) == 0.0
