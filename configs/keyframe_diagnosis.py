"""Keyframe diagnosis (Ok & Lee): do query-guided keyframe samplers pick the frames the Video-LLM needs?
`get_config('preset')` picks a model + benchmark; append `,runlocal` to shrink any preset to a CPU smoke
run.

Presets: default (the embedded tiny LLaVA-OneVision and tiny SigLIP on the synthetic test split),
llava_ov_0_5b, llava_ov_7b, llava_video_7b, qwen2_5_vl_7b (hub ids with SigLIP so400m as the keyframe
scorer; benchmark paths point at a local data root that you set with --config.data.ann=...
--config.data.video_root=...). Qwen2.5-VL sees every candidate (and every selected frame) as its own
temporal patch (jaxvlm/qwen2_5_vl_processor.py).
"""

from ml_collections import config_dict

from configs import common

# The diagnosis and the selector have presets for these hub models (no 72B).
HUB = {k: v for k, v in common.HUB.items() if k != 'llava_ov_72b'}
# Selector name -> what it ranks: the causal oracle (answer-based or answer-free), the attention
# oracle, or SigLIP relevance to the question (q) or to question + options (qo).
SELECTORS = 'oracle_top,oracle_bottom,answer_free_top,attention_top,siglip_q,siglip_qo,bolt,aks,uniform,random'


def use_hub_preset(c: config_dict.ConfigDict, preset: str) -> None:
  """Points `c` at the hub Video-LLM of `preset`, SigLIP so400m and the MVBench paths, in bfloat16."""
  common.parse_arg(preset, HUB)  # raises on an unknown preset
  c.checkpoint = HUB[preset]
  c.siglip_checkpoint = common.SIGLIP_HUB
  c.dtype = 'bfloat16'
  if 'param_dtype' in c:  # the configs whose weights go on a mesh (not configs/efficiency.py)
    c.param_dtype = 'bfloat16'
  c.benchmark = 'mvbench'
  c.data = common.mvbench_data()
  c.frame_size = common.frame_size(preset, runlocal=False)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  preset, runlocal = common.parse_arg(arg, HUB)
  c = config_dict.ConfigDict()
  c.checkpoint = common.TINY_LLAVA
  c.siglip_checkpoint = common.TINY_SIGLIP
  c.dtype = 'float32'  # compute dtype; bfloat16 on TPU
  c.frame_size = ''  # Qwen2.5-VL: 'H,W' every frame is resized to; '': the checkpoint's own
  c.benchmark = 'synthetic'
  c.data = common.synthetic_data('test', 200, 1234)
  c.num_candidates = 32  # candidate pool N (uniform over the video); the oracle prompt sees all
  c.ks = '1,2,4,8'  # frame budgets of the selectors
  c.selectors = SELECTORS
  c.oracle_layers = ''  # frame-knockout layers of the causal oracle: '' = all, 'a-b' (0-based)
  c.attention_layers = ''  # layers averaged by the attention oracle: '' = all, 'a-b'
  c.sensitive_k = 4  # k of the frame-sensitive subset (top-k vs bottom-k)
  c.bolt_alpha = 2.0  # BOLT sharpening power
  c.aks_depth = 4  # AKS maximum split depth
  c.aks_threshold = 0.6  # AKS peakedness threshold (share of the score range)
  c.seed = 0  # random selector (mixed with the sample id)
  c.max_samples = -1  # -1: all
  c.batch_size = 2  # samples per oracle batch
  c.input_workers = 2  # workers decoding candidate pools ahead of the models (0: in the loop)
  c.input_worker_kind = 'thread'  # or 'process' for long videos (configs/knockout.py says why)
  c.tail_multiple = 16  # text-tail lengths are rounded up to this
  c.strip_samples = 4  # samples drawn as frame strips with their scores
  c.selector_checkpoint = ''  # experiments.train_selector workdir, for selector 'learned'
  c.param_dtype = 'float32'  # Video-LLM weights on the devices; bfloat16 for the hub presets
  c.mesh = common.mesh()  # devices local|global, data, fsdp, tensor (configs/common.py)
  common.add_run_fields(c)  # fresh, retry_failures
  if preset != 'default':
    use_hub_preset(c, preset)
    c.batch_size = 1
  if runlocal:
    c.frame_size = common.frame_size(preset, runlocal=True)
    c.max_samples = 4
    c.num_candidates = min(c.num_candidates, 8)
    c.ks = '1,2,4'
    c.sensitive_k = 2
    c.dtype = 'float32'
    c.param_dtype = 'float32'  # a CPU smoke run computes in float32: weights too, not rounded to bf16
  return c
