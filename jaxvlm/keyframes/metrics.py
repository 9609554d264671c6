"""How well a keyframe selection matches a reference, and what the Video-LLM makes of it.

Selections are sets of candidate indices (a selector returns them in time order, not ranked).
  recall@k     |S & R| / min(k, |R|) for a reference set R (the oracle's top-k, or the ground-truth
               evidence frames): 1 when S holds as much of R as k frames can.
  nDCG@k       graded by the oracle's relevance (negative drops count 0): the DCG of S in its best
               order over the DCG of the k most relevant frames.
  Spearman     rank correlation of two per-frame score vectors (average ranks for ties).
Per sample (Ok & Lee): Frame Selection Sensitivity = correct with the oracle's top-k minus correct
with its bottom-k; Language Independence = correct with no frames. A sample is frame-sensitive when
it is answered with the top-k frames, missed with the bottom-k and missed without frames.
"""

from __future__ import annotations

import numpy as np


def recall_at_k(selected, relevant) -> float:
  """selected [k] and relevant [R] candidate indices -> recall in [0, 1] (NaN when R is empty)."""
  selected, relevant = np.unique(np.asarray(selected)), np.unique(np.asarray(relevant))
  if relevant.size == 0:
    return float('nan')
  return float(np.isin(selected, relevant).sum() / min(len(selected), len(relevant)))


def _dcg(gains: np.ndarray) -> float:
  return float((gains / np.log2(np.arange(len(gains)) + 2)).sum())


def ndcg_at_k(selected, relevance) -> float:
  """selected [k] candidate indices, relevance [N] -> nDCG in [0, 1] (NaN when no frame has gain)."""
  gains = np.maximum(np.asarray(relevance, np.float64), 0.0)
  k = len(np.unique(np.asarray(selected)))
  ideal = _dcg(np.sort(gains)[::-1][:k])
  if ideal <= 0:
    return float('nan')
  return _dcg(np.sort(gains[np.unique(np.asarray(selected))])[::-1]) / ideal


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):  # ties share their mean rank
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def spearman(a, b) -> float:
  """Spearman rank correlation of a [N] and b [N]; NaN when either is constant."""
  ra, rb = _average_ranks(np.asarray(a, np.float64)), _average_ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
  return float((ra * rb).sum() / denom) if denom > 0 else float('nan')


def frame_selection_sensitivity(correct_top, correct_bottom) -> np.ndarray:
  """Per sample: correct with the oracle's top-k minus with its bottom-k, in {-1, 0, 1}."""
  return np.asarray(correct_top, np.int64) - np.asarray(correct_bottom, np.int64)


def frame_sensitive(correct_top, correct_bottom, correct_no_frames) -> np.ndarray:
  """bool per sample: answered with the top-k, missed with the bottom-k and missed without frames."""
  return np.asarray(correct_top, bool) & ~np.asarray(correct_bottom, bool) & ~np.asarray(correct_no_frames, bool)
