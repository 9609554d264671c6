"""Keyframe selectors over a candidate pool of N frames.

Every selector is `select(scores, k) -> indices`: scores float [N] (relevance of each candidate; a
selector that ignores them only reads N), indices int64 [k], distinct, sorted in time. k must be in
1..N; anything else raises ValueError naming k and N. Ties between equal scores go to the earlier frame.

  uniform    centres of k equal segments of the pool.
  random     k frames drawn without replacement (seeded).
  top_k      the k highest scores (SigLIP top-k on the question or question + options, oracle top-k).
  bottom_k   the k lowest scores (oracle bottom-k, for Frame Selection Sensitivity).
  bolt       BOLT-style inverse transform sampling: scores, min-max normalised and sharpened by a
             power alpha, define a density over the pool; the frames are read off its inverse CDF at k
             evenly spaced quantiles, so high-scoring stretches get many frames and flat stretches some.
  aks        AKS-style adaptive split: a segment whose best frames stand out from its mean keeps its
             k frames by score (relevance); otherwise it is halved and its budget split between the
             halves (coverage), recursively up to a depth.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Selector = Callable[..., np.ndarray]


def _check(scores, k: int) -> np.ndarray:
  scores = np.asarray(scores, np.float64).reshape(-1)
  n = scores.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f'cannot select k={k} frames from a pool of N={n} candidates (need 1 <= k <= N)')
  return scores


def _ranked(scores: np.ndarray) -> np.ndarray:
  """Indices by descending score, ties by ascending index."""
  return np.lexsort((np.arange(len(scores)), -scores))


def uniform(scores, k: int) -> np.ndarray:
  n = len(_check(scores, k))
  return np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)


def random(scores, k: int, seed: int = 0) -> np.ndarray:
  n = len(_check(scores, k))
  return np.sort(np.random.default_rng(seed).choice(n, k, replace=False)).astype(np.int64)


def top_k(scores, k: int) -> np.ndarray:
  scores = _check(scores, k)
  return np.sort(_ranked(scores)[:k]).astype(np.int64)


def bottom_k(scores, k: int) -> np.ndarray:
  scores = _check(scores, k)
  return np.sort(_ranked(-scores)[:k]).astype(np.int64)


def bolt(scores, k: int, alpha: float = 2.0) -> np.ndarray:
  """Inverse transform sampling over the pool (module docstring). A quantile landing on a frame
  already taken takes the nearest free frame (earlier one on a tie), so the k frames are distinct."""
  scores = _check(scores, k)
  n = len(scores)
  span = scores.max() - scores.min()
  weights = ((scores - scores.min()) / span) ** alpha if span > 0 else np.ones(n)
  # A floor keeps zero-score frames reachable, so the CDF is strictly increasing.
  weights = weights + 1e-6
  cdf = np.cumsum(weights) / weights.sum()
  taken = np.zeros(n, bool)
  for u in (np.arange(k) + 0.5) / k:
    # Frame j owns [cdf[j-1], cdf[j]); the nudge keeps a quantile on a boundary in the later frame
    # whatever the rounding of the cumulative sum.
    j = min(int(np.searchsorted(cdf, u + 1e-9, side='right')), n - 1)
    free = np.flatnonzero(~taken)
    taken[free[np.argmin(np.abs(free - j))]] = True
  return np.flatnonzero(taken).astype(np.int64)


def aks(scores, k: int, max_depth: int = 4, threshold: float = 0.6) -> np.ndarray:
  """Adaptive split (module docstring). A segment is 'peaked' when the mean of its top-m scores exceeds
  its mean by more than `threshold` times the pool's score range; then (or at max_depth, or when it
  has no more frames than budget) it takes its top-m frames. For scores that are uniform noise that gap
  is about 0.4 of the range, for a lone spike close to 1: the default 0.6 tells them apart. Otherwise
  each half gets half the budget, the odd frame going to the half with the higher mean score, and a
  half too short for its share passes the rest to the other."""
  scores = _check(scores, k)
  span = max(scores.max() - scores.min(), 1e-12)
  chosen: list[np.ndarray] = []

  def visit(lo: int, hi: int, m: int, depth: int) -> None:
    if m == 0:
      return
    seg = scores[lo:hi]
    best = _ranked(seg)[:m]
    peaked = seg[best].mean() - seg.mean() > threshold * span
    if peaked or depth == max_depth or hi - lo <= m:
      chosen.append(lo + best)
      return
    mid = (lo + hi) // 2
    left = m // 2 + (m % 2 if scores[lo:mid].mean() >= scores[mid:hi].mean() else 0)
    left = min(max(left, m - (hi - mid)), mid - lo)
    visit(lo, mid, left, depth + 1)
    visit(mid, hi, m - left, depth + 1)

  visit(0, len(scores), k, 0)
  return np.sort(np.concatenate(chosen)).astype(np.int64)


SELECTORS: dict[str, Selector] = {
  'uniform': uniform,
  'random': random,
  'top_k': top_k,
  'bottom_k': bottom_k,
  'bolt': bolt,
  'aks': aks,
}
