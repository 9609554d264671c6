"""Our lmms-eval-format files hold the fields lmms-eval 0.7.3 writes.

The field lists below are lmms-eval's (read from its 0.7.3 source): a samples line is the logged sample
of `evaluator._process_document` after `EvaluationTracker.save_results_samples` (doc and arguments
dropped, `input` added, resps dropped when equal to filtered_resps) plus the task's `process_results`
dict; the results file is `simple_evaluate`'s results dict plus `GeneralConfigTracker`'s fields and
task_hashes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxvlm import data, lmms_eval_format
from tests.test_data_loaders import EGOSCHEMA, FIXTURES, LVB, MVBENCH, NEXTQA, VIDEOMME, VIDEOMME_DATA

SAMPLE_FIELDS = {'doc_id', 'target', 'input', 'filtered_resps', 'token_counts', 'doc_hash'}
# Each task's process_results output (lmms_eval/tasks/<task>/utils.py).
PROCESS_RESULTS = {
  'mvbench': {'mvbench_accuracy': {'pred_answer', 'gt_answer', 'score'}},
  'videomme': {
    'videomme_perception_score': {
      'question_id',
      'duration',
      'category',
      'sub_category',
      'task_category',
      'pred_answer',
      'answer',
      'score',
      'videoID',
    }
  },
  'egoschema_subset': {'submission': None, 'score': {'pred', 'ground_truth'}},
  'nextqa_mc_test': {'exact_match': None},
  'longvideobench_val_v': {
    'lvb_acc': {'id', 'duration_group', 'question_category', 'answer', 'parsed_pred'},
    'submission': None,
  },
}
METRIC = {
  'mvbench': 'mvbench_accuracy',
  'videomme': 'videomme_perception_score',
  'egoschema_subset': 'score',
  'nextqa_mc_test': 'exact_match',
  'longvideobench_val_v': 'lvb_acc',
}
RESULTS_FIELDS = {
  'results',
  'group_subtasks',
  'configs',
  'versions',
  'n-shot',
  'higher_is_better',
  'n-samples',
  'config',
  'git_hash',
  'git_branch',
  'lmms_eval_version',
  'date',
  'usage',
  'task_hashes',
  'model_source',
  'model_name',
  'model_name_sanitized',
  'system_instruction',
  'system_instruction_sha',
  'fewshot_as_multiturn',
  'chat_template',
  'chat_template_sha',
  'start_time',
  'end_time',
  'total_evaluation_time_seconds',
}
CONFIG_FIELDS = {'model', 'model_args', 'model_backend', 'batch_size', 'limit', 'bootstrap_iters', 'gen_kwargs'}


def _loaded(benchmark):
  if benchmark == 'mvbench':
    return data.load_mvbench(MVBENCH / 'json', MVBENCH / 'video').samples
  if benchmark == 'videomme':
    return data.load_videomme(VIDEOMME, VIDEOMME_DATA).samples
  if benchmark == 'egoschema':
    return data.load_egoschema(
      EGOSCHEMA / 'questions.json', EGOSCHEMA / 'videos', EGOSCHEMA / 'subset_answers.json'
    ).samples
  if benchmark == 'nextqa':
    return data.load_nextqa(
      NEXTQA / 'val.csv', FIXTURES / 'nextqa' / 'NExTVideo', NEXTQA / 'map_vid_vidorID.json'
    ).samples
  return data.load_longvideobench(LVB / 'lvb_val.json', LVB / 'videos').samples


def _write(tmp_path, benchmark, predicted=None, split=''):
  samples = _loaded(benchmark)
  predicted = [s.answer or 0 for s in samples] if predicted is None else predicted
  paths = lmms_eval_format.write(
    str(tmp_path),
    benchmark,
    samples,
    predicted,
    [f'prompt of {s.id}' for s in samples],
    'llava-hf/llava-onevision-qwen2-7b-ov-hf',
    split=split,
    date='20260101_120000',
    run_config={'batch_size': 2},
  )
  return samples, paths


def _lines(path):
  return [json.loads(l) for l in open(path, encoding='utf-8')]


@pytest.mark.parametrize(
  'benchmark,split,tasks',
  [
    (
      'mvbench',
      '',
      ['mvbench_action_antonym', 'mvbench_action_sequence', 'mvbench_episodic_reasoning', 'mvbench_fine_grained_pose'],
    ),
    ('videomme', '', ['videomme']),
    ('egoschema', '', ['egoschema_subset']),
    ('nextqa', 'test', ['nextqa_mc_test']),
    ('longvideobench', '', ['longvideobench_val_v']),
  ],
)
def test_files_hold_lmms_evals_fields(tmp_path, benchmark, split, tasks):
  samples, paths = _write(tmp_path, benchmark, split=split)
  folder = tmp_path / 'llava-hf__llava-onevision-qwen2-7b-ov-hf'
  assert paths == [str(folder / f'20260101_120000_samples_{t}.jsonl') for t in tasks] + [
    str(folder / '20260101_120000_results.json')
  ]
  for task, path in zip(tasks, paths):
    expected = PROCESS_RESULTS['mvbench' if task.startswith('mvbench_') else task]
    for line in _lines(path):
      assert set(line) == SAMPLE_FIELDS | set(expected), task
      assert isinstance(line['target'], str) and line['filtered_resps'] in 'ABCDE'
      assert len(line['doc_hash']) == 64 and line['input'].startswith('prompt of ')
      for key, sub in expected.items():
        if sub is not None:
          assert set(line[key]) == sub, (task, key)
  results = json.loads(open(paths[-1], encoding='utf-8').read())
  assert set(results) == RESULTS_FIELDS
  assert set(results['config']) >= CONFIG_FIELDS
  assert results['model_name_sanitized'] == 'llava-hf__llava-onevision-qwen2-7b-ov-hf'
  for task in tasks:
    metric = METRIC['mvbench' if task.startswith('mvbench_') else task]
    row = results['results'][task]
    assert {
      'alias',
      f'{metric},none',
      f'{metric}_stderr,none',
      f'{metric}_stderr_clt,none',
      f'{metric}_stderr_clustered,none',
      'samples',
    } == set(row)
    assert results['n-samples'][task]['effective'] == row['samples'] == len(_lines(paths[tasks.index(task)]))
    assert results['higher_is_better'][task] == {metric: True} and results['n-shot'][task] == 0
    assert set(results['task_hashes']) == set(tasks)
  if benchmark == 'mvbench':
    assert results['results']['mvbench'] == {'alias': 'mvbench', ' ': ' '}
    assert results['group_subtasks']['mvbench'] == tasks


def test_aggregates_follow_each_tasks_lmms_eval_scale(tmp_path):
  samples = _loaded('mvbench')
  wrong_first = [(s.answer + 1) % len(s.options) if i == 0 else s.answer for i, s in enumerate(samples)]
  _, paths = _write(tmp_path / 'mv', 'mvbench', wrong_first)
  results = json.loads(open(paths[-1]).read())['results']
  # action_antonym/0 answered wrong: 2 of 3 right, in percent as lmms-eval's mvbench aggregation gives.
  assert results['mvbench_action_antonym']['mvbench_accuracy,none'] == pytest.approx(200 / 3)
  assert results['mvbench_action_sequence']['mvbench_accuracy,none'] == 100.0
  line = _lines(paths[0])[0]
  assert line['mvbench_accuracy'] == {'pred_answer': 'A', 'gt_answer': 'C', 'score': 0}
  assert line['target'] == 'Piling something up'  # MVBench's target is the answer text
  _, paths = _write(tmp_path / 'lvb', 'longvideobench', [0, 0])
  lvb = json.loads(open(paths[-1]).read())['results']['longvideobench_val_v']
  assert lvb['lvb_acc,none'] == 0.5  # a fraction, as lmms-eval's LongVideoBench gives
  assert _lines(paths[0])[1]['lvb_acc']['duration_group'] == 60  # an int, as in the release


def test_only_samples_lmms_eval_scores_are_written(tmp_path):
  ego, _ = _write(tmp_path / 'ego', 'egoschema')
  assert [lmms_eval_format.task_of('egoschema', s) for s in ego] == ['egoschema_subset', None, 'egoschema_subset']
  assert _write(tmp_path / 'val', 'nextqa', split='val')[1] == []  # lmms-eval has NExT-QA MC test only
  custom = data.VideoQASample('c/0', 'v.mp4', 'q?', ['a', 'b'], 1, task='my_task')
  assert lmms_eval_format.task_of('mvbench', custom) is None
  assert lmms_eval_format.task_of('synthetic', custom) is None


def test_videomme_clustered_stderr_is_lmms_evals_formula(tmp_path):
  samples, paths = _write(tmp_path, 'videomme', [2, 1, 1, 0])  # right, wrong, right, wrong
  row = json.loads(open(paths[-1]).read())['results']['videomme']
  scores = np.array([1.0, 0.0, 1.0, 0.0])
  clusters = [os.path.splitext(os.path.basename(s.video))[0] for s in samples]
  n, mean = len(scores), scores.mean()
  cross = sum(
    (scores[i] - mean) * (scores[j] - mean) for i in range(n) for j in range(n) if i != j and clusters[i] == clusters[j]
  )
  expected = np.sqrt(np.var(scores, ddof=1) / n + cross / n**2)
  assert row['videomme_perception_score_stderr_clustered,none'] == pytest.approx(expected)
  assert row['videomme_perception_score,none'] == 50.0
  assert row['videomme_perception_score_stderr,none'] == 'N/A'  # custom aggregation: no bootstrap stderr


def test_bad_inputs_name_what_disagrees(tmp_path):
  samples = _loaded('longvideobench')
  with pytest.raises(ValueError, match='2 samples, 1 predictions, 2 prompts'):
    lmms_eval_format.write(str(tmp_path), 'longvideobench', samples, [0], ['p', 'p'], 'm')
  with pytest.raises(ValueError, match="'gZpcvXsEH0Y_1': predicted option 7 outside its 4 options"):
    lmms_eval_format.write(str(tmp_path), 'longvideobench', samples, [0, 7], ['p', 'p'], 'm')
