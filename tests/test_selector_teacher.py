"""experiments.train_selector labelling its own teacher: tiny random LLaVA-OneVision and SigLIP
checkpoints (built as in tests/test_keyframe_diagnosis.py), a small synthetic split. The cached labels
equal the causal oracle of full forwards; a rerun labels nothing again; the trained selector drives
experiments.score and experiments.keyframe_diagnosis; on 8 simulated CPU devices (a subprocess) the
diagnosis (selector 'learned' included) equals that of 1 device.

`python -m tests.test_selector_teacher LLAVA SIGLIP RUN DIAG OUT` (with
XLA_FLAGS=--xla_force_host_platform_device_count=8) reruns the diagnosis of DIAG, with the selector
trained in RUN, in OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import keyframe_diagnosis as diagnosis_config
from configs import train_selector as selector_config
from experiments import keyframe_diagnosis
from jaxvlm import runs as common
from jaxvlm.keyframes import candidates
from jaxvlm.keyframes import learned as learned_selector
from experiments import train_selector as experiment
from jaxvlm import video
from jaxvlm.keyframes import relevance, selector_model, teacher
from tests import test_keyframe_diagnosis as diagnosis_test
from tests.test_keyframe_diagnosis import checkpoints_dir  # pylint: disable=unused-import  # fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES, N = 6, 4


def make_config(ckpts, teacher_dir: str):
  c = selector_config.get_config()
  c.checkpoint, c.siglip_checkpoint = ckpts
  c.teacher_dir = teacher_dir
  c.data.num = NUM_SAMPLES
  c.num_candidates = N
  c.label_batch_size = NUM_SAMPLES  # one batch: one compiled labelling call
  c.tail_multiple = 8
  c.model.width, c.model.depth, c.model.num_heads = 8, 1, 2
  c.batch_size = 2
  c.num_steps = 2
  c.warmup_steps = 1
  c.eval_every = c.checkpoint_every = 2
  c.val_fraction = 0.5
  c.k = 2
  return c


@pytest.fixture(scope='module')
def labelled(checkpoints_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = make_config(checkpoints_dir, os.path.join(workdir, 'teacher'))
  summary = experiment.run(config, workdir)
  return config, workdir, summary


def test_every_sample_is_labelled_and_trained_on(labelled):
  config, _, summary = labelled
  cache = teacher.TeacherCache(config.teacher_dir)
  assert len(cache.ids()) == NUM_SAMPLES == summary['num_train'] + summary['num_val']
  assert summary['labelling_failures'] == []
  for label in cache:
    assert label.frame_emb.shape == (N, 16) and label.text_emb.shape == (16,)
    assert label.relevance.shape == (N,) and np.all(np.isfinite(label.relevance))
    assert np.all((label.evidence >= 0) & (label.evidence < N))


def test_cached_labels_equal_the_causal_oracle_of_full_forwards(labelled):
  config, workdir, _ = labelled
  model, params, processor = common.load_model(config)
  samples, _ = common.load_samples(config, workdir)
  cands, failed = candidates.prepare_pool(samples[:2], processor, config)
  assert not failed
  batch = common.collate(cands, processor)
  want = relevance.causal_relevance_full(
    model,
    params,
    batch.input_ids,
    batch.pixels,
    batch.layout,
    batch.answer_index,
    batch.option_ids,
    N,
    np.asarray([c.sample.answer for c in cands]),
  )
  cache = teacher.TeacherCache(config.teacher_dir)
  got = np.stack([cache.get(c.sample.id).relevance for c in cands])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(want).max() > 1e-4  # the knockouts move the answer: not zeros twice


def test_rerun_labels_nothing_again(labelled, monkeypatch):
  config, workdir, _ = labelled
  cache_files = {f: os.path.getmtime(os.path.join(config.teacher_dir, f)) for f in os.listdir(config.teacher_dir)}

  def fail(*args, **kwargs):
    raise AssertionError('a cached sample was labelled again')

  monkeypatch.setattr(teacher, 'causal_labels', fail)
  experiment.run(config, workdir)
  assert {
    f: os.path.getmtime(os.path.join(config.teacher_dir, f)) for f in os.listdir(config.teacher_dir)
  } == cache_files


def test_trained_selector_picks_k_frames_of_a_video(labelled):
  config, workdir, _ = labelled
  trained = learned_selector.load_trained(workdir)
  assert trained.num_candidates == N
  samples, _ = common.load_samples(config, workdir)
  s = samples[0]
  frames = learned_selector.pick_frames(trained, s.video, s.question, s.options, 2)
  pool = video.sample_frames(s.video, N, rule='pool')
  assert frames.pixels.shape[0] == 2 and np.all(np.diff(frames.indices) > 0)
  assert set(frames.indices.tolist()) <= set(pool.indices.tolist())
  # The pick is the selector's own top-2 over the pool.
  emb = teacher.siglip_features(*trained.siglip, pool.pixels, relevance.query_texts(s.question, s.options)[1])
  want = pool.indices[
    np.sort(np.argsort(-np.asarray(selector_model.scores(trained.model, trained.params, *emb)), kind='stable')[:2])
  ]
  assert frames.indices.tolist() == want.tolist()


def test_score_cli_runs_the_video_llm_on_the_learned_selection(labelled):
  config, workdir, _ = labelled
  s = common.load_samples(config, workdir)[0][0]
  cmd = [
    sys.executable,
    '-m',
    'experiments.score',
    f'--checkpoint={config.checkpoint}',
    f'--video={s.video}',
    f'--question={s.question}',
    f'--options={",".join(s.options)}',
    '--selector=learned',
    '--k=2',
    f'--selector_checkpoint={workdir}',
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  picked = learned_selector.pick_frames(learned_selector.load_trained(workdir), s.video, s.question, s.options, 2)
  assert out['num_frames'] == 2 and out['selected_frame_indices'] == picked.indices.tolist()


def diagnosis_run_config(ckpts, selector_workdir: str):
  """Every selector and 'learned' on 2 samples."""
  return diagnosis_test.make_config(
    ckpts,
    selectors=diagnosis_config.SELECTORS + ',learned',
    ks='1,2',
    sensitive_k=1,
    selector_checkpoint=selector_workdir,
    max_samples=2,
    batch_size=2,
  )


@pytest.fixture(scope='module')
def diagnosis(labelled, checkpoints_dir, tmp_path_factory):
  _, workdir, _ = labelled
  diag_dir = str(tmp_path_factory.mktemp('diag'))
  return diag_dir, keyframe_diagnosis.run(diagnosis_run_config(checkpoints_dir, workdir), diag_dir)


def test_diagnosis_runs_selector_learned(diagnosis, checkpoints_dir, tmp_path):
  diag_dir, summary = diagnosis
  rows = [r for r in summary['rows'] if r['selector'] == 'learned']
  assert [r['k'] for r in rows] == [1, 2] and all(0.0 <= r['recall_oracle'] <= 1.0 for r in rows)
  for r in diagnosis_test.read_records(diag_dir):
    for k in (1, 2):
      assert r['selections']['learned'][str(k)] == selector_model.select(r['scores']['learned'], k).tolist()
  with pytest.raises(ValueError, match='needs selector_checkpoint'):
    keyframe_diagnosis.run(
      diagnosis_test.make_config(checkpoints_dir, selectors='learned', ks='1', sensitive_k=1), str(tmp_path / 'bad')
    )


# ---------------------------------------------------------------- 8 simulated devices (a subprocess)


def read_summary(workdir: str) -> tuple[dict, list[dict]]:
  """(header, rows) of summary.json."""
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return {k: v for k, v in summary.items() if k != 'rows'}, summary['rows']


@pytest.fixture(scope='module')
def eight(checkpoints_dir, labelled, diagnosis, tmp_path_factory) -> str:
  """The workdir of the diagnosis rerun on 8 devices (see the module docstring)."""
  _, workdir, _ = labelled
  out = str(tmp_path_factory.mktemp('eight'))
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  proc = subprocess.run(
    [sys.executable, '-m', 'tests.test_selector_teacher', *checkpoints_dir, workdir, diagnosis[0], out],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {'num_devices': 8}
  return out


def test_eight_devices_give_the_same_diagnosis(diagnosis, eight):
  """The diagnosis places no array itself (jax's default device): 8 visible devices must change nothing."""
  diag_dir, _ = diagnosis
  (one, one_rows), (many, many_rows) = (read_summary(diag_dir), read_summary(eight))  # NaN -> null in both
  assert jax.device_count() == 1 and set(many) == set(one) and 'learned' in {r['selector'] for r in one_rows}
  for key, value in one.items():
    if key == 'scores':  # rows of dicts: approx compares one level deep
      assert len(many[key]) == len(value)
      for got, want in zip(many[key], value):
        assert got == pytest.approx(want, abs=1e-6), (want['condition'], want['group'])
    else:
      assert many[key] == pytest.approx(value, abs=1e-6), key
  assert [(r['selector'], r['k']) for r in many_rows] == [(r['selector'], r['k']) for r in one_rows]
  for got, want in zip(many_rows, one_rows):
    assert got == pytest.approx(want, abs=1e-6), (want['selector'], want['k'])
  # samples.jsonl is in completion order (worker threads finish samples out of order): compare by id
  by_id = lambda workdir: sorted(diagnosis_test.read_records(workdir), key=lambda r: r['id'])
  many_records, one_records = by_id(eight), by_id(diag_dir)
  assert [r['id'] for r in many_records] == [r['id'] for r in one_records]
  for got, want in zip(many_records, one_records):
    assert got['id'] == want['id'] and got['selections'] == want['selections']
    for name, scores in want['scores'].items():
      np.testing.assert_allclose(got['scores'][name], scores, atol=1e-5, err_msg=name)
    for name in ('clean', 'text_only'):
      np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    for name, per_k in want['k_logp'].items():
      for k, logp in per_k.items():
        np.testing.assert_allclose(got['k_logp'][name][k], logp, atol=1e-5, err_msg=f'{name} k={k}')


def main(llava: str, siglip: str, run_dir: str, diag_dir: str, out: str) -> None:
  """The diagnosis on all local devices, on DIAG's synthetic videos (same seed and size)."""
  shutil.copytree(os.path.join(diag_dir, 'synthetic'), os.path.join(out, 'synthetic'))
  keyframe_diagnosis.run(diagnosis_run_config((llava, siglip), run_dir), out)
  print(json.dumps({'num_devices': jax.device_count()}))


if __name__ == '__main__':
  main(*sys.argv[1:])
