"""The experiments on Qwen2.5-VL: the `qwen2_5_vl_7b,runlocal` knockout and keyframe-diagnosis runs and
`experiments.score`, end to end on a tiny random Qwen2.5-VL checkpoint written with transformers (a
synthetic split stands in for MVBench). The sample path (frames -> patches, prompt, M-RoPE positions)
is checked against transformers' own forward, which derives its positions itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from ml_collections import config_dict

from configs import keyframe_diagnosis as diagnosis_config
from configs import knockout as knockout_config
from experiments import keyframe_diagnosis as diagnosis_experiment
from experiments import knockout as knockout_experiment
from jaxvlm import runs, video
from jaxvlm.data import synthetic
from jaxvlm.qwen2_5_vl_processor import Qwen25VLProcessor
from tests import test_keyframe_diagnosis as tkd
from tests import test_qwen2_5_vl as tq
from tests import test_qwen2_5_vl_checkpoints as tqc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LAYERS = 4  # the preset's fine-grained window of 4 fits exactly once
FRAME_SIZE = '16,16'  # patch 4, merge 2: 2 x 2 merged tokens per temporal patch
SYNTHETIC = {'split': 'test', 'num': 3, 'seed': 1234}


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
  return tqc.write_random_qwen_checkpoint(tmp_path_factory.mktemp('qwen'), num_layers=NUM_LAYERS)


def tiny_run(config, checkpoint: str, **overrides):
  """A hub preset's runlocal config pointed at the tiny checkpoint and a synthetic split."""
  config.checkpoint = checkpoint
  config.benchmark = 'synthetic'
  config.data = config_dict.ConfigDict(SYNTHETIC)
  config.frame_size = FRAME_SIZE
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def hf_option_logprobs(checkpoint: str, prompt, patches: np.ndarray, seconds: float, letter_ids) -> np.ndarray:
  """log p(option letters) at the last prompt slot under transformers' Qwen2.5-VL, which builds its own
  M-RoPE positions from video_grid_thw and second_per_grid_ts."""
  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()
  ids = prompt.input_ids[None]
  t, hm, wm = patches.shape[:3]
  inputs = dict(
    input_ids=torch.from_numpy(ids).long(),
    attention_mask=torch.ones_like(torch.from_numpy(ids)),
    mm_token_type_ids=torch.from_numpy(np.where(ids == tq.VIDEO_ID, 2, 0)).int(),
    pixel_values_videos=torch.from_numpy(patches.reshape(-1, patches.shape[-1])),
    video_grid_thw=torch.tensor([[t, hm * tq.MERGE, wm * tq.MERGE]]),
    second_per_grid_ts=torch.tensor([seconds], dtype=torch.float32),
  )
  with torch.no_grad():
    logits = hf(**inputs).logits[0, -1]
  return torch.log_softmax(logits, -1).numpy()[np.asarray(letter_ids)]


def test_presets_name_the_hub_model_and_a_fixed_frame_size():
  for get in (knockout_config.get_config, diagnosis_config.get_config):
    c = get('qwen2_5_vl_7b')
    assert c.checkpoint == 'Qwen/Qwen2.5-VL-7B-Instruct' and c.frame_size == '448,448' and c.benchmark == 'mvbench'
    assert get('qwen2_5_vl_7b,runlocal').frame_size == '112,112'
    assert get('llava_ov_7b').frame_size == '' == get().frame_size


@pytest.fixture(scope='module')
def knockout_run(checkpoint, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('knockout'))
  config = tiny_run(knockout_config.get_config('qwen2_5_vl_7b,runlocal'), checkpoint)
  return config, workdir, knockout_experiment.run(config, workdir)


def test_knockout_runlocal_end_to_end(knockout_run):
  config, workdir, summary = knockout_run
  for name in (
    'config.json',
    'samples.jsonl',
    'summary.json',
    'summary.csv',
    'global2_performance_ratio.png',
    'fine_accuracy_change.png',
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert summary['header']['num_samples'] == SYNTHETIC['num'] and summary['header']['num_failed'] == 0
  # runlocal: global2 + one window of 4 over the 4 layers, x LV / VT / VS.
  assert len(summary['rows']) == 6
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    records = [json.loads(line) for line in f]
  # 4 frames -> 2 temporal patches: Video Temporal has edges to remove, so it moves the answer.
  for r in records:
    clean = np.asarray(r['clean'])
    for kind in ('LV', 'VT', 'VS'):
      assert np.abs(np.asarray(r['specs'][f'global2/{kind}/0-3']) - clean).max() > 1e-6, kind


def test_knockout_clean_scores_equal_transformers_on_the_same_sample(checkpoint, knockout_run):
  """The experiment's own sample path (decode, smart-resize to frame_size, patchify, prompt, M-RoPE with
  the clip's second_per_grid_ts) gives the clean log-probs transformers gives on those inputs."""
  config, workdir, _ = knockout_run
  _, _, processor = runs.load_model(config)
  assert isinstance(processor, Qwen25VLProcessor) and processor.frame_size == (16, 16)
  samples, _ = runs.load_samples(config, workdir)
  prepared, failed = runs.prepare(samples[:1], processor, config)
  assert not failed
  p = prepared[0]
  assert p.pixels.shape[:3] == (config.num_frames // 2, 2, 2) and p.prompt.num_frames == 2
  assert p.prompt.positions.shape == (3, len(p.prompt.input_ids))
  frames = video.sample_frames(p.sample.video, config.num_frames)
  seconds = processor.seconds_per_patch(frames.timestamps_s)  # 2 x the clip's frame spacing
  np.testing.assert_allclose(seconds, 2 * np.mean(np.diff(frames.timestamps_s)))
  ref = hf_option_logprobs(checkpoint, p.prompt, p.pixels, seconds, processor.option_letter_ids(4))
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    record = next(r for r in map(json.loads, f) if r['id'] == p.sample.id)
  err = np.abs(np.asarray(record['clean']) - ref).max()
  print(f'qwen2.5-vl knockout run, clean option log-probs vs transformers: {err:.2e}')
  assert err <= 1e-4
  # The clip's time rule is visible to the check: the keyframe default would score differently.
  wrong = hf_option_logprobs(checkpoint, p.prompt, p.pixels, 1.0, processor.option_letter_ids(4))
  assert np.abs(np.asarray(record['clean']) - wrong).max() > 1e-3


@pytest.fixture(scope='module')
def siglip_checkpoint(tmp_path_factory) -> str:
  return tkd.write_random_siglip_checkpoint(tmp_path_factory.mktemp('siglip'))


@pytest.fixture(scope='module')
def diagnosis_run(checkpoint, siglip_checkpoint, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('diagnosis'))
  config = tiny_run(
    diagnosis_config.get_config('qwen2_5_vl_7b,runlocal'),
    checkpoint,
    siglip_checkpoint=siglip_checkpoint,
    ks='1,2,8',
    tail_multiple=8,
    max_samples=2,
  )
  return config, workdir, diagnosis_experiment.run(config, workdir)


def test_diagnosis_runlocal_end_to_end(diagnosis_run):
  config, workdir, summary = diagnosis_run
  for name in ('config.json', 'samples.jsonl', 'summary.json', 'summary.csv'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert summary['header']['num_samples'] == config.max_samples == 2 and summary['header']['num_failed'] == 0
  names = diagnosis_config.SELECTORS.split(',')
  assert [(r['selector'], r['k']) for r in summary['rows']] == [(n, k) for n in names for k in (1, 2, 8)]
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    records = [json.loads(line) for line in f]
  n = config.num_candidates
  for r in records:
    for name in ('causal', 'attention', 'siglip_q'):
      assert len(r['scores'][name]) == n and np.all(np.isfinite(r['scores'][name])), name
    # Every candidate is its own temporal patch, so the causal oracle tells all 8 apart.
    assert len(set(np.round(r['scores']['causal'], 7))) > n // 2
    # All N candidates selected: the k-frame prompt is the candidate pool's prompt.
    np.testing.assert_allclose(r['k_logp']['uniform'][str(n)], r['clean'], atol=1e-5)


def test_diagnosis_pool_scores_equal_transformers_on_keyframe_patches(checkpoint, diagnosis_run):
  """Candidates as keyframes (each frame duplicated into its own temporal patch, second_per_grid_ts 1):
  transformers gives the clean log-probs the diagnosis recorded."""
  from jaxvlm.keyframes import candidates

  config, workdir, _ = diagnosis_run
  _, _, processor = runs.load_model(config)
  samples, _ = runs.load_samples(config, workdir)
  cands, failed = candidates.prepare_pool(samples[:1], processor, config)
  assert not failed
  c = cands[0]
  assert c.pixels.shape[0] == config.num_candidates == c.prompt.num_frames
  ref = hf_option_logprobs(checkpoint, c.prompt, c.pixels, 1.0, processor.option_letter_ids(4))
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    record = next(r for r in map(json.loads, f) if r['id'] == c.sample.id)
  err = np.abs(np.asarray(record['clean']) - ref).max()
  print(f'qwen2.5-vl diagnosis pool (keyframe patches), clean option log-probs vs transformers: {err:.2e}')
  assert err <= 1e-4


def test_score_cli_on_qwen(checkpoint, tmp_path):
  data = tmp_path / 'video'
  item = synthetic.generate(data, num=1, seed=3, num_frames=16, split='test')[0]
  cmd = [
    sys.executable,
    '-m',
    'experiments.score',
    f'--checkpoint={checkpoint}',
    f'--video={data / "videos" / f"{item.id}.mp4"}',
    '--question=What colour is the ball?',
    '--options=red,blue,green',
    '--num_frames=4',
    f'--frame_size={FRAME_SIZE}',
    '--max_new_tokens=3',
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  assert out['prompt'].count('<|vision_start|><|video_pad|><|vision_end|>') == 1 and 'C. green' in out['prompt']
  assert out['num_video_tokens'] == 2 * 2 * 2 + 2  # 2 temporal patches of 2 x 2 + vision_start / end
  logp = np.array(list(out['option_logprobs'].values()))
  assert set(out['option_logprobs']) == {'A', 'B', 'C'} and np.all(logp < 0)
  assert out['choice'] == 'ABC'[int(logp.argmax())] and isinstance(out['generated'], str)


def test_knockout_sharded_over_two_devices_equals_one(checkpoint, knockout_run, tmp_path):
  """On 2 simulated devices (a subprocess: samples split over data=2, so M-RoPE positions [3, B, S] are
  split on their sample axis) the run records what the 1-device run recorded."""
  _, one_dir, _ = knockout_run
  workdir = tmp_path / 'two'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  script = (
    'import jax; assert jax.device_count() == 2\n'
    'from configs import knockout as kc\n'
    'from experiments import knockout\n'
    'from tests import test_qwen2_5_vl_experiments as t\n'
    f'c = t.tiny_run(kc.get_config("qwen2_5_vl_7b,runlocal"), {checkpoint!r}, batch_size=2)\n'
    'c.mesh.data = 2\n'
    f'knockout.run(c, {str(workdir)!r})\n'
  )
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  read = lambda d: {r['id']: r for r in map(json.loads, open(os.path.join(d, 'samples.jsonl')))}
  one, two = read(one_dir), read(workdir)
  assert sorted(one) == sorted(two) and len(one) == SYNTHETIC['num']
  for sample_id, r in one.items():
    np.testing.assert_allclose(two[sample_id]['clean'], r['clean'], atol=1e-5)
    for name, logp in r['specs'].items():
      np.testing.assert_allclose(two[sample_id]['specs'][name], logp, atol=1e-5, err_msg=name)
