"""experiments.train_selector on a synthetic teacher cache (random SigLIP-like embeddings, relevance a
fixed function of them): results contract and learning, resume after a kill == uninterrupted run, and
8 simulated CPU devices (a subprocess: the device count is fixed when jax starts) == 1 device.

`python -m tests.test_train_selector DIR` (with XLA_FLAGS=--xla_force_host_platform_device_count=8)
trains on 8 devices in DIR and prints its run_results (loss curve, validation records, best checkpoint
scores) as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import train_selector as selector_config
from jaxvlm.keyframes import learned as learned_selector
from jaxvlm.keyframes import selector_training
from experiments import train_selector as experiment
from jaxvlm.keyframes import selector_model, teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES, N, D = 48, 8, 16


def write_labels(root: str, seed: int = 0) -> None:
  """Relevance peaks on frames whose embedding aligns with a hidden direction mixed with the text."""
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(D,))
  cache = teacher.TeacherCache(root)
  for i in range(NUM_SAMPLES):
    frames, text = rng.normal(size=(N, D)), rng.normal(size=(D,))
    rel = 3.0 * np.tanh(frames @ (hidden + text) / np.sqrt(D))
    cache.put(teacher.Label(f's{i:03d}', frames, text, rel, np.argsort(-rel)[:2]))


def make_config(teacher_dir: str, **overrides):
  c = selector_config.get_config()
  c.label = False
  c.teacher_dir = teacher_dir
  c.num_candidates = N
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.batch_size = 8
  c.num_steps = 12
  c.warmup_steps = 2
  c.learning_rate = 3e-3
  c.eval_every = 4
  c.checkpoint_every = 4
  c.val_fraction = 0.25
  c.k = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def labels(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp('teacher'))
  write_labels(root)
  return root


@pytest.fixture(scope='module')
def full_run(labels, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, experiment.run(make_config(labels), workdir)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def losses(workdir: str) -> np.ndarray:
  return np.asarray([r['loss'] for r in read_metrics(workdir) if 'loss' in r])


def test_results_contract_and_learning(full_run, labels):
  workdir, summary = full_run
  for name in ('config.json', 'metrics.jsonl', 'summary.json', 'summary.csv', 'loss_curve.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert summary['num_train'] + summary['num_val'] == NUM_SAMPLES and summary['num_val'] > 0
  loss = losses(workdir)
  assert len(loss) == 12 and np.all(np.isfinite(loss))
  assert loss[-4:].mean() < loss[:4].mean()
  evals = [r for r in read_metrics(workdir) if 'val_recall' in r]
  assert [r['step'] for r in evals] == [4, 8, 12]
  assert 0.0 <= summary['final']['val_recall'] <= 1.0
  assert summary['best_step'] == max(evals, key=lambda r: r['val_recall'])['step']
  # The best checkpoint loads back and scores a sample.
  model, params = learned_selector.load_selector(make_config(labels), workdir, N, D)
  label = next(iter(teacher.TeacherCache(labels)))
  s = selector_model.scores(model, params, label.frame_emb, label.text_emb)
  assert s.shape == (N,) and np.all(np.isfinite(s))
  assert len(selector_model.select(s, 2)) == 2


def test_kill_and_restart_reaches_the_same_final_metrics(full_run, labels, tmp_path):
  full_dir, full_summary = full_run
  workdir = str(tmp_path / 'killed')
  # Killed after step 7: checkpoints at 4 only; steps 5-7 are logged but must be redone.
  experiment.run(make_config(labels, stop_after_steps=7), workdir)
  assert len(losses(workdir)) == 7
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 8, "loss": 0.1')  # torn line of the kill
  summary = experiment.run(make_config(labels), workdir)
  np.testing.assert_allclose(losses(workdir), losses(full_dir), rtol=1e-6)
  assert [r['step'] for r in read_metrics(workdir)] == [r['step'] for r in read_metrics(full_dir)]
  for key, value in full_summary['final'].items():
    assert summary['final'][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
  assert summary['best_step'] == full_summary['best_step']


def run_results(workdir: str, labels_dir: str) -> dict:
  """What a run leaves behind: loss curve, every validation record, the best step and the best
  checkpoint's selector scores [M, N] on the held-out labels (JSON-ready)."""
  config = make_config(labels_dir)
  _, val, _, _ = selector_training.load_labels(config, workdir)
  model, params = learned_selector.load_selector(config, workdir, N, D)
  scores = selector_model.batch_scores(model, params, val['frame_emb'], val['text_emb'])
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return {
    'num_devices': summary['num_devices'],
    'losses': losses(workdir).tolist(),
    'evals': [r for r in read_metrics(workdir) if 'val_recall' in r],
    'best_step': summary['best_step'],
    'val_scores': np.asarray(scores).tolist(),
    'workdir': workdir,
  }


@pytest.fixture(scope='module')
def eight(tmp_path_factory):
  """run_results of the same run on 8 simulated devices (data-parallel batch of 8: one row each)."""
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  proc = subprocess.run(
    [sys.executable, '-m', 'tests.test_train_selector', str(tmp_path_factory.mktemp('eight'))],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_give_the_same_loss_curve_as_one(full_run, eight):
  full_dir, _ = full_run
  assert eight['num_devices'] == 8 and jax.device_count() == 1
  one = losses(full_dir)
  np.testing.assert_allclose(eight['losses'], one, rtol=1e-5, atol=1e-6)
  assert np.ptp(one) > 1e-2  # the curve moves, so agreement is not a constant twice


def test_eight_devices_give_the_same_validation_metrics_and_best_checkpoint(full_run, labels, eight):
  full_dir, _ = full_run
  one = run_results(full_dir, labels)
  assert eight['best_step'] == one['best_step']
  assert [r['step'] for r in eight['evals']] == [r['step'] for r in one['evals']] == [4, 8, 12]
  for got, want in zip(eight['evals'], one['evals']):
    assert set(got) == set(want)
    for key, value in want.items():
      assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (want['step'], key)
  # The best checkpoints rank the held-out frames alike. Scores are compared up to a per-sample offset:
  # losses and selections are shift-invariant, so the head bias gets only float noise as gradient, which
  # Adam scales to learning-rate-sized steps (8 vs 1 device: offset ~3e-3, centred scores ~1e-6).
  centred = lambda s: np.asarray(s) - np.mean(s, axis=-1, keepdims=True)
  np.testing.assert_allclose(centred(eight['val_scores']), centred(one['val_scores']), atol=1e-5)
  assert np.ptp(centred(one['val_scores'])) > 1e-2
  # The 8-device checkpoint also loads on this 1-device process and scores as it did there.
  np.testing.assert_allclose(run_results(eight['workdir'], labels)['val_scores'], eight['val_scores'], atol=1e-6)


def test_empty_teacher_cache_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match='0 train and 0 validation labels'):
    experiment.run(make_config(str(tmp_path / 'empty')), str(tmp_path / 'run'))


def main(workdir: str) -> None:
  labels_dir = os.path.join(workdir, 'teacher')
  write_labels(labels_dir)
  experiment.run(make_config(labels_dir), os.path.join(workdir, 'run'))
  print(json.dumps(run_results(os.path.join(workdir, 'run'), labels_dir)))


if __name__ == '__main__':
  main(sys.argv[1])
