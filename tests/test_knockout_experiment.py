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
  for name in ('config.json', 'samples.jsonl', 'summary.json', 'summary.csv',
               'global1_performance_ratio.png', 'global2_performance_ratio.png', 'fine_accuracy_change.png'):
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


def test_rerun_resumes_without_duplicates_and_kill_restart_gives_same_summary(checkpoint, full_run,
                                                                               tmp_path):
  full_dir, _ = full_run
  workdir = str(tmp_path / 'killed')
  experiment.run(make_config(checkpoint, max_samples=3), workdir)   # stopped after 3 samples...
  with open(os.path.join(workdir, 'samples.jsonl'), 'a') as f:
    f.write('{"id": "torn-by-the-kill", "clean": [0.1')             # ...mid-way through a write
  experiment.run(make_config(checkpoint), workdir)
  experiment.run(make_config(checkpoint), workdir)                   # a finished run: nothing new
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


@pytest.mark.parametrize('field, value, message', [
    ('kinds', 'LV,XX', 'unknown knockout type'),
    ('window', 9, 'outside the 4 layers'),
    ('settings', 'global3', 'unknown setting'),
])
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
