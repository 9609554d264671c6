"""experiments.keyframe_diagnosis end to end on tiny random LLaVA-OneVision and SigLIP checkpoints and a
small synthetic split: results contract, consistency of the k-frame path, resume, bad configs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import transformers

from configs import keyframe_diagnosis as diagnosis_config
from experiments import keyframe_diagnosis as experiment
from jaxvlm.keyframes import diagnosis
from tests import test_processor

NUM_SAMPLES = 4
NUM_CANDIDATES = 4
KS = (1, 4)


def write_random_siglip_checkpoint(siglip) -> str:
  """A tiny random SigLIP saved with transformers, plus tokenizer and pixel config."""
  tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
  sig_config = transformers.SiglipConfig(
    vision_config=dict(tiny, image_size=28, patch_size=7),
    text_config=dict(tiny, vocab_size=64, max_position_embeddings=24, pad_token_id=0),
  )
  transformers.SiglipModel(sig_config).save_pretrained(siglip)
  test_processor.make_tokenizer(None).save_pretrained(siglip)
  with open(os.path.join(siglip, 'preprocessor_config.json'), 'w') as f:
    json.dump(test_processor.PIXELS, f)
  return str(siglip)


@pytest.fixture(scope='module')
def checkpoints_dir(tmp_path_factory) -> tuple[str, str]:
  llava = test_processor.write_random_llava_checkpoint(tmp_path_factory.mktemp('llava'))
  return str(llava), write_random_siglip_checkpoint(tmp_path_factory.mktemp('siglip'))


def make_config(ckpts, **overrides):
  c = diagnosis_config.get_config()
  c.checkpoint, c.siglip_checkpoint = ckpts
  c.data.num = NUM_SAMPLES
  c.num_candidates = NUM_CANDIDATES
  c.ks = ','.join(map(str, KS))
  c.sensitive_k = 1
  c.batch_size = 2
  c.strip_samples = 2
  c.tail_multiple = 8
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def full_run(checkpoints_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  summary = experiment.run(make_config(checkpoints_dir), workdir)
  return workdir, summary


def read_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_results_contract(full_run):
  workdir, summary = full_run
  for name in (
    'config.json',
    'samples.jsonl',
    'summary.json',
    'summary.csv',
    'accuracy_vs_k.png',
    'recall_vs_k.png',
    'frame_strips.png',
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  h = summary['header']
  assert h['num_samples'] == NUM_SAMPLES and h['num_failed'] == 0
  names = diagnosis_config.SELECTORS.split(',')
  assert [(r['selector'], r['k']) for r in summary['rows']] == [(n, k) for n in names for k in KS]
  for r in summary['rows']:
    assert 0.0 <= r['accuracy'] <= 1.0 and 0.0 <= r['recall_oracle'] <= 1.0, r
    assert 0.0 <= r['recall_evidence'] <= 1.0, r  # the synthetic world has evidence frames
  assert all(r['recall_oracle'] == 1.0 for r in summary['rows'] if r['selector'] == 'oracle_top')
  assert 0.0 <= h['frame_sensitive_share'] <= 1.0 and set(h['spearman_vs_causal']) >= {'siglip_q', 'attention'}
  with open(os.path.join(workdir, 'summary.csv')) as f:
    assert len(f.read().strip().splitlines()) == len(names) * len(KS) + 1
  table = diagnosis.format_table(summary)
  assert all(n in table for n in names)
  # Intervals, change against all candidates, McNemar p; per-task score rows for every condition.
  for r in summary['rows']:
    assert r['accuracy_low'] <= r['accuracy'] <= r['accuracy_high'] and 0.0 <= r['mcnemar_p'] <= 1.0, r
    assert r['change'] == pytest.approx(r['accuracy'] - h['clean_accuracy'])
  assert h['clean_accuracy_low'] <= h['clean_accuracy'] <= h['clean_accuracy_high']
  tasks = {r['task'] for r in read_records(workdir)}
  groups = {(s['group_kind'], s['group']) for s in h['scores']}
  assert groups == {('overall', 'overall')} | {('task', t) for t in tasks}
  conditions = {s['condition'] for s in h['scores']}
  assert conditions == {'clean', 'text_only'} | {diagnosis.condition_name(n, k) for n in names for k in KS}
  with open(os.path.join(workdir, 'summary_scores.csv')) as f:
    assert len(f.read().strip().splitlines()) == len(h['scores']) + 1
  assert not os.path.exists(os.path.join(workdir, 'lmms_eval'))  # lmms-eval has no synthetic task


def test_records_hold_valid_selections_and_scores(full_run):
  workdir, _ = full_run
  records = read_records(workdir)
  assert len(records) == NUM_SAMPLES == len({r['id'] for r in records})
  for r in records:
    for name, scores in r['scores'].items():
      assert len(scores) == NUM_CANDIDATES and np.all(np.isfinite(scores)), name
    assert 0 < min(r['scores']['siglip_q']) and max(r['scores']['siglip_q']) < 1
    for name, per_k in r['selections'].items():
      for k, idx in per_k.items():
        assert len(idx) == int(k) and np.all(np.diff(idx) > 0) and 0 <= min(idx) and max(idx) < NUM_CANDIDATES
    assert np.asarray(r['attention_per_layer']).shape == (2, NUM_CANDIDATES)


def test_all_frames_selected_reproduces_the_clean_answer(full_run):
  """uniform at k = N keeps every candidate: its k-frame prompt is the oracle's clean prompt."""
  workdir, _ = full_run
  for r in read_records(workdir):
    assert r['selections']['uniform'][str(NUM_CANDIDATES)] == list(range(NUM_CANDIDATES))
    np.testing.assert_allclose(r['k_logp']['uniform'][str(NUM_CANDIDATES)], r['clean'], atol=1e-5)


def test_rerun_resumes_without_duplicates_and_gives_the_same_summary(checkpoints_dir, full_run, tmp_path):
  full_dir, _ = full_run
  workdir = str(tmp_path / 'resumed')
  experiment.run(make_config(checkpoints_dir, max_samples=2), workdir)
  with open(os.path.join(workdir, 'samples.jsonl'), 'a') as f:
    f.write('{"id": "torn-by-the-kill", "scores": [0.1')
  experiment.run(make_config(checkpoints_dir), workdir)
  ids = [r['id'] for r in read_records(workdir)]
  assert len(ids) == NUM_SAMPLES == len(set(ids))
  with open(os.path.join(workdir, 'summary.json')) as f, open(os.path.join(full_dir, 'summary.json')) as g:
    got, want = json.load(f)['rows'], json.load(g)['rows']
  for a, b in zip(got, want):
    for key in ('accuracy', 'recall_oracle', 'recall_evidence'):
      assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), (a['selector'], a['k'], key)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('selectors', 'siglip_q,clip', "selectors='siglip_q,clip': unknown 'clip'"),
    ('ks', '1,9', r"ks='1,9': \[9\] outside 1..num_candidates=4"),
    ('oracle_layers', '1-3', 'outside the layers 0..1'),
    ('sensitive_k', 3, 'not one of ks'),
  ],
)
def test_bad_config_fails_before_any_sample(checkpoints_dir, tmp_path, field, value, message):
  workdir = str(tmp_path / 'bad')
  with pytest.raises(ValueError, match=message):
    experiment.run(make_config(checkpoints_dir, **{field: value}), workdir)
  assert not os.path.exists(os.path.join(workdir, 'samples.jsonl'))
