"""Uncertainty for accuracies: bootstrap confidence intervals and the exact McNemar test.

Letters: N conditions (knockout specs, selectors), B samples, R bootstrap resamples.

A correctness vector is bool / 0-1 [B] (or [N, B] for N conditions scored on the same samples). The
bootstrap resamples samples with replacement; with `strata` (a task label per sample) it resamples
inside each stratum, so every task keeps its size, as a benchmark's fixed task sizes do. A paired change
(condition minus base, e.g. a knockout against clean) resamples the same samples for both, which is
what makes its interval narrower than the difference of two unpaired ones. Intervals are percentile
intervals of the resampled statistic.

`macro=True` makes the statistic the mean of per-stratum accuracies (MVBench's official number: the
mean over its 20 tasks) instead of the pooled accuracy.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate with its confidence interval: floats, or arrays [N] for N conditions."""

  estimate: float | np.ndarray
  low: float | np.ndarray
  high: float | np.ndarray


def _as_matrix(correct, field: str) -> tuple[np.ndarray, bool]:
  """-> float64 [N, B] and whether the input was one vector [B]."""
  x = np.asarray(correct)
  if x.ndim not in (1, 2) or x.shape[-1] == 0:
    raise ValueError(f'{field} must be [B] or [N, B] with B >= 1, got shape {x.shape}')
  if x.dtype != bool and not np.isin(x, (0, 1)).all():
    raise ValueError(f'{field} must hold 0/1 or bools (correct or not)')
  return np.atleast_2d(x.astype(np.float64)), x.ndim == 1


def _strata_members(strata, num_samples: int) -> list[np.ndarray]:
  if strata is None:
    return [np.arange(num_samples)]
  labels = np.asarray(strata)
  if labels.shape != (num_samples,):
    raise ValueError(f'strata must be [B] = [{num_samples}], got shape {labels.shape}')
  _, inverse = np.unique(labels, return_inverse=True)
  return [np.flatnonzero(inverse == s) for s in range(inverse.max() + 1)]


def resample_counts(
  members: list[np.ndarray], num_samples: int, num_resamples: int, rng: np.random.Generator
) -> np.ndarray:
  """How often each sample is drawn in each resample: int [R, B]; stratum s (indices members[s]) is
  resampled to its own size, so each row sums to len(members[s]) over s's columns."""
  counts = np.zeros((num_resamples, num_samples), np.int64)
  for idx in members:
    n = len(idx)
    draws = rng.integers(0, n, size=(num_resamples, n)) + n * np.arange(num_resamples)[:, None]
    counts[:, idx] = np.bincount(draws.ravel(), minlength=num_resamples * n).reshape(num_resamples, n)
  return counts


def _statistic(x: np.ndarray, weights: np.ndarray, members: list[np.ndarray], macro: bool) -> np.ndarray:
  """Accuracy of x [N, B] under sample weights [R, B] (all ones = the data itself) -> [R, N]."""
  if not macro:
    return weights @ x.T / weights.sum(axis=1, keepdims=True)
  return np.mean(
    [weights[:, idx] @ x[:, idx].T / weights[:, idx].sum(axis=1, keepdims=True) for idx in members], axis=0
  )


def _interval(
  x: np.ndarray, single: bool, strata, macro: bool, num_resamples: int, level: float, seed: int
) -> Interval:
  if not 0 < level < 1:
    raise ValueError(f'level must lie in (0, 1), got {level}')
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  members = _strata_members(strata, x.shape[1])
  if macro and strata is None:
    raise ValueError('macro=True averages per-stratum accuracies: pass strata')
  estimate = _statistic(x, np.ones((1, x.shape[1])), members, macro)[0]
  counts = resample_counts(members, x.shape[1], num_resamples, np.random.default_rng(seed))
  boot = _statistic(x, counts.astype(np.float64), members, macro)  # [R, N]
  low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
  if single:
    return Interval(float(estimate[0]), float(low[0]), float(high[0]))
  return Interval(estimate, low, high)


def accuracy_interval(
  correct,
  strata=None,
  macro: bool = False,
  num_resamples: int = DEFAULT_RESAMPLES,
  level: float = DEFAULT_LEVEL,
  seed: int = 0,
) -> Interval:
  """Accuracy of correct [B] (or [N, B]) with its bootstrap `level` interval.

  Args:
    correct: bool / 0-1 [B] or [N, B].
    strata: optional label per sample [B] (task); resampling stays inside each label.
    macro: the statistic is the mean over strata of their accuracies.
  """
  x, single = _as_matrix(correct, 'correct')
  return _interval(x, single, strata, macro, num_resamples, level, seed)


def paired_change_interval(
  base,
  other,
  strata=None,
  macro: bool = False,
  num_resamples: int = DEFAULT_RESAMPLES,
  level: float = DEFAULT_LEVEL,
  seed: int = 0,
) -> Interval:
  """accuracy(other) - accuracy(base) with a bootstrap interval paired by sample.

  Args:
    base: bool / 0-1 [B] (e.g. clean).
    other: bool / 0-1 [B] or [N, B] (e.g. N knockout specs), scored on the same samples in the same order.
  """
  b, _ = _as_matrix(base, 'base')
  o, single = _as_matrix(other, 'other')
  if b.shape[0] != 1 or o.shape[1] != b.shape[1]:
    raise ValueError(
      f'base must be [B] and other [B] or [N, B] on the same samples, got base '
      f'{np.shape(base)} and other {np.shape(other)}'
    )
  # The change's statistic is linear in the per-sample differences, so one resampling of d = o - b
  # pairs every condition with base on the same draws.
  return _interval(o - b, single, strata, macro, num_resamples, level, seed)


def paired_ratio_interval(
  base, other, num_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> Interval:
  """accuracy(other) / accuracy(base) (the knockout papers' performance ratio) with a bootstrap
  interval paired by sample: both accuracies come from the same resample. A resample where base
  gets nothing right gives an infinite or NaN ratio, which the percentiles then carry.

  Args:
    base: bool / 0-1 [B]; other: [B] or [N, B] on the same samples.
  """
  b, _ = _as_matrix(base, 'base')
  o, single = _as_matrix(other, 'other')
  if b.shape[0] != 1 or o.shape[1] != b.shape[1]:
    raise ValueError(
      f'base must be [B] and other [B] or [N, B] on the same samples, got base '
      f'{np.shape(base)} and other {np.shape(other)}'
    )
  if not 0 < level < 1:
    raise ValueError(f'level must lie in (0, 1), got {level}')
  counts = resample_counts([np.arange(b.shape[1])], b.shape[1], num_resamples, np.random.default_rng(seed)).astype(
    np.float64
  )
  with np.errstate(divide='ignore', invalid='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # all resamples undefined: the interval is NaN
    estimate = o.mean(axis=1) / b.mean()
    boot = (counts @ o.T) / (counts @ b.T)  # [R, N]
    # 'nearest': interpolating between two infinite resamples would give NaN, not the infinity it is.
    low, high = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0, method='nearest')
  if single:
    return Interval(float(estimate[0]), float(low[0]), float(high[0]))
  return Interval(estimate, low, high)


def mcnemar_exact(base, other) -> float | np.ndarray:
  """Two-sided exact McNemar p-value per condition: the binomial test of the discordant pairs.

  With n10 = samples base gets right and other wrong, n01 the reverse and n = n10 + n01, the p-value is
  min(1, 2 P[Binomial(n, 1/2) <= min(n10, n01)]); 1.0 when no pair is discordant. Exact integer
  arithmetic, so large n neither under- nor overflows.

  Args:
    base: bool / 0-1 [B]; other: [B] or [N, B] on the same samples.
  Returns:
    a float, or float64 [N].
  """
  b, _ = _as_matrix(base, 'base')
  o, single = _as_matrix(other, 'other')
  if b.shape[0] != 1 or o.shape[1] != b.shape[1]:
    raise ValueError(
      f'base must be [B] and other [B] or [N, B] on the same samples, got base '
      f'{np.shape(base)} and other {np.shape(other)}'
    )
  n10 = ((b == 1) & (o == 0)).sum(axis=1)
  n01 = ((b == 0) & (o == 1)).sum(axis=1)
  p = np.asarray([_binomial_two_sided(int(min(x, y)), int(x + y)) for x, y in zip(n10, n01)])
  return float(p[0]) if single else p


def _binomial_two_sided(k: int, n: int) -> float:
  """min(1, 2 * P[Binomial(n, 1/2) <= k]) for k <= n / 2."""
  if n == 0:
    return 1.0
  term, tail = 1, 1  # C(n, 0), running sum of C(n, i) for i <= k
  for i in range(k):
    term = term * (n - i) // (i + 1)
    tail += term
  return min(1.0, 2 * tail / (1 << n))  # int / int: correctly rounded, even for n in the thousands
