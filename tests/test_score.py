"""experiments.score as a user runs it: a subprocess on a tiny checkpoint and a real mp4."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxvlm.data import synthetic
from tests import test_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def checkpoint_and_video(tmp_path_factory):
  ckpt = test_processor.write_random_llava_checkpoint(tmp_path_factory.mktemp('ckpt'))
  data = tmp_path_factory.mktemp('video')
  item = synthetic.generate(data, num=1, seed=3, num_frames=16, split='test')[0]
  return ckpt, str(data / 'videos' / f'{item.id}.mp4')


def test_score_cli_prints_prompt_tokens_logprobs_and_choice(checkpoint_and_video):
  ckpt, video = checkpoint_and_video
  cmd = [
    sys.executable,
    '-m',
    'experiments.score',
    f'--checkpoint={ckpt}',
    f'--video={video}',
    '--question=What colour is the ball?',
    '--options=red,blue,green',
    '--num_frames=3',
    '--max_new_tokens=4',
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  assert out['prompt'].count('<video>') == 1 and 'A. red' in out['prompt'] and 'C. green' in out['prompt']
  assert out['num_video_tokens'] == 3 * 4 + 1  # 28 px / patch 7 -> 4x4 grid -> 2x2 pooled + newline
  assert set(out['option_logprobs']) == {'A', 'B', 'C'}
  logp = np.array(list(out['option_logprobs'].values()))
  assert np.all(logp < 0) and out['choice'] == 'ABC'[int(logp.argmax())]
  assert isinstance(out['generated'], str)


def test_score_cli_missing_video_is_a_clear_error(checkpoint_and_video, tmp_path):
  ckpt, _ = checkpoint_and_video
  cmd = [
    sys.executable,
    '-m',
    'experiments.score',
    f'--checkpoint={ckpt}',
    f'--video={tmp_path}/nope.mp4',
    '--question=q',
    '--options=a,b',
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and 'video file not found' in proc.stderr
