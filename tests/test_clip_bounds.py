"""A sample's clip [start, end] bounds every frame read (issue 16, item 3): the keyframe diagnosis and
the selector's teacher labelling (both through `candidates.prepare_pool`) analyse only frames inside the
clip, and evidence frames outside it are not counted. On the embedded default (assets/) and an
MVBench-format annotation with clip bounds over synthetic videos (32 frames at 8 fps = 4 s)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from configs import keyframe_diagnosis as diagnosis_config
from configs import train_selector as train_selector_config
from experiments import keyframe_diagnosis as experiment
from jaxvlm import runs
from jaxvlm.data import synthetic
from jaxvlm.keyframes import candidates

FPS, FRAMES = 8, 32


@pytest.fixture(scope='module')
def annotation(tmp_path_factory) -> tuple[str, str]:
  """(ann file, video root): the needle item of a synthetic split cut to the clip [0, 1.9] s (frames
  0..15) with its evidence moved to frames 20, 21 (outside the clip) and 3 (inside)."""
  split = synthetic.ensure(str(tmp_path_factory.mktemp('syn')), num=2, seed=1234, split='test')
  with open(os.path.join(split, 'json', 'needle.json')) as f:
    item = json.load(f)[0]
  item = {**item, 'start': 0.0, 'end': 1.9, 'evidence_frames': [3, 20, 21]}
  ann = str(tmp_path_factory.mktemp('ann') / 'needle.json')
  with open(ann, 'w') as f:
    json.dump([item], f)
  return ann, os.path.join(split, 'videos')


def test_diagnosis_reads_only_the_clip(annotation, tmp_path):
  ann, videos = annotation
  c = diagnosis_config.get_config('runlocal')
  c.benchmark, c.data.ann, c.data.video_root = 'mvbench', ann, videos
  c.num_candidates, c.ks, c.sensitive_k = 4, '1,2', 1
  c.selectors = 'oracle_top,oracle_bottom,uniform'
  c.strip_samples = 0
  workdir = str(tmp_path / 'w')
  experiment.run(c, workdir)
  (record,) = runs.SampleLog(os.path.join(workdir, 'samples.jsonl')).records()
  assert 'error' not in record, record
  cands = np.asarray(record['candidates'])
  assert len(cands) == 4 and cands.max() <= 1.9 * FPS and cands.min() >= 0
  # Frames 20, 21 lie outside the clip: only frame 3 can be evidence, and only if it is a candidate.
  assert set(cands[np.asarray(record['evidence'], int)]) <= {3}


def test_teacher_pool_reads_only_the_clip(annotation):
  ann, videos = annotation
  c = train_selector_config.get_config('runlocal')
  c.benchmark, c.data.ann, c.data.video_root = 'mvbench', ann, videos
  c.num_candidates = 8
  _, _, processor = runs.load_model(c)
  samples, _ = runs.load_samples(c, '/nonexistent-unused')
  (pool,), failed = candidates.prepare_pool(samples, processor, c)
  assert failed == []
  assert pool.indices.max() <= 1.9 * FPS and len(pool.indices) == 8
  whole = candidates.prepare_pool([dataclasses.replace(samples[0], start_s=None, end_s=None)], processor, c)[0][0]
  assert whole.indices.max() > 1.9 * FPS  # without the clip the pool spans the video
  # A clip shorter than the pool is that sample's failure, named as the clip's.
  c.num_candidates = 17
  _, failed = candidates.prepare_pool(samples, processor, c)
  assert failed and 'clip has 16 frames, fewer than the 17 candidates' in failed[0][1]
