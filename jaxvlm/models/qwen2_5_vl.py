"""Qwen2.5-VL for video input: vision tower (`qwen2_5_vl_vision`) -> merged video tokens at the
`<|video_pad|>` slots of the prompt -> the Qwen2 decoder with M-RoPE and an explicit mask (token metadata +
optional per-layer knockout rule), as `llava_onevision` does for LLaVA.

Positions are an explicit argument, `[3, B, S]` (temporal, height, width) as in transformers, built on
the host by `rope_index` (equal to transformers' `get_rope_index`):
  * text token: the same value p on all three axes, p = one more than the previous text token, or the
    value the previous video leaves (below); padding slots get 0;
  * video token of temporal patch t at merged grid cell (i, j), the video starting at text position s:
    (s + int(t * tokens_per_second * second_per_grid_ts), s + i, s + j), the product computed in float32
    and truncated, as torch does;
  * text after a video (transformers 5.x rule): continues at s + max(gh, gw) // merge, i.e. the video
    occupies as many positions as its larger merged side, whatever its temporal extent. (4.x continued at
    1 + the largest position of the video, which included the temporal axis.) Temporal positions of a
    long video can therefore exceed the positions of the text after it.
Inside the decoder positions are carried batch-first, [B, S, 3], so every gather along the token axis
(KV-cache writes, output rows, sweep tails) works unchanged; `decoder_positions` converts.

Token layout for the knockout conventions (docs/architecture.md, Conventions): `<|vision_start|>`, the
T x Hm x Wm video pads and `<|vision_end|>` are all Group.VIDEO; a pad's frame is its temporal patch t
(frames 2t and 2t+1 of the sampled video); vision_start and vision_end are video tokens of frame -1
(like LLaVA's image_newline).

Letters: B batch, S prompt slots, T temporal patches, Hm x Wm merged grid, M = merge^2, P = C*tp*p*p
patch features, E text hidden size, L decoder layers, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.models import qwen2, video_lm
from jaxvlm.models.attention import Group, LayerRule, TokenMeta
from jaxvlm.models.llava_onevision import LlavaOutput, count_params  # noqa: F401  (re-exported)
from jaxvlm.models.qwen2_5_vl_vision import Qwen25VisionTransformer, Qwen25VLVisionConfig

DEFAULT_MROPE_SECTION = (16, 24, 24)  # transformers' default when a config names none


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  vision: Qwen25VLVisionConfig
  text: qwen2.Qwen2Config
  video_token_id: int = 151656
  image_token_id: int = 151655
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  tie_word_embeddings: bool = False

  @classmethod
  def from_hf(cls, d: Mapping[str, Any]) -> Qwen25VLConfig:
    """From a transformers config dict: v5 (`text_config` + `vision_config`) or the hub's flat layout
    (text fields at the top level, v4 `rope_scaling: {type: mrope, mrope_section}`)."""
    if 'vision_config' not in d:
      raise ValueError('Qwen2.5-VL config has no vision_config')
    text = dict(d.get('text_config') or {k: v for k, v in d.items() if k != 'vision_config'})
    rope_key = 'rope_parameters' if text.get('rope_parameters') else 'rope_scaling'
    rope = dict(text.get(rope_key) or {})
    rope.setdefault('mrope_section', list(DEFAULT_MROPE_SECTION))
    text[rope_key] = rope
    # transformers' Qwen2.5-VL attention uses hidden_size // heads whatever head_dim says.
    text['head_dim'] = text['hidden_size'] // text['num_attention_heads']
    tie = bool(d.get('tie_word_embeddings', False) or text.get('tie_word_embeddings', False))
    text['tie_word_embeddings'] = tie
    text_config = qwen2.Qwen2Config.from_hf(text, allow_mrope=True)
    if sum(text_config.mrope_section) != text_config.head_dim // 2:
      raise ValueError(
        f'mrope_section {text_config.mrope_section} does not sum to head_dim / 2 = {text_config.head_dim // 2}'
      )
    vision = Qwen25VLVisionConfig.from_hf(d['vision_config'])
    if vision.out_hidden_size != text_config.hidden_size:
      raise ValueError(f'vision out_hidden_size {vision.out_hidden_size} != text hidden_size {text_config.hidden_size}')
    ids = {
      k: d.get(k, getattr(cls, k))
      for k in ('video_token_id', 'image_token_id', 'vision_start_token_id', 'vision_end_token_id')
    }
    return cls(vision=vision, text=text_config, tie_word_embeddings=tie, **ids)

  def merged_grid(self, height: int, width: int) -> tuple[int, int]:
    """Frame size in pixels (multiples of patch * merge) -> (Hm, Wm) merged tokens per side."""
    f = self.vision.factor
    if height % f or width % f:
      raise ValueError(f'frame size {height}x{width} is not a multiple of patch * merge = {f}')
    return height // f, width // f

  def num_video_pads(self, temporal_patches: int, hm: int, wm: int) -> int:
    """`<|video_pad|>` slots of one video (vision_start / vision_end not included)."""
    return temporal_patches * hm * wm


def decoder_positions(positions: jnp.ndarray) -> jnp.ndarray:
  """transformers' [3, B, T] M-RoPE positions -> the decoder's batch-first [B, T, 3]; [B, T] (text, the
  same value on every axis) passes through."""
  return positions if positions.ndim == 2 else jnp.moveaxis(positions, 0, -1)


class Qwen25VLForConditionalGeneration(nn.Module):
  """Video path of Qwen2.5-VL. Params: visual, language_model, lm_head (absent when tied)."""

  config: Qwen25VLConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.visual = Qwen25VisionTransformer(cfg.vision, dtype=self.dtype)
    self.language_model = qwen2.Qwen2Model(cfg.text, dtype=self.dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.text.vocab_size, use_bias=False, dtype=self.dtype)

  def video_features(self, pixel_values_videos: jnp.ndarray) -> jnp.ndarray:
    """pixel_values_videos [B, T, Hm, Wm, M, P] -> video pad embeddings [B, T*Hm*Wm, E]."""
    return self.visual(pixel_values_videos)

  def embed(
    self, input_ids: jnp.ndarray, pixel_values_videos: jnp.ndarray | None, video_embeds: jnp.ndarray | None = None
  ) -> jnp.ndarray:
    """input_ids [B, S] -> embeddings [B, S, E] with the k-th `<|video_pad|>` slot of each row taking the
    k-th video embedding of that row, from pixels or precomputed `video_embeds` [B, N, E]. Each row must
    hold exactly N video pads when video is given."""
    embeds = self.language_model.embed(input_ids)
    if video_embeds is None:
      if pixel_values_videos is None:
        return embeds
      video_embeds = self.video_features(pixel_values_videos)
    return video_lm.fill_video_slots(embeds, input_ids, video_embeds, self.config.video_token_id)

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
    """The decoder on T new tokens written at `write_index` [B] (see qwen2.Qwen2Model); positions
    [3, B, T] (or [B, T] for text)."""
    hidden, cache, states = self.language_model(
      embeds,
      decoder_positions(positions),
      q_meta,
      cache,
      k_meta,
      write_index,
      spec=spec,
      return_hidden_states=return_hidden_states,
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
    video_embeds: jnp.ndarray | None = None,
  ) -> LlavaOutput:
    """Full forward of a prompt batch: input_ids [B, S], pixels [B, T, Hm, Wm, M, P] (or None with
    video_embeds), positions [3, B, S] from `rope_index`, meta TokenMeta [B, S], spec [L, ...] or None."""
    embeds = self.embed(input_ids, pixel_values_videos, video_embeds)
    return video_lm.prompt_forward(self, embeds, positions, meta, spec, return_hidden_states)

  def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
    """hidden [..., E] (final-normed) -> logits [..., V] in float32."""
    return video_lm.output_logits(self, hidden)


# ----------------------------------------------------------------------------------------------
# Host-side layout: M-RoPE positions and the token metadata of the video span.


def _vision_positions(start: int, grid_thw: Sequence[int], merge: int, time_interval) -> np.ndarray:
  """[3, T*Hm*Wm] positions of one vision span starting at text position `start`."""
  t, h, w = (int(v) for v in grid_thw)
  hm, wm = h // merge, w // merge
  temporal = (np.arange(t, dtype=np.float32) * np.float32(time_interval)).astype(np.int64)
  tt, hh, ww = np.meshgrid(temporal, np.arange(hm), np.arange(wm), indexing='ij')
  return np.stack([tt, hh, ww]).reshape(3, -1) + start


def rope_index(
  input_ids: np.ndarray,
  config: Qwen25VLConfig,
  video_grid_thw: np.ndarray | Sequence[Sequence[int]] | None = None,
  second_per_grid_ts: np.ndarray | Sequence[float] | None = None,
  attention_mask: np.ndarray | None = None,
  image_grid_thw: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE positions of a prompt batch, equal to transformers' `Qwen2_5_VLModel.get_rope_index`.

  Args:
    input_ids: int [B, S]; a maximal run of `video_token_id` (`image_token_id`) slots is one video (image).
    config: the model config (token ids, spatial_merge_size, tokens_per_second).
    video_grid_thw: int [num_videos, 3] (T, gh, gw) in patches, the videos of the batch in order.
    second_per_grid_ts: [num_videos] seconds per temporal patch (temporal_patch_size / sampled fps);
      1 when None. Multiplied by tokens_per_second in float32 (as transformers' float32 tensor).
    attention_mask: [B, S] (any padding side); padding slots get position 0.
    image_grid_thw: int [num_images, 3] (images: temporal scale 1).

  Returns:
    (positions int64 [3, B, S], deltas int64 [B, 1] = max position + 1 - valid length: what transformers
    adds to text positions of later decoding steps).
  """
  ids = np.asarray(input_ids)
  b, s = ids.shape
  mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  kind = np.where(ids == config.image_token_id, 1, np.where(ids == config.video_token_id, 2, 0))
  grids = {
    1: iter(np.asarray(image_grid_thw).reshape(-1, 3)) if image_grid_thw is not None else iter(()),
    2: iter(np.asarray(video_grid_thw).reshape(-1, 3)) if video_grid_thw is not None else iter(()),
  }
  seconds = (
    iter(np.asarray(second_per_grid_ts, np.float32).reshape(-1))
    if second_per_grid_ts is not None
    else iter(lambda: np.float32(1), None)
  )
  merge, tps = config.vision.spatial_merge_size, np.float32(config.vision.tokens_per_second)
  out = np.zeros((3, b, s), np.int64)
  deltas = np.zeros((b, 1), np.int64)
  for row in range(b):
    types = kind[row][mask[row]]
    pieces, pos, at = [], 0, 0
    while at < len(types):
      end = at
      while end < len(types) and types[end] == types[at]:
        end += 1
      if types[at] == 0:
        pieces.append(np.broadcast_to(np.arange(end - at) + pos, (3, end - at)))
        pos += end - at
      else:
        try:
          grid = next(grids[types[at]])
        except StopIteration:
          raise ValueError(f'row {row}: more {"video" if types[at] == 2 else "image"} spans than grids') from None
        interval = tps * next(seconds) if types[at] == 2 else 1
        span = _vision_positions(pos, grid, merge, interval)
        if span.shape[1] != end - at:
          raise ValueError(
            f'row {row}: a span of {end - at} vision tokens at slot {at}, but grid '
            f'{tuple(int(g) for g in grid)} gives {span.shape[1]}'
          )
        pieces.append(span)
        pos += max(int(grid[1]), int(grid[2])) // merge
      at = end
    row_pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
    out[:, row, mask[row]] = row_pos
    deltas[row, 0] = (row_pos.max() + 1 - len(types)) if len(types) else 0
  return out, deltas


def video_frames(input_ids: np.ndarray, config: Qwen25VLConfig, pads_per_patch: int) -> np.ndarray:
  """Frame index int32 [..., S] of each token for the knockout conventions: the temporal patch of a
  `<|video_pad|>` (its rank within its row // Hm*Wm), -1 for everything else (vision_start/end included)."""
  ids = np.asarray(input_ids)
  is_video = ids == config.video_token_id
  rank = np.cumsum(is_video, axis=-1) - 1
  return np.where(is_video, rank // pads_per_patch, -1).astype(np.int32)


def video_groups(input_ids: np.ndarray, config: Qwen25VLConfig, text_group: int = Group.QUESTION) -> np.ndarray:
  """Group int32 [..., S]: VIDEO for vision_start, video pads and vision_end, `text_group` elsewhere."""
  ids = np.asarray(input_ids)
  video = np.isin(ids, [config.video_token_id, config.vision_start_token_id, config.vision_end_token_id])
  return np.where(video, Group.VIDEO, text_group).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Shapes, the decoder view, greedy decoding.


def param_shapes(model: Qwen25VLForConditionalGeneration) -> dict:
  """The param tree of `model` as ShapeDtypeStructs (no memory), from a one-unit video prompt run through
  the forward and the output head."""
  cfg = model.config
  m = cfg.vision.spatial_merge_size**2
  pixels = jnp.zeros((1, 1, 1, 1, m, cfg.vision.patch_dim), jnp.float32)
  ids = jnp.asarray([[cfg.video_token_id, 0]], jnp.int32)
  positions = jnp.zeros((3, 1, 2), jnp.int32)
  meta = qwen2.text_meta(jnp.ones((1, 2), bool))

  def forward_and_head(module, *args):
    return module.logits(module(*args).hidden[:, -1:])

  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), ids, pixels, positions, meta, method=forward_and_head)
  )
  return variables['params']


language_model_view = video_lm.language_model_view  # the decoder + head as a Qwen2ForCausalLM


def generate(
  model: Qwen25VLForConditionalGeneration,
  params: dict,
  input_ids: jnp.ndarray,
  pixel_values_videos: jnp.ndarray | None,
  positions: jnp.ndarray,
  meta: TokenMeta,
  max_new_tokens: int,
  **kwargs,
) -> jnp.ndarray:
  """Greedy decoding of video prompts input_ids [B, S] (padding marked in `meta`; positions [3, B, S])
  -> new tokens [B, max_new_tokens]. New token i of a row sits at (its last prompt position + 1 + i) on
  every axis, as transformers 5.x `generate` advances positions. kwargs: spec, eos_token_id, pad_token_id."""
  embeds = jax.jit(lambda p, i, v: model.apply({'params': p}, i, v, method='embed'))(
    params, input_ids, pixel_values_videos
  )
  lm, lm_params = language_model_view(model, params)
  return qwen2.generate_from_embeds(
    lm, lm_params, embeds, decoder_positions(jnp.asarray(positions)), meta, max_new_tokens, **kwargs
  )
