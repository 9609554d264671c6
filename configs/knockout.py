"""Attention-knockout study. `get_config('preset')` picks a model + benchmark; append `,runlocal`
(e.g. `configs/knockout.py:llava_ov_0_5b,runlocal`) to shrink any preset to a CPU smoke run.

Presets: default (the embedded tiny LLaVA-OneVision on the synthetic test split), llava_ov_0_5b,
llava_ov_7b, llava_ov_72b, llava_video_7b (hub ids; benchmark paths point at a local data root that
you set with --config.data.ann=... --config.data.video_root=...).
"""
from ml_collections import config_dict

HUB = {
    'llava_ov_0_5b': 'llava-hf/llava-onevision-qwen2-0.5b-ov-hf',
    'llava_ov_7b': 'llava-hf/llava-onevision-qwen2-7b-ov-hf',
    'llava_ov_72b': 'llava-hf/llava-onevision-qwen2-72b-ov-hf',
    'llava_video_7b': 'llava-hf/LLaVA-Video-7B-Qwen2-hf',
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  parts = [p for p in (arg or 'default').split(',') if p]
  preset = next((p for p in parts if p != 'runlocal'), 'default')
  c = config_dict.ConfigDict()
  c.checkpoint = 'assets/llava_ov_tiny'
  c.dtype = 'float32'                 # compute dtype; bfloat16 on TPU
  c.benchmark = 'synthetic'
  c.data = config_dict.ConfigDict({'split': 'test', 'num': 100, 'seed': 1234})
  c.num_frames = 32                  # the embedded model sees all 32 frames of a synthetic video
  c.max_samples = -1                  # -1: all
  c.batch_size = 4
  c.settings = 'global1,global2,fine'
  c.kinds = 'LV,VT,VS'
  c.global1_step = 2
  c.window = 4
  c.window_stride = 1
  c.explicit_layers = ''              # for setting 'explicit', e.g. '3,4,5'
  c.tail_multiple = 32                # tail lengths are rounded up to this (fewer compiled shapes)
  c.spec_chunk = 16                   # knockout states per compiled layer step
  c.mesh = config_dict.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})  # over this host's devices
  if preset != 'default':
    if preset not in HUB:
      raise ValueError(f'unknown preset {preset!r}; expected default or one of {sorted(HUB)}')
    c.checkpoint = HUB[preset]
    c.dtype = 'bfloat16'
    c.benchmark = 'mvbench'
    c.data = config_dict.ConfigDict({'ann': 'data/mvbench/json', 'video_root': 'data/mvbench/video'})
    c.num_frames = 32 if preset != 'llava_ov_72b' else 16
    c.batch_size = 1
  if 'runlocal' in parts:
    c.max_samples = 8
    c.num_frames = min(c.num_frames, 4)
    c.settings = 'global2,fine'
    c.dtype = 'float32'
  return c
