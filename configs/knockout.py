"""Attention-knockout study. `get_config('preset')` picks a model + benchmark; append `,runlocal`
(e.g. `configs/knockout.py:llava_ov_0_5b,runlocal`) to shrink any preset to a CPU smoke run.

Presets: default (the embedded tiny LLaVA-OneVision on the synthetic test split), llava_ov_0_5b,
llava_ov_7b, llava_ov_72b, llava_video_7b, qwen2_5_vl_7b (hub ids; benchmark paths point at a local
data root that you set with --config.data.ann=... --config.data.video_root=...). Qwen2.5-VL pairs the
num_frames frames into num_frames / 2 temporal patches, the knockout's frames.
"""

from ml_collections import config_dict

from configs.common import HUB, TINY_LLAVA, add_run_fields, frame_size, mesh, mvbench_data, parse_arg, synthetic_data


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  preset, runlocal = parse_arg(arg, HUB)
  c = config_dict.ConfigDict()
  c.checkpoint = TINY_LLAVA
  c.dtype = 'float32'  # compute dtype; bfloat16 on TPU
  c.benchmark = 'synthetic'
  c.data = synthetic_data('test', 100, 1234)
  c.num_frames = 32  # the embedded model sees all 32 frames of a synthetic video
  c.frame_size = ''  # Qwen2.5-VL: 'H,W' every frame is resized to; '': the checkpoint's own
  c.max_samples = -1  # -1: all
  c.batch_size = 4
  c.input_workers = 2  # workers decoding + preprocessing ahead of the model (0: in the loop)
  # 'process' for long videos: thread workers take the GIL between decoded packets and slow the model's
  # thread (the overlap benchmark, docs/results.md). 'thread' by default: a process worker costs a few
  # CPU seconds of start-up (the forkserver imports jaxvlm) and pickles the frames back, which short
  # videos like the embedded default's do not repay.
  c.input_worker_kind = 'thread'
  c.settings = 'global1,global2,fine'
  c.kinds = 'LV,VT,VS'
  c.global1_step = 2
  c.window = 4
  c.window_stride = 1
  c.explicit_layers = ''  # for setting 'explicit', e.g. '3,4,5'
  c.tail_multiple = 32  # tail lengths are rounded up to this (fewer compiled shapes)
  c.spec_chunk = 16  # knockout states per compiled layer step
  c.param_dtype = 'float32'  # weights on the devices; bfloat16 (as stored) for the hub presets
  c.mesh = mesh()  # configs/common.py: devices local|global, data, fsdp, tensor
  add_run_fields(c)  # fresh, retry_failures
  if preset != 'default':
    c.checkpoint = HUB[preset]
    c.dtype = 'bfloat16'
    c.param_dtype = 'bfloat16'
    c.benchmark = 'mvbench'
    c.data = mvbench_data()
    c.num_frames = 32 if preset != 'llava_ov_72b' else 16
    c.batch_size = 1
  c.frame_size = frame_size(preset, runlocal)
  if runlocal:
    c.max_samples = 8
    c.num_frames = min(c.num_frames, 4)
    c.settings = 'global2,fine'
    c.dtype = 'float32'
    c.param_dtype = 'float32'  # a CPU smoke run computes in float32: weights too, not rounded to bf16
  return c
