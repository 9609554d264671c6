"""Efficiency run: efficiency plans (exit layer, within-frame layers) x frame budgets x keyframe selectors,
with accuracy, FLOPs, measured prefill time and memory. `get_config('preset')`; append `,runlocal` to
shrink any preset to a CPU smoke run.

Presets: default (the embedded tiny LLaVA-OneVision + tiny SigLIP on the synthetic test split),
llava_ov_0_5b, llava_ov_7b, llava_video_7b (hub ids with SigLIP so400m; MVBench paths set with
--config.data.ann=... --config.data.video_root=...).

Plans (layers 1-based, as the paper): the full model always; `--config.exit_layer=E
--config.intra_frame_layers=M` an explicit one; `--config.knockout_workdir=DIR` the cheapest plan an
experiments.knockout run of the same checkpoint finds within `--config.max_drop` of clean accuracy;
`--config.plans=E:M,E:M` more.
"""

from ml_collections import config_dict

from configs import common, keyframe_diagnosis

# Which plans the presets try besides the chosen one: the paper's proportions (exit after ~64 % of the
# layers, within-frame in the first ~29 %) and the exit alone.
PAPER_PLANS = {
  'default': '5:2,5:0,3:0',
  'llava_ov_0_5b': '15:7,15:0',
  'llava_ov_7b': '18:8,18:0',
  'llava_video_7b': '18:8,18:0',
}


# Efficiency plans (jaxvlm/models/efficient.py) are built for LLaVA-OneVision's decoder and layout only:
# a Qwen2.5-VL preset is refused here, by name, before anything loads.
HUB = {k: v for k, v in keyframe_diagnosis.HUB.items() if k in PAPER_PLANS}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  preset, runlocal = common.parse_arg(arg, HUB)
  c = config_dict.ConfigDict()
  c.checkpoint = common.TINY_LLAVA
  c.siglip_checkpoint = common.TINY_SIGLIP
  c.dtype = 'float32'  # compute dtype; bfloat16 on TPU
  c.benchmark = 'synthetic'
  c.data = common.synthetic_data('test', 100, 1234)
  c.num_frames = 32  # N frames of the full model (the candidate pool of the selectors)
  c.exit_layer = -1  # explicit plan: exit after this layer (1-based, 0..L); -1: none
  c.intra_frame_layers = 0  # explicit plan: within-frame attention in layers 1..M (M <= exit_layer)
  c.knockout_workdir = ''  # experiments.knockout run of this checkpoint: choose the plan from it
  c.max_drop = 0.01  # chosen plan: knockout accuracy within this of clean (0.01 = 1 point)
  c.plans = PAPER_PLANS['default']  # more plans 'E:M,...'
  c.ks = '8,16'  # frame budgets k (the full N is always added)
  c.selectors = 'uniform,siglip'  # + 'learned' with selector_checkpoint
  c.selector_checkpoint = ''  # experiments.train_selector workdir
  c.timing_repeats = 5  # prefill timing: fastest of this many runs per (plan, k)
  c.max_samples = -1  # -1: all
  c.batch_size = 4
  common.add_run_fields(c)  # fresh, retry_failures
  if preset != 'default':
    keyframe_diagnosis.use_hub_preset(c, preset)
    c.plans = PAPER_PLANS[preset]
    c.batch_size = 1
    c.timing_repeats = 3
  if runlocal:
    c.max_samples = 4
    c.num_frames = min(c.num_frames, 8)
    c.ks = '2,4'
    c.plans = '2:1'
    c.dtype = 'float32'
    c.timing_repeats = 1
  return c
