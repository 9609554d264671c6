"""LLaVA-OneVision / LLaVA-Video for video input: SigLIP tower -> 2-layer GELU projector -> 2x2 bilinear
pooling per frame -> frame tokens + one image_newline token, merged at the `<video>` token slots of the
prompt -> Qwen2 decoder with an explicit mask (token metadata + optional per-layer knockout rule).

Letters: B batch, F frames, P patches per frame (grid p x p), t pooled tokens per frame (grid q x q,
q = ceil(p / 2)), S prompt slots, D text hidden size, L decoder layers, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm.models import qwen2, video_lm
from jaxvlm.models.attention import LayerRule, TokenMeta
from jaxvlm.models.siglip import SiglipVisionConfig, SiglipVisionTransformer


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
  vision: SiglipVisionConfig
  text: qwen2.Qwen2Config
  video_token_id: int
  image_token_id: int | None  # read from the config, unused (the models take video only)
  vision_feature_layer: int | tuple[int, ...] = -1
  vision_feature_select_strategy: str = 'full'
  projector_bias: bool = True
  tie_word_embeddings: bool = False

  @classmethod
  def from_hf(cls, d: dict) -> 'LlavaOnevisionConfig':
    if d.get('projector_hidden_act', 'gelu') != 'gelu':
      raise ValueError(f"projector_hidden_act {d['projector_hidden_act']!r} is not supported (only 'gelu')")
    strategy = d.get('vision_feature_select_strategy', 'full')
    if strategy not in ('full', 'default'):
      raise ValueError(f'vision_feature_select_strategy {strategy!r} is not one of full, default')
    layer = d.get('vision_feature_layer', -1)
    text = dict(d['text_config'])
    tie = bool(d.get('tie_word_embeddings', text.get('tie_word_embeddings', False)))
    text['tie_word_embeddings'] = tie
    # The text config first: an M-RoPE (Qwen2.5-VL) decoder is the wrong family, whatever else is missing.
    text_config = qwen2.Qwen2Config.from_hf(text)
    video_token_id = d.get('video_token_index', d.get('video_token_id'))
    if video_token_id is None:
      raise ValueError(
        'config has no video_token_index (or video_token_id): the model cannot tell where the video features go'
      )
    return cls(
      vision=SiglipVisionConfig.from_hf(d['vision_config']),
      text=text_config,
      video_token_id=video_token_id,
      image_token_id=d.get('image_token_index', d.get('image_token_id')),
      vision_feature_layer=tuple(layer) if isinstance(layer, (list, tuple)) else layer,
      vision_feature_select_strategy=strategy,
      projector_bias=d.get('multimodal_projector_bias', True),
      tie_word_embeddings=tie,
    )

  @property
  def patch_grid(self) -> int:
    return self.vision.image_size // self.vision.patch_size

  @property
  def pooled_grid(self) -> int:
    return math.ceil(self.patch_grid / 2)

  @property
  def tokens_per_frame(self) -> int:
    return self.pooled_grid**2

  def num_video_tokens(self, num_frames: int) -> int:
    """Slots of the expanded `<video>` placeholder: pooled tokens of every frame + one image_newline."""
    return num_frames * self.tokens_per_frame + 1


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of 1-D bilinear resampling with half-pixel centres and no antialiasing
  (torch `interpolate(mode='bilinear', align_corners=False)`: source coordinates below 0 clamp to 0)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0, None)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  w = np.zeros((n_out, n_in), np.float64)
  w[np.arange(n_out), lo] += 1 - frac
  w[np.arange(n_out), hi] += frac
  return w.astype(np.float32)


class MultiModalProjector(nn.Module):
  """Vision features [.., Dv] -> text embeddings [.., D]: Linear, GELU (erf), Linear."""

  hidden_size: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden_size, use_bias=self.use_bias, dtype=self.dtype, name='linear_1')(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(self.hidden_size, use_bias=self.use_bias, dtype=self.dtype, name='linear_2')(x)


@struct.dataclass
class LlavaOutput:
  """hidden: [B, T, D] final-normed decoder output; cache: the KV cache after this call;
  hidden_states: [L+1, B, T, D] input of every layer (and the last layer's output) or None."""

  hidden: jnp.ndarray
  cache: qwen2.KVCache
  hidden_states: jnp.ndarray | None = None


class LlavaOnevisionForConditionalGeneration(nn.Module):
  """Video path of LLaVA-OneVision. Params: vision_tower, multi_modal_projector, language_model,
  image_newline [D], lm_head (absent when the word embeddings are tied)."""

  config: LlavaOnevisionConfig
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.vision_tower = SiglipVisionTransformer(cfg.vision, dtype=self.dtype)
    self.multi_modal_projector = MultiModalProjector(cfg.text.hidden_size, cfg.projector_bias, self.dtype)
    self.language_model = qwen2.Qwen2Model(cfg.text, dtype=self.dtype)
    self.image_newline = self.param('image_newline', nn.initializers.normal(1.0), (cfg.text.hidden_size,))
    if not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.text.vocab_size, use_bias=False, dtype=self.dtype)

  def tower_features(self, pixel_values_videos: jnp.ndarray) -> jnp.ndarray:
    """pixel_values_videos [B, F, H, W, C] (normalized) -> the selected vision-tower features
    [B, F, P, Dv] (P patches per frame), before the projector."""
    cfg = self.config
    b, f = pixel_values_videos.shape[:2]
    out = self.vision_tower(pixel_values_videos.reshape((b * f,) + pixel_values_videos.shape[2:]))
    layers = cfg.vision_feature_layer
    if isinstance(layers, int):
      feats = out.hidden_states[layers]
    else:
      feats = jnp.concatenate([out.hidden_states[i] for i in layers], axis=-1)
    if cfg.vision_feature_select_strategy == 'default':
      feats = feats[:, 1:]
    return feats.reshape((b, f) + feats.shape[1:])

  def project_video(self, tower_features: jnp.ndarray) -> jnp.ndarray:
    """tower_features [B, F, P, Dv] -> video slot embeddings [B, F*t + 1, D] (projected, pooled,
    image_newline last)."""
    cfg = self.config
    b, f = tower_features.shape[:2]
    feats = self.multi_modal_projector(tower_features.reshape((b * f,) + tower_features.shape[2:]))
    feats = nn.with_logical_constraint(feats, ('batch', 'length', 'act_embed'))  # [BF, P, D]
    p, q = cfg.patch_grid, cfg.pooled_grid
    grid = feats.reshape(b * f, p, p, -1)
    pool = jnp.asarray(bilinear_matrix(p, q), grid.dtype)
    pooled = jnp.einsum('yh,xw,nhwd->nyxd', pool, pool, grid)  # [BF, q, q, D]
    frames = pooled.reshape(b, f * q * q, -1)
    newline = jnp.broadcast_to(self.image_newline.astype(frames.dtype), (b, 1, frames.shape[-1]))
    return jnp.concatenate([frames, newline], axis=1)

  def video_features(self, pixel_values_videos: jnp.ndarray) -> jnp.ndarray:
    """pixel_values_videos [B, F, H, W, C] (normalized) -> video slot embeddings [B, F*t + 1, D]."""
    return self.project_video(self.tower_features(pixel_values_videos))

  def embed(
    self, input_ids: jnp.ndarray, pixel_values_videos: jnp.ndarray | None, tower_features: jnp.ndarray | None = None
  ) -> jnp.ndarray:
    """input_ids [B, S] -> embeddings [B, S, D] with the video slots filled in order (row by row),
    from pixels or from precomputed `tower_features` [B, F, P, Dv] (a frozen tower's output).

    Each row must hold exactly `num_video_tokens(F)` `<video>` slots when video is given.
    """
    embeds = self.language_model.embed(input_ids)
    if tower_features is not None:
      video = self.project_video(tower_features)
    elif pixel_values_videos is not None:
      video = self.video_features(pixel_values_videos)
    else:
      return embeds
    # k-th video slot of a row takes the k-th video embedding [B, N, D] of that row.
    return video_lm.fill_video_slots(embeds, input_ids, video, self.config.video_token_id)

  def decode(
    self,
    embeds: jnp.ndarray,
    positions: jnp.ndarray,
    q_meta: TokenMeta,
    cache: qwen2.KVCache,
    k_meta: TokenMeta,
    write_index: jnp.ndarray,
    spec: LayerRule | None = None,
    return_hidden_states: bool = False,
  ) -> LlavaOutput:
    """Runs the decoder on T new tokens written at `write_index` [B] of the cache (see qwen2.Qwen2Model)."""
    hidden, cache, states = self.language_model(
      embeds, positions, q_meta, cache, k_meta, write_index, spec=spec, return_hidden_states=return_hidden_states
    )
    return LlavaOutput(hidden, cache, states)

  def __call__(
    self,
    input_ids: jnp.ndarray,
    pixel_values_videos: jnp.ndarray | None,
    positions: jnp.ndarray,
    meta: TokenMeta,
    spec: LayerRule | None = None,
    return_hidden_states: bool = False,
    tower_features: jnp.ndarray | None = None,
  ) -> LlavaOutput:
    """Full forward of a prompt batch: input_ids [B, S], pixels [B, F, H, W, C] (or None with
    tower_features [B, F, P, Dv]), positions [B, S], meta: TokenMeta [B, S] (index, valid, group,
    frame), spec: per-layer rule [L, ...] or None."""
    embeds = self.embed(input_ids, pixel_values_videos, tower_features)
    return video_lm.prompt_forward(self, embeds, positions, meta, spec, return_hidden_states)

  def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
    """hidden [..., D] (final-normed) -> logits [..., V] in float32."""
    return video_lm.output_logits(self, hidden)


def param_shapes(model: LlavaOnevisionForConditionalGeneration, num_frames: int = 1, prompt_len: int = 1) -> dict:
  """The param tree of `model` as ShapeDtypeStructs (no memory), from a dummy video prompt run through
  the forward AND the output head (`__call__` alone never touches `lm_head`)."""
  cfg = model.config
  n = cfg.num_video_tokens(num_frames)
  s = n + prompt_len
  ids = jnp.full((1, s), cfg.video_token_id, jnp.int32).at[0, n:].set(0)
  pixels = jnp.zeros((1, num_frames, cfg.vision.image_size, cfg.vision.image_size, cfg.vision.num_channels))
  positions = jnp.arange(s, dtype=jnp.int32)[None]
  meta = qwen2.text_meta(jnp.ones((1, s), bool))

  def forward_and_head(module, *args):
    return module.logits(module(*args).hidden[:, -1:])

  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), ids, pixels, positions, meta, method=forward_and_head)
  )
  return variables['params']


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


language_model_view = video_lm.language_model_view  # the decoder + head as a Qwen2ForCausalLM


def generate(
  model: LlavaOnevisionForConditionalGeneration,
  params: dict,
  input_ids: jnp.ndarray,
  pixel_values_videos: jnp.ndarray,
  positions: jnp.ndarray,
  meta: TokenMeta,
  max_new_tokens: int,
  **kwargs,
) -> jnp.ndarray:
  """Greedy decoding of video prompts input_ids [B, S] (padding marked in `meta`) with the explicit KV
  cache -> new tokens [B, max_new_tokens]. kwargs: spec, eos_token_id, pad_token_id."""
  embeds = jax.jit(lambda p, i, v: model.apply({'params': p}, i, v, method='embed'))(
    params, input_ids, pixel_values_videos
  )
  lm, lm_params = language_model_view(model, params)
  return qwen2.generate_from_embeds(lm, lm_params, embeds, positions, meta, max_new_tokens, **kwargs)
