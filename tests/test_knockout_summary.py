"""The knockout summary on hand-made records: 1-based names, intervals, McNemar p, per-task and official
rows, and the plots drawing them (no model runs)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from jaxvlm import benchmark_scores, stats
from jaxvlm.knockout import metrics, plots, specs

TASKS = ('action_antonym', 'action_sequence', 'fine_grained_pose')


def _records(sw: specs.Sweep, num: int = 60, seed: int = 0) -> list[dict]:
  """Clean answers right ~80 % of the time; LV in early layers flips many of them, VT / VS few."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(num):
    answer = int(rng.integers(0, 3))
    clean = rng.normal(size=3)
    clean[answer if rng.random() < 0.8 else (answer + 1) % 3] += 5
    spec_logp = {}
    for e in sw.entries:
      damage = 0.6 if e.kind == 'LV' and e.layers[0] == 0 else 0.05
      logp = clean.copy()
      if rng.random() < damage:
        logp[answer] -= 10
      spec_logp[e.name] = logp
    records.append(
      {'id': f'{TASKS[i % 3]}/{i}', 'task': TASKS[i % 3], 'answer': answer, 'clean': clean, 'specs': spec_logp}
    )
  return records + [{'id': 'broken/0', 'error': 'VideoError: truncated'}]


@pytest.fixture(scope='module')
def summary():
  sw = specs.build_sweep(8, 4, settings=('global1', 'global2', 'fine'), window_size=4)
  return sw, metrics.summarize(_records(sw), sw, 'mvbench', num_resamples=300)


def test_rows_use_1_based_layers_and_carry_intervals(summary):
  sw, s = summary
  names = [r['name'] for r in s['rows']]
  assert 'global1/LV/1-8' in names and 'fine/VT/5-8' in names and 'global1/LV/0-7' not in names
  assert [e.name for e in sw.entries][names.index('global1/LV/1-8')] == 'global1/LV/0-7'  # records' keys
  for r in s['rows']:
    assert r['accuracy_low'] <= r['accuracy'] <= r['accuracy_high']
    assert r['change_low'] <= r['change'] <= r['change_high']
    assert r['performance_ratio_low'] <= r['performance_ratio'] <= r['performance_ratio_high']
    assert 0 <= r['mcnemar_p'] <= 1
    np.testing.assert_allclose(r['change'], r['accuracy'] - s['header']['clean_accuracy'])
  lv_all = s['rows'][names.index('global1/LV/1-8')]
  assert lv_all['change_high'] < 0 and lv_all['mcnemar_p'] < 1e-3  # LV from layer 1 hurts, clearly
  h = s['header']
  assert h['num_samples'] == 60 and h['num_failed'] == 1
  assert h['clean_accuracy_low'] <= h['clean_accuracy'] <= h['clean_accuracy_high']


def test_scores_hold_per_task_and_official_rows_matching_the_spec_rows(summary):
  _, s = summary
  scores = s['header']['scores']
  groups = {(r['group_kind'], r['group']) for r in scores}
  assert groups == {('overall', 'overall'), ('official', 'mean over tasks')} | {('task', t) for t in TASKS}
  assert len(scores) == (1 + len(s['rows'])) * len(groups)
  for row in s['rows']:
    overall = benchmark_scores.find_row(scores, row['name'])
    assert overall['accuracy'] == pytest.approx(row['accuracy'])
    assert overall['mcnemar_p'] == pytest.approx(row['mcnemar_p'])
  per_task = [benchmark_scores.find_row(scores, 'clean', t) for t in TASKS]
  official = benchmark_scores.find_row(scores, 'clean', 'mean over tasks')
  assert official['accuracy'] == pytest.approx(np.mean([r['accuracy'] for r in per_task]))
  assert sum(r['n'] for r in per_task) == 60


def test_table_prints_intervals_and_the_official_aggregate(summary):
  _, s = summary
  table = metrics.format_table(s)
  h = s['header']
  assert f"clean accuracy: {h['clean_accuracy']:.4f} [{h['clean_accuracy_low']:.4f}" in table
  assert 'mvbench (clean): mean over tasks' in table
  assert all(r['name'] in table for r in s['rows'])


def test_plots_draw_intervals_and_the_task_heatmap(summary, tmp_path):
  _, s = summary
  written = plots.knockout_plots(s['rows'], s['header'], str(tmp_path))
  assert [os.path.basename(p) for p in written] == [
    'global1_performance_ratio.png',
    'global2_performance_ratio.png',
    'fine_accuracy_change.png',
    'fine_task_change.png',
  ]
  assert all(os.path.getsize(p) > 0 for p in written)
  # A summary without per-task scores (an older run) still plots, just without the heatmap.
  header = {k: v for k, v in s['header'].items() if k != 'scores'}
  (tmp_path / 'old').mkdir()
  assert len(plots.knockout_plots(s['rows'], header, str(tmp_path / 'old'))) == 3


def test_scores_csv(summary, tmp_path):
  _, s = summary
  path = benchmark_scores.write_csv(str(tmp_path / 'summary_scores.csv'), s['header']['scores'])
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(s['header']['scores'])
  assert rows[0]['condition'] == 'clean' and rows[0]['change'] == ''
  assert list(rows[0]) == list(benchmark_scores.SCORE_COLUMNS)


def test_mcnemar_rows_agree_with_stats(summary):
  sw, s = summary
  records = [r for r in _records(sw) if 'error' not in r]
  clean = np.asarray([np.argmax(r['clean']) == r['answer'] for r in records])
  spec = np.asarray([np.argmax(r['specs'][sw.entries[0].name]) == r['answer'] for r in records])
  assert s['rows'][0]['mcnemar_p'] == pytest.approx(stats.mcnemar_exact(clean, spec))
