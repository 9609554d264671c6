"""What every config shares, written once: the hub ids of the presets, the embedded default's paths,
and the parsing of `get_config(arg)`'s argument ('preset[,runlocal]')."""

from __future__ import annotations

from ml_collections import config_dict

# The embedded default (assets/, trained by experiments.train_synthetic).
TINY_LLAVA = 'assets/llava_ov_tiny'
TINY_SIGLIP = 'assets/siglip_tiny'

# Video-LLM presets -> Hugging Face hub ids (downloaded when online, or a local directory instead).
HUB = {
  'llava_ov_0_5b': 'llava-hf/llava-onevision-qwen2-0.5b-ov-hf',
  'llava_ov_7b': 'llava-hf/llava-onevision-qwen2-7b-ov-hf',
  'llava_ov_72b': 'llava-hf/llava-onevision-qwen2-72b-ov-hf',
  'llava_video_7b': 'llava-hf/LLaVA-Video-7B-Qwen2-hf',
  'qwen2_5_vl_7b': 'Qwen/Qwen2.5-VL-7B-Instruct',
}
# Qwen2.5-VL takes any frame size (multiples of 28); a run fixes one so shapes are static. 448 x 448 gives
# 16 x 16 = 256 tokens per temporal patch (LLaVA-OneVision: 196 per frame). runlocal shrinks it.
FRAME_SIZE = {'qwen2_5_vl_7b': '448,448'}
RUNLOCAL_FRAME_SIZE = '112,112'
# The keyframe scorer next to a hub Video-LLM.
SIGLIP_HUB = 'google/siglip-so400m-patch14-384'
# Where a hub preset looks for MVBench until --config.data.ann / --config.data.video_root say otherwise;
# the other keys are the optional loader arguments of other benchmarks (unset: '' / False), so
# --config.benchmark=egoschema --config.data.answers_json=... works on the locked config (README).
MVBENCH_DATA = {
  'ann': 'data/mvbench/json',
  'video_root': 'data/mvbench/video',
  'answers_json': '',
  'subset_only': False,
  'video_map_json': '',
}


def parse_arg(arg: str | None, presets) -> tuple[str, bool]:
  """'preset[,runlocal]' (or None) -> (preset, runlocal); the preset must be 'default' or in `presets`."""
  parts = [p for p in (arg or 'default').split(',') if p]
  preset = next((p for p in parts if p != 'runlocal'), 'default')
  if preset != 'default' and preset not in presets:
    raise ValueError(f'unknown preset {preset!r}; expected default or one of {sorted(presets)}')
  return preset, 'runlocal' in parts


def mvbench_data() -> config_dict.ConfigDict:
  return config_dict.ConfigDict(dict(MVBENCH_DATA))


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> config_dict.ConfigDict:
  """`config.mesh`: devices 'local' (each host its own mesh and the whole model; the samples are split
  between hosts) or 'global' (one mesh over every host's devices: weights split over fsdp/tensor across
  hosts, every host runs every batch), and the (data, fsdp, tensor) sizes (-1: the rest)."""
  return config_dict.ConfigDict({'devices': 'local', 'data': data, 'fsdp': fsdp, 'tensor': tensor})


def frame_size(preset: str, runlocal: bool) -> str:
  """The config's frame_size of a preset: 'H,W' for Qwen2.5-VL, '' (the checkpoint's own) otherwise."""
  if preset not in FRAME_SIZE:
    return ''
  return RUNLOCAL_FRAME_SIZE if runlocal else FRAME_SIZE[preset]


def synthetic_data(split: str, num: int, seed: int) -> config_dict.ConfigDict:
  """The synthetic split generated under the workdir (split, num, seed). data.ann / data.video_root are
  there (empty) so that `--config.benchmark=mvbench --config.data.ann=... --config.data.video_root=...`
  points the default preset at a benchmark; with benchmark=synthetic, data.ann=DIR reads a split written
  by experiments.make_synthetic instead of generating one."""
  return config_dict.ConfigDict({**MVBENCH_DATA, 'ann': '', 'video_root': '', 'split': split, 'num': num, 'seed': seed})


def add_run_fields(c: config_dict.ConfigDict, retry: bool = True) -> None:
  """How a rerun treats its workdir (jaxvlm.runs.prepare_workdir): fresh=True discards the results
  there (a workdir is bound to the config that wrote it; a rerun with a config that changes results
  refuses otherwise); retry_failures reruns the samples recorded as failed."""
  c.fresh = False
  if retry:
    c.retry_failures = True
