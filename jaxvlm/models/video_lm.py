"""What the video language models here (LLaVA-OneVision, Qwen2.5-VL) share around the Qwen2 decoder:
filling the video slots of a prompt, the full-prompt forward, the output head, and the decoder seen as a text LM.

Each takes the model module (inside its own method, so its submodules are bound) and needs only
`model.language_model` (a qwen2.Qwen2Model), `model.decode`, `model.config.text`,
`model.config.tie_word_embeddings` and, when not tied, `model.lm_head`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvlm.models import qwen2


def fill_video_slots(
  embeds: jnp.ndarray, input_ids: jnp.ndarray, video: jnp.ndarray, video_token_id: int
) -> jnp.ndarray:
  """embeds [B, S, D] with the k-th video slot (input_ids == video_token_id) of each row replaced by the
  k-th row of video [B, N, D]; each row must hold exactly N slots (not checked: traced)."""
  video = video.astype(embeds.dtype)
  is_video = input_ids == video_token_id
  # Rank of each slot within its row; clipped so non-slot positions gather something harmless.
  rank = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, video.shape[1] - 1)
  gathered = jnp.take_along_axis(video, rank[..., None], axis=1)
  return nn.with_logical_constraint(jnp.where(is_video[..., None], gathered, embeds), ('batch', 'length', 'act_embed'))


def prompt_forward(model: Any, embeds: jnp.ndarray, positions: jnp.ndarray, meta, spec, return_hidden_states: bool):
  """A whole prompt embeds [B, S, D] through `model.decode` into a fresh cache of S slots written from 0
  (queries and keys share `meta`)."""
  b, s = embeds.shape[:2]
  cache = qwen2.KVCache.empty(model.config.text, b, s, embeds.dtype)
  return model.decode(embeds, positions, meta, cache, meta, jnp.zeros((b,), jnp.int32), spec, return_hidden_states)


def output_logits(model: Any, hidden: jnp.ndarray) -> jnp.ndarray:
  """hidden [..., D] (final-normed) -> logits [..., V] in float32, through the tied embedding or lm_head."""
  if model.config.tie_word_embeddings:
    out = model.language_model.embed_tokens.attend(hidden)
  else:
    out = model.lm_head(hidden)
  return out.astype(jnp.float32)


def language_model_view(model: Any, params: dict) -> tuple[qwen2.Qwen2ForCausalLM, dict]:
  """The decoder + head of a video LM as a `Qwen2ForCausalLM` (its text config, M-RoPE sections
  included) and its params (no copies)."""
  lm = qwen2.Qwen2ForCausalLM(model.config.text, dtype=model.dtype)
  lm_params = {'model': params['language_model']}
  if 'lm_head' in params:
    lm_params['lm_head'] = params['lm_head']
  return lm, lm_params
