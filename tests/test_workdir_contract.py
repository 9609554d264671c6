"""A workdir is a contract (issue 16), met as a user's command meets it, on the embedded default
(assets/) and a small synthetic split: a resume cannot mix configs (a changed result-affecting field
refuses, naming it; --config.fresh=True starts over), the same config resumes exactly (torn last line
included), recorded failures are retried, a second run on a held workdir fails at once, a model-side
failure of one batch is retried sample by sample, and the README's benchmark override on the default
preset works (with duplicate ids, a bare-string item, paths leaving video_root and an over-long prompt
recorded per item)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from configs import knockout as knockout_config
from configs import train_selector as train_selector_config
from experiments import knockout as experiment
from jaxvlm import checkpoints, prompts, runs
from jaxvlm.data import synthetic
from jaxvlm.keyframes import config_fields as keyframe_fields
from jaxvlm.knockout import engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM = 4


@pytest.fixture(scope='module')
def split(tmp_path_factory) -> str:
  """A 4-item synthetic test split (one per question type but background), read via data.ann."""
  return synthetic.ensure(str(tmp_path_factory.mktemp('syn')), num=NUM, seed=1234, split='test')


def make_config(split_dir: str, **overrides):
  c = knockout_config.get_config('runlocal')
  c.data.ann = split_dir
  c.max_samples = -1
  c.settings, c.kinds = 'global2', 'LV'
  c.batch_size = 2
  for k, v in overrides.items():
    node, name = (c.data, k[5:]) if k.startswith('data.') else (c, k)
    setattr(node, name, v)
  return c


def lines(workdir: str) -> list[str]:
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    return f.read().splitlines()


def records(workdir: str) -> dict[str, dict]:
  return {r['id']: r for r in runs.SampleLog(os.path.join(workdir, 'samples.jsonl')).records()}


def header(workdir: str) -> dict:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


KNOCKOUT_FLAGS = (
  'experiments.knockout',
  '--config=configs/knockout.py:runlocal',
  '--config.settings=global2',
  '--config.kinds=LV',
)


@pytest.fixture(scope='module')
def done(split, tmp_path_factory) -> str:
  """A finished workdir: all 4 samples of the split."""
  workdir = str(tmp_path_factory.mktemp('done'))
  experiment.run(make_config(split), workdir)
  return workdir


# ---------------------------------------------------------------- item 1: resumes cannot mix configs


def test_same_config_resumes_exactly_with_free_fields_changed_and_a_torn_line(split, done, tmp_path):
  workdir = str(tmp_path / 'w')
  experiment.run(make_config(split, max_samples=2), workdir)  # stopped after 2 samples...
  first = lines(workdir)
  with open(os.path.join(workdir, 'samples.jsonl'), 'a') as f:
    f.write('{"id": "torn-by-the-kill", "clean": [0.1')  # ...mid-way through a write
  # batch_size, tail_multiple, max_samples may differ on resume: they cannot change a record.
  experiment.run(make_config(split, batch_size=1, tail_multiple=16), workdir)
  got = lines(workdir)
  assert got[:2] == first and len(got) == NUM == len({json.loads(l)['id'] for l in got})
  assert header(workdir)['num_samples'] == NUM and header(workdir)['num_failed'] == 0
  want = {r['id']: r for r in map(json.loads, lines(done))}
  for r in map(json.loads, got):
    assert r['clean'] == pytest.approx(want[r['id']]['clean'], abs=1e-5)
  experiment.run(make_config(split), workdir)  # finished: nothing new
  assert lines(workdir) == got


@pytest.mark.parametrize(
  'field, value, shown',
  [
    ('num_frames', 8, 'num_frames: 4 (there) vs 8 (now)'),
    ('data.seed', 7, 'data.seed: 1234 (there) vs 7 (now)'),
    ('window', 2, 'window: 4 (there) vs 2 (now)'),
    ('settings', 'global2,fine', "settings: 'global2' (there) vs 'global2,fine' (now)"),
  ],
)
def test_a_changed_result_field_refuses_naming_it(split, done, field, value, shown):
  before = lines(done)
  with pytest.raises(runs.WorkdirConfigError) as e:
    experiment.run(make_config(split, **{field: value}), done)
  assert shown in str(e.value) and '--config.fresh=True' in str(e.value) and 'batch_size' in str(e.value)
  assert lines(done) == before
  with open(os.path.join(done, 'config.json')) as f:
    assert json.load(f)['num_frames'] == 4  # still the config of the records there


def test_refusal_and_fresh_run_through_the_flags(split, done, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(done, workdir)
  before = lines(workdir)
  flags = (
    *KNOCKOUT_FLAGS,
    f'--config.data.ann={split}',
    f'--workdir={workdir}',
    '--config.num_frames=8',
    '--config.max_samples=2',
  )
  refused = cli(*flags)
  assert refused.returncode != 0
  assert 'num_frames: 4 (there) vs 8 (now)' in refused.stderr and '--config.fresh=True' in refused.stderr
  assert lines(workdir) == before
  fresh = cli(*flags, '--config.fresh=True')
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_frames'] == 8
  assert len(lines(workdir)) == 2 and header(workdir)['num_samples'] == 2  # started over, 2 samples
  with open(os.path.join(workdir, 'run.json')) as f:
    bound = json.load(f)
  assert bound['experiment'] == 'knockout' and 'batch_size' in bound['free_fields']


def test_train_selector_workdir_binds_training_fields_only(tmp_path):
  """Binding without compute: a workdir holding checkpoints refuses another tau, accepts another
  label_batch_size (throughput only)."""
  workdir = str(tmp_path / 'w')
  c = train_selector_config.get_config('runlocal')
  runs.prepare_workdir(workdir, c, keyframe_fields.TRAIN_SELECTOR)
  os.makedirs(os.path.join(workdir, 'checkpoints', '10'))
  c.label_batch_size = 7
  runs.prepare_workdir(workdir, c, keyframe_fields.TRAIN_SELECTOR)
  c.tau = 0.5
  with pytest.raises(runs.WorkdirConfigError, match=r'tau: 0.25 \(there\) vs 0.5 \(now\)'):
    runs.prepare_workdir(workdir, c, keyframe_fields.TRAIN_SELECTOR)
  runs.release_workdir(workdir)


# ---------------------------------------------------------------- item 5: failures are retried


def test_recorded_failures_are_retried_after_the_fix(split, tmp_path, caplog):
  data_dir = str(tmp_path / 'split')
  shutil.copytree(split, data_dir)
  video = os.path.join(data_dir, 'videos', 'test_000001.mp4')
  os.rename(video, video + '.away')  # missing at the time of the first run
  workdir = str(tmp_path / 'w')
  experiment.run(make_config(data_dir), workdir)
  assert header(workdir)['num_failed'] == 1 and 'video not found' in header(workdir)['failures'][0]['error']
  os.rename(video + '.away', video)  # fixed
  caplog.set_level(logging.INFO)
  experiment.run(make_config(data_dir, retry_failures=False), workdir)
  assert header(workdir)['num_failed'] == 1 and 'keeping 1 recorded failures' in caplog.text
  experiment.run(make_config(data_dir), workdir)
  assert 'retrying 1 recorded failure' in caplog.text
  assert header(workdir)['num_failed'] == 0 and header(workdir)['num_samples'] == NUM
  assert 'error' not in records(workdir)['test_000001'] and len(records(workdir)) == NUM


# ---------------------------------------------------------------- item 6: one run per workdir


def test_a_second_run_fails_at_once_and_a_dead_runs_lock_is_taken_over(split, tmp_path, caplog):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys, time; from jaxvlm import runs; runs.lock_workdir(sys.argv[1]); '
      'print("held", flush=True); time.sleep(120)',
      workdir,
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    start = time.time()
    with pytest.raises(runs.WorkdirLockedError, match=f'in use by another run \\(pid {holder.pid} on host'):
      experiment.run(make_config(split, max_samples=1), workdir)
    assert time.time() - start < 60
    assert not os.path.exists(os.path.join(workdir, 'samples.jsonl'))
    assert not os.path.exists(os.path.join(workdir, 'config.json'))
  finally:
    holder.kill()
    holder.wait()
  assert os.path.exists(os.path.join(workdir, '.lock'))  # killed: its lock file stays behind
  caplog.set_level(logging.WARNING)
  experiment.run(make_config(split, max_samples=1), workdir)
  assert f'took over the stale lock of a run that is gone (pid {holder.pid}' in caplog.text
  assert len(lines(workdir)) == 1 and not os.path.exists(os.path.join(workdir, '.lock'))


# ---------------------------------------------------------------- item 7: a failing batch


def test_a_batch_that_fails_on_the_model_side_is_retried_one_by_one(split, done, tmp_path, monkeypatch):
  """Out of memory on the longest prompt: its batch is retried sample by sample, the others finish,
  it is recorded, the run goes on; a rerun (memory now enough) retries it."""
  config = make_config(split)
  _, _, processor = runs.load_model(config)
  samples, _ = runs.load_samples(config, str(tmp_path / 'unused'))
  length = {
    s.id: len(prompts.build_prompt(processor, s.question, s.options, config.num_frames).input_ids) for s in samples
  }
  longest = max(length, key=length.get)
  assert sorted(length.values())[-2] < length[longest]
  real = engine.evaluate_batch

  def out_of_memory_on_the_longest(model, params, batch, *args):
    if int(batch.answer_index.max()) + 1 >= length[longest]:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB')
    return real(model, params, batch, *args)

  monkeypatch.setattr(engine, 'evaluate_batch', out_of_memory_on_the_longest)
  workdir = str(tmp_path / 'w')
  experiment.run(config, workdir)
  got = records(workdir)
  assert len(got) == NUM and 'RESOURCE_EXHAUSTED' in got[longest]['error']
  want = records(done)
  for sample_id, r in got.items():
    if sample_id != longest:  # the batch-mate of the longest was retried alone and finished
      assert r['clean'] == pytest.approx(want[sample_id]['clean'], abs=1e-5)
  monkeypatch.setattr(engine, 'evaluate_batch', real)
  experiment.run(config, workdir)
  assert 'error' not in records(workdir)[longest] and header(workdir)['num_failed'] == 0


# ---------------------------------------------------------------- items 9, 4, 8 through the flags


def test_readme_benchmark_override_on_the_default_preset(split, tmp_path):
  """`--config.benchmark=mvbench --config.data.ann=... --config.data.video_root=...` on the default preset:
  the first of two items with one id is kept (the second recorded under q1#duplicate2), a bare string
  item, a path out of video_root and a prompt longer than the model's positions are recorded per item."""
  videos = os.path.join(split, 'videos')
  item = lambda **kw: {
    'video': 'test_000000.mp4',
    'question': 'Which object appeared briefly in the video?',
    'candidates': ['blue triangle', 'cyan cross', 'yellow ring', 'magenta ring'],
    'answer': 'blue triangle',
    **kw,
  }
  ann = str(tmp_path / 'mytask.json')
  with open(ann, 'w') as f:
    json.dump(
      [
        item(id='q1'),
        item(id='q1', video='test_000001.mp4', question='Another question?'),
        item(id='q2', video='test_000002.mp4'),
        'a bare string',
        item(id='up', video='../outside.mp4'),
        item(id='abs', video='/etc/passwd'),
        item(id='long', question=' '.join(['word'] * 1100)),
      ],
      f,
    )
  workdir = str(tmp_path / 'w')
  result = cli(
    'experiments.knockout',
    '--config=configs/knockout.py',
    '--config.benchmark=mvbench',
    f'--config.data.ann={ann}',
    f'--config.data.video_root={videos}',
    '--config.num_frames=4',
    '--config.settings=global2',
    '--config.kinds=LV',
    f'--workdir={workdir}',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  got = records(workdir)
  assert 'error' not in got['q1'] and 'error' not in got['q2']
  assert "duplicate id 'q1'" in got['q1#duplicate2']['error']
  assert 'item 3 of' in got['mytask/3']['error'] and 'JSON str' in got['mytask/3']['error']
  assert "'../outside.mp4' leaves video_root" in got['mytask/4']['error']
  assert "'/etc/passwd' leaves video_root" in got['mytask/5']['error']
  assert 'max_position_embeddings=1024' in got['long']['error']
  assert header(workdir)['num_samples'] == 2 and header(workdir)['num_failed'] == 5


# ---------------------------------------------------------------- item 8: the wrong checkpoint


def test_a_siglip_checkpoint_given_as_the_video_llm_is_named(split, tmp_path):
  workdir = str(tmp_path / 'w')
  with pytest.raises(
    checkpoints.UnsupportedModelError,
    match=r"checkpoint='assets/siglip_tiny' is a 'siglip' checkpoint; this field needs one of: "
    r'llava_onevision',
  ):
    experiment.run(make_config(split, checkpoint='assets/siglip_tiny'), workdir)
  assert not os.path.exists(os.path.join(workdir, 'samples.jsonl'))
