"""Memory plan of a Video-LLM on a TPU slice (experiments/plan.py). `get_config('preset')`.

Presets: llava_ov_0_5b, llava_ov_7b (default), llava_ov_72b: LLaVA-OneVision with SigLIP so400m
(26 layers used by LLaVA, no pooling head) and the Qwen2 decoder of each size; qwen2_5_vl_7b:
Qwen2.5-VL-7B at the knockout/diagnosis presets' frame size (num_frames frames -> num_frames / 2
temporal patches). Override anything, e.g.
`--config.num_frames=32 --config.tpu=v5p-32 --config.mesh.tensor=4`.

An efficiency plan (jaxvlm.models.efficient, costed by jaxvlm.costs), layers 1-based as in the paper:
`--config.exit_layer=18 --config.intra_frame_layers=8 --config.frames=32`. exit_layer 0 (default) means
no exit (the video stays to the top); frames 0 (default) runs all num_frames.
"""

from ml_collections import config_dict

from configs.common import FRAME_SIZE

SIGLIP_SO400M_IN_LLAVA = dict(
  hidden_size=1152,
  intermediate_size=4304,
  num_hidden_layers=26,
  num_attention_heads=16,
  image_size=384,
  patch_size=14,
  vision_use_head=False,
)
QWEN2 = {
  'llava_ov_0_5b': dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=152000,
    tie_word_embeddings=True,
  ),
  'llava_ov_7b': dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152128,
    tie_word_embeddings=False,
  ),
  'llava_ov_72b': dict(
    hidden_size=8192,
    intermediate_size=29568,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=152128,
    tie_word_embeddings=False,
  ),
}


# Qwen/Qwen2.5-VL-7B-Instruct's config.json (vision tower and decoder with M-RoPE).
QWEN2_5_VL = {
  'qwen2_5_vl_7b': (
    dict(
      depth=32,
      hidden_size=1280,
      intermediate_size=3420,
      num_heads=16,
      in_chans=3,
      out_hidden_size=3584,
      patch_size=14,
      spatial_merge_size=2,
      window_size=112,
      fullatt_block_indexes=[7, 15, 23, 31],
      tokens_per_second=2,
      temporal_patch_size=2,
    ),
    dict(
      hidden_size=3584,
      intermediate_size=18944,
      num_hidden_layers=28,
      num_attention_heads=28,
      num_key_value_heads=4,
      vocab_size=152064,
      tie_word_embeddings=False,
      rms_norm_eps=1e-6,
      rope_scaling={'type': 'mrope', 'mrope_section': [16, 24, 24]},
      rope_theta=1000000.0,
    ),
  ),
}
PRESETS = sorted(QWEN2) + sorted(QWEN2_5_VL)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  preset = arg or 'llava_ov_7b'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; expected one of {PRESETS}')
  c = config_dict.ConfigDict()
  c.model = preset
  if preset in QWEN2_5_VL:
    vision, text = QWEN2_5_VL[preset]
    c.family = 'qwen2_5_vl'
    c.frame_size = FRAME_SIZE[preset]  # 'H,W', multiples of 28 (the runs' fixed size)
  else:
    vision, text = SIGLIP_SO400M_IN_LLAVA, QWEN2[preset]
    c.family = 'llava_onevision'
  c.vision = config_dict.ConfigDict(vision)
  c.text = config_dict.ConfigDict(text)
  c.num_frames = 32
  c.prompt_tokens = 256  # text around the video: system, question, options, answer prefix
  c.batch_size = 1  # samples per step, whole mesh
  c.param_dtype = 'bfloat16'  # weights as held on device for inference (float32 at rest on disk)
  c.dtype = 'bfloat16'  # compute dtype: activations, KV cache, sweep states
  c.sweep_states = True  # the clean run keeps every layer's input (knockout sweep reuse)
  c.tpu = 'v5e-8'
  c.exit_layer = 0  # exit after this layer (1-based); 0: no exit
  c.intra_frame_layers = 0  # layers 1..M keep within-frame attention among video tokens
  c.frames = 0  # frame budget k run of the num_frames (0: all)
  c.prompt_prefix_tokens = 14  # of prompt_tokens, the text before the video (system turn, user header)
  c.mesh = config_dict.ConfigDict({'data': 1, 'fsdp': -1, 'tensor': 1})
  c.host_ram_gib = 0.0  # RAM of one TPU VM host; 0: its machine type's (jaxvlm/memory_plan.py)
  c.recommend = True  # also print the recommended mesh and launch
  c.output = 'text'  # text | launch_flags (just the recommended --config.mesh.* flags)
  return c
