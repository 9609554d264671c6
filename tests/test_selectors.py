"""Keyframe selectors (k distinct valid indices in time order for every k <= N, a clear error beyond)
and the selection metrics."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvlm.keyframes import metrics, selectors

N = 12


def scores(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random(N)


@pytest.mark.parametrize('name', sorted(selectors.SELECTORS))
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_every_selector_returns_k_distinct_sorted_indices(name, seed):
  select = selectors.SELECTORS[name]
  s = scores(seed)
  s[3:5] = s[3]  # ties must not produce duplicates
  for k in range(1, N + 1):
    idx = select(s, k)
    assert idx.dtype == np.int64 and idx.shape == (k,), (name, k)
    assert np.all(np.diff(idx) > 0), (name, k, idx)  # sorted in time and distinct
    assert idx.min() >= 0 and idx.max() < N, (name, k, idx)
  assert select(s, N).tolist() == list(range(N))


@pytest.mark.parametrize('name', sorted(selectors.SELECTORS))
@pytest.mark.parametrize('k', [0, N + 1])
def test_k_outside_the_pool_fails_clearly(name, k):
  with pytest.raises(ValueError, match=f'k={k} frames from a pool of N={N}'):
    selectors.SELECTORS[name](scores(), k)


def test_top_and_bottom_k_pick_the_extremes():
  s = np.asarray([0.1, 0.9, 0.5, 0.9, 0.0, 0.3])
  assert selectors.top_k(s, 2).tolist() == [1, 3]
  assert selectors.top_k(s, 1).tolist() == [1]  # tie goes to the earlier frame
  assert selectors.bottom_k(s, 2).tolist() == [0, 4]


def test_uniform_spreads_and_random_is_seeded():
  assert selectors.uniform(np.zeros(8), 4).tolist() == [1, 3, 5, 7]
  assert selectors.uniform(np.zeros(8), 1).tolist() == [4]
  a, b = selectors.random(scores(), 5, seed=7), selectors.random(scores(), 5, seed=7)
  assert a.tolist() == b.tolist()
  assert any(selectors.random(scores(), 5, seed=s).tolist() != a.tolist() for s in range(8, 12))


def test_bolt_follows_the_score_density():
  s = np.zeros(32)
  s[20:24] = 1.0  # one relevant stretch
  idx = selectors.bolt(s, 4, alpha=1.0)
  assert set(idx.tolist()) == {20, 21, 22, 23}
  flat = selectors.bolt(np.ones(32), 4)  # no preference: evenly spread, like uniform
  assert flat.tolist() == selectors.uniform(np.ones(32), 4).tolist()
  # With two stretches of unequal height, the higher one gets more frames.
  s2 = np.zeros(32)
  s2[2:6], s2[24:28] = 0.5, 1.0
  idx = selectors.bolt(s2, 6, alpha=2.0)
  assert (idx >= 24).sum() > (idx < 8).sum() > 0


def test_aks_balances_relevance_and_coverage():
  peaked = np.zeros(32)
  peaked[[5, 6, 7]] = 1.0
  assert selectors.aks(peaked, 3).tolist() == [5, 6, 7]  # relevance wins when one spike dominates
  rng = np.random.default_rng(0)
  noisy = 0.5 + 0.01 * rng.random(32)  # no frame stands out: coverage
  idx = selectors.aks(noisy, 4)
  assert np.histogram(idx, bins=4, range=(0, 32))[0].tolist() == [1, 1, 1, 1]
  # Depth 0 is plain top-k.
  assert selectors.aks(noisy, 4, max_depth=0).tolist() == selectors.top_k(noisy, 4).tolist()


def test_recall_and_ndcg():
  assert metrics.recall_at_k([1, 2, 3], [2, 3, 9, 10]) == pytest.approx(2 / 3)
  assert metrics.recall_at_k([4], [4, 5, 6]) == 1.0  # normalised by min(k, |R|)
  assert metrics.recall_at_k([0, 1, 2, 3], [7]) == 0.0
  assert np.isnan(metrics.recall_at_k([0], []))
  rel = np.asarray([0.0, 3.0, -1.0, 1.0, 2.0])
  assert metrics.ndcg_at_k([1, 4], rel) == pytest.approx(1.0)
  assert metrics.ndcg_at_k([4, 1], rel) == pytest.approx(1.0)  # a set: order does not matter
  want = (2 + 1 / np.log2(3)) / (3 + 2 / np.log2(3))
  assert metrics.ndcg_at_k([3, 4], rel) == pytest.approx(want)
  assert metrics.ndcg_at_k([0, 2], rel) == 0.0
  assert np.isnan(metrics.ndcg_at_k([0], np.zeros(3)))


def test_spearman_matches_pearson_of_average_ranks():
  a = np.asarray([1.0, 2.0, 2.0, 5.0, 4.0])
  assert metrics.spearman(a, a * 10 + 3) == pytest.approx(1.0)
  assert metrics.spearman(a, -a) == pytest.approx(-1.0)
  ranks = np.asarray([0, 1.5, 1.5, 4, 3])
  other = np.asarray([3.0, 1.0, 4.0, 1.5, 9.0])
  want = np.corrcoef(ranks, np.argsort(np.argsort(other)))[0, 1]
  assert metrics.spearman(a, other) == pytest.approx(want)
  assert np.isnan(metrics.spearman(np.ones(4), np.arange(4)))


def test_sensitivity_and_frame_sensitive_subset():
  top, bottom, none = [1, 1, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]
  assert metrics.frame_selection_sensitivity(top, bottom).tolist() == [1, 0, -1, 1]
  assert metrics.frame_sensitive(top, bottom, none).tolist() == [True, False, False, False]
