"""experiments.knockout end to end on a tiny random checkpoint and a small synthetic split: the results
contract, resume after a kill (torn last line included), per-sample failures, bad configs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from configs import knockout as knockout_config
from experiments import knockout as experiment
from jaxvlm import lmms_eval_format
from jaxvlm.knockout import metrics
from tests import test_processor

NUM_SAMPLES = 6


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
  return test_processor.write_random_llava_checkpoint(tmp_path_factory.mktemp('ckpt'), num_layers=4)


def make_config(checkpoint: str, **overrides):
  c = knockout_config.get_config()
  c.checkpoint = checkpoint
  c.data.num = NUM_SAMPLES
  c.num_frames = 3
  c.batch_size = 2
  c.settings = 'global1,global2,fine'
  c.window = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def summary_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)['rows']


@pytest.fixture(scope='module')
def full_run(checkpoint, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  summary = experiment.run(make_config(checkpoint), workdir)
  return workdir, summary


def test_results_contract(full_run):
  workdir, summary = full_run
  for name in (
    'config.json',
    'samples.jsonl',
    'summary.json',
    'summary.csv',
    'global1_performance_ratio.png',
    'global2_performance_ratio.png',
    'fine_accuracy_change.png',
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == NUM_SAMPLES == len({r['id'] for r in records})
  assert summary['header']['num_samples'] == NUM_SAMPLES and summary['header']['num_failed'] == 0
  # 4 layers: global1 at layers 1 and 3 (step 2), global2, 3 windows of 2 -> 6 selections x 3 types.
  assert len(summary['rows']) == 18
  for r in summary['rows']:
    assert 0.0 <= r['accuracy'] <= 1.0 and 0.0 <= r['flip_rate'] <= 1.0
  with open(os.path.join(workdir, 'summary.csv')) as f:
    assert len(f.read().strip().splitlines()) == 19
  # 1-based names, intervals, per-task scores and their heatmap; no lmms-eval task for synthetic data.
  assert {r['name'] for r in summary['rows']} >= {'global1/LV/1-4', 'global1/LV/3-4', 'fine/VS/3-4'}
  for r in summary['rows']:
    assert r['accuracy_low'] <= r['accuracy'] <= r['accuracy_high'] and 0.0 <= r['mcnemar_p'] <= 1.0
  tasks = {r['task'] for r in records}
  assert {(s['group_kind'], s['group']) for s in summary['header']['scores']} == (
    {('overall', 'overall')} | {('task', t) for t in tasks}
  )
  for name in ('summary_scores.csv', 'fine_task_change.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert not os.path.exists(os.path.join(workdir, 'lmms_eval'))


def test_rerun_resumes_without_duplicates_and_kill_restart_gives_same_summary(checkpoint, full_run, tmp_path):
  full_dir, _ = full_run
  workdir = str(tmp_path / 'killed')
  experiment.run(make_config(checkpoint, max_samples=3), workdir)  # stopped after 3 samples...
  with open(os.path.join(workdir, 'samples.jsonl'), 'a') as f:
    f.write('{"id": "torn-by-the-kill", "clean": [0.1')  # ...mid-way through a write
  experiment.run(make_config(checkpoint), workdir)
  experiment.run(make_config(checkpoint), workdir)  # a finished run: nothing new
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    ids = [json.loads(line)['id'] for line in f]
  assert len(ids) == NUM_SAMPLES == len(set(ids))
  got, want = summary_rows(workdir), summary_rows(full_dir)
  assert [r['name'] for r in got] == [r['name'] for r in want]
  for a, b in zip(got, want):
    for key in ('accuracy', 'performance_ratio', 'delta_logp_correct', 'flip_rate'):
      assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), (a['name'], key)


def test_corrupt_video_is_recorded_and_the_run_goes_on(checkpoint, full_run, tmp_path):
  full_dir, _ = full_run
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(os.path.join(full_dir, 'synthetic'), os.path.join(workdir, 'synthetic'))
  videos = sorted(os.listdir(os.path.join(workdir, 'synthetic', 'test', 'videos')))
  broken = os.path.join(workdir, 'synthetic', 'test', 'videos', videos[0])
  with open(broken, 'r+b') as f:
    f.truncate(200)
  summary = experiment.run(make_config(checkpoint), workdir)
  assert summary['header']['num_failed'] == 1
  assert summary['header']['num_samples'] == NUM_SAMPLES - 1
  failure = summary['header']['failures'][0]
  assert videos[0].split('.')[0] in failure['id'] and failure['error']


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('kinds', 'LV,XX', "kinds='LV,XX': unknown 'XX'"),
    ('window', 9, 'outside the 4 layers'),
    ('settings', 'global3', "settings='global3': unknown 'global3'"),
  ],
)
def test_bad_config_fails_before_any_sample(checkpoint, tmp_path, field, value, message):
  workdir = str(tmp_path / 'bad')
  with pytest.raises(ValueError, match=message):
    experiment.run(make_config(checkpoint, **{field: value}), workdir)
  assert not os.path.exists(os.path.join(workdir, 'samples.jsonl'))


def test_summary_table_prints_every_spec(full_run):
  _, summary = full_run
  table = metrics.format_table(summary)
  assert all(r['name'] in table for r in summary['rows'])
  assert np.isfinite(summary['header']['clean_accuracy'])


def test_mvbench_release_tree_runs_with_official_scores_and_lmms_eval_files(checkpoint, full_run, tmp_path):
  """`--config.data.ann=MVBench/json --config.data.video_root=MVBench/video` on a release-shaped tree
  (a video task and a TVQA frame-folder task, both clipped), the tiny model's videos standing in."""
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  full_dir, _ = full_run
  videos = sorted(os.listdir(os.path.join(full_dir, 'synthetic', 'test', 'videos')))[:2]
  root = tmp_path / 'MVBench'
  (root / 'json').mkdir(parents=True)
  (root / 'video' / 'star' / 'Charades_v1_480').mkdir(parents=True)
  items = []
  for i, name in enumerate(videos):
    shutil.copy(
      os.path.join(full_dir, 'synthetic', 'test', 'videos', name),
      root / 'video' / 'star' / 'Charades_v1_480' / f'CLIP{i}.mp4',
    )
    items.append(
      {
        'video': f'CLIP{i}.mp4',
        'question': 'What happened after the person took the food?',
        'candidates': ['Ate.', 'Slept.', 'Left.'],
        'answer': 'Slept.',
        'start': 0.0,
        'end': 1.0,
      }
    )
  (root / 'json' / 'action_sequence.json').write_text(json.dumps(items))
  frames = root / 'video' / 'tvqa' / 'frames_fps3_hq' / 'friends_s01e01_seg01_clip_00'
  frames.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(9):
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(frames / f'{i + 1:05d}.jpg')
  (root / 'json' / 'episodic_reasoning.json').write_text(
    json.dumps(
      [
        {
          'video': frames.name,
          'question': 'Why does Ross leave?',
          'candidates': ['A call.', 'A knock.'],
          'answer': 'A call.',
          'start': 0.5,
          'end': 2.5,
        }
      ]
    )
  )
  config = make_config(checkpoint, settings='global2', benchmark='mvbench')
  config.data = config_dict.ConfigDict({'ann': str(root / 'json'), 'video_root': str(root / 'video')})
  workdir = str(tmp_path / 'run')
  summary = experiment.run(config, workdir)
  h = summary['header']
  assert h['num_samples'] == 3 and h['num_failed'] == 0, h['failures']
  clean = {s['group']: s for s in h['scores'] if s['condition'] == 'clean'}
  assert set(clean) == {'overall', 'mean over tasks', 'action_sequence', 'episodic_reasoning'}
  assert clean['mean over tasks']['accuracy'] == pytest.approx(
    (clean['action_sequence']['accuracy'] + clean['episodic_reasoning']['accuracy']) / 2
  )
  folder = os.path.join(workdir, 'lmms_eval', lmms_eval_format.sanitize_model_name(str(checkpoint)))
  names = sorted(os.listdir(folder))
  assert len(names) == 3 and names[0].endswith('_results.json')
  with open(os.path.join(folder, names[0])) as f:
    lmms = json.load(f)['results']
  for task in ('action_sequence', 'episodic_reasoning'):
    assert lmms[f'mvbench_{task}']['mvbench_accuracy,none'] == pytest.approx(100 * clean[task]['accuracy'])
