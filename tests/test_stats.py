"""Bootstrap intervals cover the truth at their nominal rate; McNemar p-values equal scipy's."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxvlm import stats

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
RUNS = 400  # simulated benchmarks per coverage test (true coverage ~0.935-0.97: sd ~1.2 % at 400)
RESAMPLES = 500


def test_accuracy_interval_covers_the_true_accuracy():
  rng = np.random.default_rng(0)
  true_accuracy, num_samples = 0.7, 200
  covered = 0
  for run in range(RUNS):
    ci = stats.accuracy_interval(rng.random(num_samples) < true_accuracy, num_resamples=RESAMPLES, seed=run)
    assert ci.low <= ci.estimate <= ci.high
    covered += ci.low <= true_accuracy <= ci.high
  assert covered / RUNS >= 0.9, covered / RUNS


def test_macro_interval_over_strata_covers_the_mean_of_task_accuracies():
  rng = np.random.default_rng(1)
  task_accuracy = np.array([0.3, 0.6, 0.9, 0.75])  # tasks of different sizes, as MVBench's could be
  tasks = np.repeat(np.arange(4), [30, 50, 40, 80])
  truth = task_accuracy.mean()
  covered = 0
  for run in range(RUNS):
    correct = rng.random(len(tasks)) < task_accuracy[tasks]
    ci = stats.accuracy_interval(correct, strata=tasks, macro=True, num_resamples=RESAMPLES, seed=run)
    np.testing.assert_allclose(ci.estimate, np.mean([correct[tasks == t].mean() for t in range(4)]))
    covered += ci.low <= truth <= ci.high
  assert covered / RUNS >= 0.9, covered / RUNS


def test_paired_change_interval_covers_the_true_change_and_is_narrower_than_unpaired():
  rng = np.random.default_rng(2)
  num_samples, covered, widths, unpaired = 200, 0, [], []
  for run in range(RUNS):
    clean = rng.random(num_samples) < 0.7
    # The knockout keeps 90 % of clean's right answers and fixes none: true change 0.7 * -0.1 = -0.07.
    knocked = clean & (rng.random(num_samples) < 0.9)
    ci = stats.paired_change_interval(clean, knocked, num_resamples=RESAMPLES, seed=run)
    np.testing.assert_allclose(ci.estimate, knocked.mean() - clean.mean())
    covered += ci.low <= -0.07 <= ci.high
    if run < 40:  # widths settle quickly; the unpaired comparison needs two more intervals per run
      widths.append(ci.high - ci.low)
      a = stats.accuracy_interval(clean, num_resamples=RESAMPLES, seed=run)
      b = stats.accuracy_interval(knocked, num_resamples=RESAMPLES, seed=run + 1)
      unpaired.append(np.hypot(a.high - a.low, b.high - b.low))
  assert covered / RUNS >= 0.9, covered / RUNS
  assert np.mean(widths) < 0.6 * np.mean(unpaired)  # pairing removes the shared per-sample variance


def test_intervals_of_several_conditions_at_once():
  rng = np.random.default_rng(3)
  clean = rng.random(100) < 0.6
  conditions = np.stack([clean, ~clean, rng.random(100) < 0.5])
  many = stats.paired_change_interval(clean, conditions, num_resamples=500, seed=4)
  assert many.estimate.shape == many.low.shape == (3,)
  assert (many.estimate[0], many.low[0], many.high[0]) == (0.0, 0.0, 0.0)  # identical to clean
  one = stats.paired_change_interval(clean, conditions[2], num_resamples=500, seed=4)
  np.testing.assert_allclose([one.estimate, one.low, one.high], [many.estimate[2], many.low[2], many.high[2]])
  acc = stats.accuracy_interval(conditions, num_resamples=500)
  np.testing.assert_allclose(acc.estimate, conditions.mean(axis=1))


def test_paired_ratio_interval_covers_the_true_performance_ratio():
  rng = np.random.default_rng(5)
  covered = 0
  for run in range(RUNS):
    clean = rng.random(200) < 0.7
    knocked = clean & (rng.random(200) < 0.8)  # true ratio 0.8
    ci = stats.paired_ratio_interval(clean, knocked, num_resamples=RESAMPLES, seed=run)
    np.testing.assert_allclose(ci.estimate, knocked.mean() / clean.mean())
    covered += ci.low <= 0.8 <= ci.high
  assert covered / RUNS >= 0.9, covered / RUNS
  many = stats.paired_ratio_interval(clean, np.stack([clean, knocked]), num_resamples=RESAMPLES)
  assert (many.estimate[0], many.low[0], many.high[0]) == (1.0, 1.0, 1.0)


def test_stratified_resampling_keeps_every_stratum_size():
  members = [np.array([0, 3, 4]), np.array([1, 2])]
  counts = stats.resample_counts(members, 5, 50, np.random.default_rng(0))
  assert counts.shape == (50, 5)
  np.testing.assert_array_equal(counts[:, [0, 3, 4]].sum(axis=1), 3)
  np.testing.assert_array_equal(counts[:, [1, 2]].sum(axis=1), 2)


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match=r'correct must be \[B\] or \[N, B\]'):
    stats.accuracy_interval(np.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match='0/1 or bools'):
    stats.accuracy_interval([0, 2, 1])
  with pytest.raises(ValueError, match=r'strata must be \[B\] = \[3\]'):
    stats.accuracy_interval([0, 1, 1], strata=[0, 1])
  with pytest.raises(ValueError, match='pass strata'):
    stats.accuracy_interval([0, 1, 1], macro=True)
  with pytest.raises(ValueError, match=r'base .*\(3,\) and other \(2,\)'):
    stats.mcnemar_exact([0, 1, 1], [0, 1])


def test_mcnemar_equals_scipy_on_the_fixture():
  fixture = json.loads((FIXTURES / 'stats' / 'paired_outcomes.json').read_text())
  clean = np.asarray(fixture['clean'], bool)
  names = list(fixture['conditions'])
  conditions = np.asarray([fixture['conditions'][n] for n in names], bool)
  ours = stats.mcnemar_exact(clean, conditions)
  for name, cond, p in zip(names, conditions, ours):
    n10, n01 = int((clean & ~cond).sum()), int((~clean & cond).sum())
    expected = 1.0 if n10 + n01 == 0 else scipy_stats.binomtest(min(n10, n01), n10 + n01, 0.5).pvalue
    np.testing.assert_allclose(p, expected, rtol=1e-12, err_msg=name)
  assert dict(zip(names, ours))['identical'] == 1.0 and dict(zip(names, ours))['tie'] == 1.0
  assert dict(zip(names, ours))['worse'] < 1e-3  # clean right, knockout wrong on many; never the reverse


@pytest.mark.parametrize('n10,n01', [(0, 7), (3, 9), (40, 60), (1200, 1290), (2, 2500)])
def test_mcnemar_equals_scipy_including_large_counts(n10, n01):
  clean = np.r_[np.ones(n10, bool), np.zeros(n01, bool), np.ones(5, bool)]
  other = np.r_[np.zeros(n10, bool), np.ones(n01, bool), np.ones(5, bool)]
  expected = scipy_stats.binomtest(min(n10, n01), n10 + n01, 0.5).pvalue
  np.testing.assert_allclose(stats.mcnemar_exact(clean, other), expected, rtol=1e-10)
