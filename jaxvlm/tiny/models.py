"""The embedded default's two models: a tiny SigLIP and a tiny LLaVA-OneVision, as Hugging Face config
dicts with the real model types, their processors, builders and initial parameters.

The tiny SigLIP sees 64x64 frames as a 4x4 grid of 16-pixel patches; inside LLaVA-OneVision that grid is
pooled 2x2, so a frame is 4 tokens and a 32-frame video is 32*4+1 = 129 prompt slots. The decoder is a
Qwen2 of 8 layers (enough for the knockout settings: global-1 in steps of 2, windows of 4).
"""

from __future__ import annotations

import math
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2, siglip
from jaxvlm.processor import SiglipProcessor, VideoProcessor
from jaxvlm.tiny.tokenizer import CHAT_TEMPLATE

IMAGE_SIZE = 64
PIXEL_CONFIG = {
  'size': {'height': IMAGE_SIZE, 'width': IMAGE_SIZE},
  'resample': 3,
  'image_mean': [0.5, 0.5, 0.5],
  'image_std': [0.5, 0.5, 0.5],
  'rescale_factor': 1 / 255,
  'do_resize': True,
  'do_rescale': True,
  'do_normalize': True,
  'do_convert_rgb': True,
}
CAPTION_LENGTH = 16  # SigLIP text length (captions are at most 13 words)
VISION: dict[str, Any] = dict(
  hidden_size=96,
  intermediate_size=384,
  num_hidden_layers=4,
  num_attention_heads=4,
  image_size=IMAGE_SIZE,
  patch_size=16,
  hidden_act='gelu_pytorch_tanh',
  layer_norm_eps=1e-6,
)
SIGLIP_TEXT = dict(
  hidden_size=96,
  intermediate_size=384,
  num_hidden_layers=2,
  num_attention_heads=4,
  max_position_embeddings=CAPTION_LENGTH,
  hidden_act='gelu_pytorch_tanh',
  layer_norm_eps=1e-6,
)
# Two heads of 32 dims and RoPE base 1e6 (as Qwen2's real checkpoints): a question or option token
# must find a few matching video tokens ~100 slots back by content, and with 16-dim heads at base
# 1e4 only a few rotary pairs turn slowly enough over that distance to compare content.
DECODER = dict(
  hidden_size=64,
  intermediate_size=192,
  num_hidden_layers=8,
  num_attention_heads=2,
  num_key_value_heads=1,
  max_position_embeddings=1024,
  rms_norm_eps=1e-6,
  rope_theta=1e6,
)


# ----------------------------------------------------------------------------------------------
# Configs (Hugging Face dicts with the real model types) and processors.


def siglip_config_dict(vocab_size: int, pad_id: int) -> dict:
  config = transformers.SiglipConfig(
    vision_config={**VISION, 'vision_use_head': True},
    text_config={
      **SIGLIP_TEXT,
      'vocab_size': vocab_size,
      'pad_token_id': pad_id,
      'bos_token_id': None,
      'eos_token_id': None,
    },
  )
  return config.to_dict()


def llava_config_dict(tokenizer: transformers.PreTrainedTokenizerBase) -> dict:
  video_id, image_id = cast(list[int], tokenizer.convert_tokens_to_ids(['<video>', '<image>']))
  config = transformers.LlavaOnevisionConfig(
    vision_config={**VISION, 'model_type': 'siglip_vision_model', 'vision_use_head': False},
    text_config={
      **DECODER,
      'model_type': 'qwen2',
      'vocab_size': len(tokenizer),
      'tie_word_embeddings': True,
      'pad_token_id': tokenizer.pad_token_id,
    },
    video_token_index=video_id,
    image_token_index=image_id,
    vision_feature_layer=-1,
    vision_feature_select_strategy='full',
    tie_word_embeddings=True,
  )
  return config.to_dict()


def video_processor(tokenizer: transformers.PreTrainedTokenizerBase, config: dict) -> VideoProcessor:
  grid = VISION['image_size'] // VISION['patch_size']
  return VideoProcessor(
    tokenizer,
    CHAT_TEMPLATE,
    '<video>',
    config['video_token_index'],
    tokens_per_frame=math.ceil(grid / 2) ** 2,
    pixel_config=dict(PIXEL_CONFIG),
    processor_config={
      'num_image_tokens': grid * grid,
      'video_token': '<video>',
      'image_token': '<image>',
      'vision_feature_select_strategy': 'full',
    },
  )


def siglip_processor(tokenizer: transformers.PreTrainedTokenizerBase) -> SiglipProcessor:
  return SiglipProcessor(tokenizer, CAPTION_LENGTH, dict(PIXEL_CONFIG))


def build_siglip(config: dict, dtype: Any = jnp.float32) -> siglip.SiglipModel:
  return siglip.SiglipModel(siglip.SiglipConfig.from_hf(config), dtype=dtype)


def build_llava(config: dict, dtype: Any = jnp.float32) -> lo.LlavaOnevisionForConditionalGeneration:
  return lo.LlavaOnevisionForConditionalGeneration(lo.LlavaOnevisionConfig.from_hf(config), dtype=dtype)


def init_siglip(model: siglip.SiglipModel, rng: jax.Array) -> dict:
  """Random params; logit scale/bias start at log(10)/-10 as in the SigLIP paper (few positives)."""
  v, t = model.config.vision_config, model.config.text_config
  params = model.init(
    rng, jnp.zeros((1, v.image_size, v.image_size, 3)), jnp.zeros((1, t.max_position_embeddings), jnp.int32)
  )['params']
  return {
    **params,
    'logit_scale': jnp.full((1,), np.log(10.0), jnp.float32),
    'logit_bias': jnp.full((1,), -10.0, jnp.float32),
  }


def init_llava(
  model: lo.LlavaOnevisionForConditionalGeneration, rng: jax.Array, siglip_params: dict | None = None
) -> dict:
  """Random params (through the forward and the head); the vision tower is copied from a SigLIP's
  vision model when given (its pooling head dropped: LLaVA reads the patch tokens)."""
  cfg = model.config
  n = cfg.num_video_tokens(1)
  ids = jnp.full((1, n + 1), cfg.video_token_id, jnp.int32).at[0, n:].set(0)
  pixels = jnp.zeros((1, 1, cfg.vision.image_size, cfg.vision.image_size, 3))
  positions = jnp.arange(n + 1, dtype=jnp.int32)[None]

  def forward_and_head(module, *args):
    return module.logits(module(*args).hidden[:, -1:])

  params = model.init(
    rng, ids, pixels, positions, qwen2.text_meta(jnp.ones((1, n + 1), bool)), method=forward_and_head
  )['params']
  if siglip_params is not None:
    # Copies: a donated training state must not own the arrays of the other model.
    vision = {k: jax.tree.map(jnp.array, v) for k, v in siglip_params['vision_model'].items() if k != 'head'}
    jax.tree.map(lambda a, b: _check_shape(a, b), params['vision_tower'], vision)
    params = {**params, 'vision_tower': vision}
  return params


def _check_shape(a, b):
  if a.shape != b.shape:
    raise ValueError(f'SigLIP vision param of shape {b.shape} does not fit the LLaVA tower ({a.shape})')


def init_word_head(model: siglip.SiglipModel, vocab_size: int, rng: jax.Array) -> dict:
  """The SigLIP's training-only word head: patch mean [Dv] -> caption-word logits [V]."""
  width = model.config.vision_config.hidden_size
  return {
    'kernel': 0.02 * jax.random.normal(rng, (width, vocab_size), jnp.float32),
    'bias': jnp.zeros((vocab_size,), jnp.float32),
  }
