"""experiments.train_selector labelling its own teacher: tiny random LLaVA-OneVision and SigLIP
checkpoints (built as in tests/test_keyframe_diagnosis.py), a small synthetic split. The cached labels
equal the causal oracle of full forwards; a rerun labels nothing again."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import train_selector as selector_config
from experiments import common, keyframe_diagnosis
from experiments import train_selector as experiment
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
  c.label_batch_size = 4
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
  cands, failed = keyframe_diagnosis.prepare(samples[:2], processor, config)
  assert not failed
  batch = common.collate(cands, processor)
  want = relevance.causal_relevance_full(model, params, batch.input_ids, batch.pixels, batch.layout,
                                         batch.answer_index, batch.option_ids, N,
                                         np.asarray([c.sample.answer for c in cands]))
  cache = teacher.TeacherCache(config.teacher_dir)
  got = np.stack([cache.get(c.sample.id).relevance for c in cands])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(want).max() > 1e-4   # the knockouts move the answer: not zeros twice


def test_rerun_labels_nothing_again(labelled, monkeypatch):
  config, workdir, _ = labelled
  cache_files = {f: os.path.getmtime(os.path.join(config.teacher_dir, f)) for f in os.listdir(config.teacher_dir)}

  def fail(*args, **kwargs):
    raise AssertionError('a cached sample was labelled again')

  monkeypatch.setattr(teacher, 'causal_labels', fail)
  experiment.run(config, workdir)
  assert {f: os.path.getmtime(os.path.join(config.teacher_dir, f))
          for f in os.listdir(config.teacher_dir)} == cache_files


def test_trained_selector_picks_k_frames_of_a_video(labelled):
  config, workdir, _ = labelled
  trained = experiment.load_trained(workdir)
  assert trained.num_candidates == N
  samples, _ = common.load_samples(config, workdir)
  s = samples[0]
  frames = experiment.pick_frames(trained, s.video, s.question, s.options, 2)
  pool = experiment.video.sample_frames(s.video, N, rule='pool')
  assert frames.pixels.shape[0] == 2 and np.all(np.diff(frames.indices) > 0)
  assert set(frames.indices.tolist()) <= set(pool.indices.tolist())
  # The pick is the selector's own top-2 over the pool.
  emb = teacher.siglip_features(*trained.siglip, pool.pixels, relevance.query_texts(s.question, s.options)[1])
  want = pool.indices[np.sort(np.argsort(-np.asarray(
      selector_model.scores(trained.model, trained.params, *emb)), kind='stable')[:2])]
  assert frames.indices.tolist() == want.tolist()


def test_score_cli_runs_the_video_llm_on_the_learned_selection(labelled):
  config, workdir, _ = labelled
  s = common.load_samples(config, workdir)[0][0]
  cmd = [sys.executable, '-m', 'experiments.score', f'--checkpoint={config.checkpoint}', f'--video={s.video}',
         f'--question={s.question}', f'--options={",".join(s.options)}', '--selector=learned', '--k=2',
         f'--selector_checkpoint={workdir}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  picked = experiment.pick_frames(experiment.load_trained(workdir), s.video, s.question, s.options, 2)
  assert out['num_frames'] == 2 and out['selected_frame_indices'] == picked.indices.tolist()


def test_diagnosis_runs_selector_learned(labelled, checkpoints_dir, tmp_path):
  _, workdir, _ = labelled
  config = diagnosis_test.make_config(checkpoints_dir, selectors='siglip_q,learned', ks='1,2', sensitive_k=1,
                                      selector_checkpoint=workdir, max_samples=2, batch_size=2)
  summary = keyframe_diagnosis.run(config, str(tmp_path / 'diag'))
  rows = [r for r in summary['rows'] if r['selector'] == 'learned']
  assert [r['k'] for r in rows] == [1, 2] and all(0.0 <= r['recall_oracle'] <= 1.0 for r in rows)
  for r in diagnosis_test.read_records(str(tmp_path / 'diag')):
    for k in (1, 2):
      assert r['selections']['learned'][str(k)] == selector_model.select(r['scores']['learned'], k).tolist()
  with pytest.raises(ValueError, match='needs selector_checkpoint'):
    keyframe_diagnosis.run(diagnosis_test.make_config(checkpoints_dir, selectors='learned', ks='1', sensitive_k=1),
                           str(tmp_path / 'bad'))
