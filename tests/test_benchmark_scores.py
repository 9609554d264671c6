"""Per-task and official score rows for each benchmark, on samples loaded from the release-shaped fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvlm import benchmark_scores, data, stats
from tests.test_data_loaders import EGOSCHEMA, LVB, MVBENCH, NEXTQA, VIDEOMME, VIDEOMME_DATA, FIXTURES


def _groups(benchmark, samples):
  return [
    (g.kind, g.name, g.members.tolist())
    for g in benchmark_scores.benchmark_groups(benchmark, [s.task for s in samples], [s.meta for s in samples])
  ]


def test_mvbench_official_number_is_the_mean_over_tasks():
  samples = data.load_mvbench(MVBENCH / 'json', MVBENCH / 'video').samples  # tasks of 3, 2, 2, 2 items
  tasks = [s.task for s in samples]
  clean = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1], bool)
  knocked = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1], bool)
  rows = benchmark_scores.score_rows(
    'mvbench', tasks, [s.meta for s in samples], {'clean': clean, 'global1/LV/1-8': knocked}, num_resamples=200
  )
  official = benchmark_scores.find_row(rows, 'clean', 'mean over tasks')
  assert official['group_kind'] == 'official' and official['n'] == 9
  np.testing.assert_allclose(official['accuracy'], np.mean([2 / 3, 1 / 2, 0, 1]))
  assert benchmark_scores.find_row(rows, 'clean')['accuracy'] == pytest.approx(5 / 9)  # pooled differs
  task = benchmark_scores.find_row(rows, 'global1/LV/1-8', 'action_antonym', kind='task')
  assert (task['n'], task['accuracy'], task['change']) == (3, pytest.approx(1 / 3), pytest.approx(-1 / 3))
  assert task['accuracy_low'] <= task['accuracy'] <= task['accuracy_high']
  overall = benchmark_scores.find_row(rows, 'global1/LV/1-8')
  assert overall['mcnemar_p'] == pytest.approx(stats.mcnemar_exact(clean, knocked)) == 0.5  # 2 discordant
  assert 'change' not in benchmark_scores.find_row(rows, 'clean')
  assert {r['group'] for r in rows} == {
    'overall',
    'mean over tasks',
    'action_antonym',
    'action_sequence',
    'episodic_reasoning',
    'fine_grained_pose',
  }
  assert len(rows) == 2 * 6


def test_videomme_groups_by_duration():
  samples = data.load_videomme(VIDEOMME, VIDEOMME_DATA).samples  # short, short, long, medium
  official = [g for g in _groups('videomme', samples) if g[0] == 'official']
  assert official == [('official', 'short', [0, 1]), ('official', 'medium', [3]), ('official', 'long', [2])]


def test_egoschema_subset_and_full():
  samples = data.load_egoschema(
    EGOSCHEMA / 'questions.json', EGOSCHEMA / 'videos', EGOSCHEMA / 'subset_answers.json'
  ).samples
  official = [g for g in _groups('egoschema', samples) if g[0] == 'official']
  assert official == [('official', 'subset', [0, 2]), ('official', 'full', [0, 1, 2])]


def test_nextqa_groups_by_question_family():
  samples = data.load_nextqa(
    NEXTQA / 'val.csv', FIXTURES / 'nextqa' / 'NExTVideo', NEXTQA / 'map_vid_vidorID.json'
  ).samples  # CH, CW, TN
  groups = _groups('nextqa', samples)
  assert [g for g in groups if g[0] == 'official'] == [('official', 'causal', [0, 1]), ('official', 'temporal', [2])]
  assert [g[1] for g in groups if g[0] == 'task'] == ['CH', 'CW', 'TN']


def test_longvideobench_groups_by_duration_group_in_numeric_order():
  samples = data.load_longvideobench(LVB / 'lvb_val.json', LVB / 'videos').samples  # 600, 60
  official = [g for g in _groups('longvideobench', samples) if g[0] == 'official']
  assert official == [('official', 'duration 60', [1]), ('official', 'duration 600', [0])]


def test_other_benchmarks_get_overall_and_task_rows_only():
  groups = benchmark_scores.benchmark_groups('synthetic', ['needle', 'order', 'needle'], [{}] * 3)
  assert [(g.kind, g.name, g.members.tolist()) for g in groups] == [
    ('overall', 'overall', [0, 1, 2]),
    ('task', 'needle', [0, 2]),
    ('task', 'order', [1]),
  ]


def test_score_rows_validate_their_inputs():
  with pytest.raises(ValueError, match="base condition 'clean'"):
    benchmark_scores.score_rows('mvbench', ['a'], [{}], {'spec': np.array([True])})
  with pytest.raises(ValueError, match='over 2 samples, tasks over 1'):
    benchmark_scores.score_rows('mvbench', ['a'], [{}], {'clean': np.array([True, False])})
  with pytest.raises(ValueError, match='2 tasks but 1 metas'):
    benchmark_scores.benchmark_groups('mvbench', ['a', 'b'], [{}])
  with pytest.raises(KeyError, match="condition 'x', group 'overall'"):
    benchmark_scores.find_row([], 'x')
