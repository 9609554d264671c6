"""Attention-efficient inference of LLaVA-OneVision: a plan's removed work is skipped, not masked.

An `InferencePlan` (Gou et al., arXiv 2508.15360, Sec. 5) has three parts:
  * exit layer e: video rows are computed in layers [0, e) only. Above e the sequence is the non-video
    tokens alone (shorter matmuls), and those layers' keys, including the decode KV cache, hold no video.
    This is the Language-to-Video knockout in layers >= e (0-based): once no text query reads a video
    key, the video rows of those layers influence nothing.
  * within-frame layers m <= e: in layers [0, m) a video query attends its own frame and the non-video
    tokens before the video (the Video Temporal knockout there). It is computed block-diagonally: the
    frames are folded into the batch axis, so each frame's queries meet only the prefix and their own
    frame's keys; cross-frame tiles are never visited. Text rows and the image_newline row (a video token
    of no frame, which VT leaves alone) attend as usual.
  * frame budget k: the caller passes the k frames it keeps (a selector picks them); nothing here.
So a plan's output equals the masked forward under `equivalent_spec` (up to float summation order);
tests/test_efficient.py holds it to that.

The prompt's video must be one contiguous span at the same slot in every row: frames 0..F-1 of t tokens
each, then the image_newline (`video_span` checks it). The text around it may differ per row (padding).

Letters: B batch, S prompt slots, S' non-video slots, N new tokens, F frames, t tokens per frame,
P prefix slots (before the video), D hidden, H / K query / key-value heads, Dh head dim, L layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm.models import qwen2
from jaxvlm.models.attention import NUM_GROUPS, Group, LayerRule, TokenMeta, masked_attention
from jaxvlm.models.llava_onevision import LlavaOnevisionForConditionalGeneration


@dataclasses.dataclass(frozen=True)
class InferencePlan:
  """exit_layer e: layers [0, e) see video (e = L: no exit; 1-based this is "exit after layer e").
  intra_frame_layers m: layers [0, m) keep within-frame attention only among video tokens (1-based
  layers 1..m). 0 <= m <= e <= L."""

  exit_layer: int
  intra_frame_layers: int = 0

  def validate(self, num_layers: int) -> InferencePlan:
    e, m = self.exit_layer, self.intra_frame_layers
    if not 0 <= e <= num_layers:
      raise ValueError(
        f'exit_layer {e} is outside the decoder stack 0..{num_layers} (exit after layer e, '
        f'1-based; {num_layers} = no exit)'
      )
    if not 0 <= m <= e:
      raise ValueError(
        f'intra_frame_layers {m} must lie in 0..exit_layer={e}: within-frame layers above '
        f'the exit would have no video rows to restrict'
      )
    return self

  def name(self, num_layers: int) -> str:
    exit_part = 'no exit' if self.exit_layer == num_layers else f'exit after {self.exit_layer}'
    frames = f', within-frame 1-{self.intra_frame_layers}' if self.intra_frame_layers else ''
    return exit_part + frames


def equivalent_spec(plan: InferencePlan, num_layers: int, num_frames: int) -> LayerRule:
  """The knockout spec [L, ...] (numpy) whose masked forward the plan computes: Language-to-Video in
  layers >= exit_layer, Video Temporal in layers < intra_frame_layers."""
  plan.validate(num_layers)
  layers = np.arange(num_layers)
  text = np.asarray([g for g in range(NUM_GROUPS) if g != Group.VIDEO])
  block = np.zeros((num_layers, NUM_GROUPS, NUM_GROUPS), bool)
  block[np.ix_(np.flatnonzero(layers >= plan.exit_layer), text, np.asarray([int(Group.VIDEO)]))] = True
  return LayerRule(
    block=block,
    cross_frame=layers < plan.intra_frame_layers,
    same_frame=np.zeros((num_layers,), bool),
    frames=np.zeros((num_layers, num_frames), bool),
  )


@dataclasses.dataclass(frozen=True)
class VideoSpan:
  """Where the video sits in every row of a prompt batch of `length` slots: slots [start, start + F * t)
  are the frames (frame f at start + f * t), the image_newline follows."""

  start: int
  num_frames: int
  tokens_per_frame: int
  length: int

  @property
  def num_frame_tokens(self) -> int:
    return self.num_frames * self.tokens_per_frame

  @property
  def num_tokens(self) -> int:
    return self.num_frame_tokens + 1

  @property
  def text_slots(self) -> np.ndarray:
    """[S'] the non-video slots, in order."""
    slots = np.arange(self.length)
    return slots[(slots < self.start) | (slots >= self.start + self.num_tokens)]

  @property
  def rest_slots(self) -> np.ndarray:
    """[S - F * t] every slot but the frame tokens (the rows a within-frame layer attends as usual)."""
    slots = np.arange(self.length)
    return slots[(slots < self.start) | (slots >= self.start + self.num_frame_tokens)]


def video_span(group: np.ndarray, frame: np.ndarray, tokens_per_frame: int) -> VideoSpan:
  """The VideoSpan of a batch layout (group, frame: [B, S] numpy), or ValueError naming the row."""
  group, frame = np.asarray(group), np.asarray(frame)
  b, s = group.shape
  spans = []
  for i in range(b):
    video = np.flatnonzero(group[i] == Group.VIDEO)
    if not video.size:
      raise ValueError(f'row {i} of the layout has no video tokens')
    start, n = int(video[0]), len(video)
    if video[-1] != start + n - 1:
      raise ValueError(
        f'row {i}: the video tokens are not one contiguous span (slots {start}..{video[-1]}, {n} tokens)'
      )
    if (n - 1) % tokens_per_frame:
      raise ValueError(f'row {i}: {n} video tokens are not F * {tokens_per_frame} frame tokens + 1 newline')
    f = (n - 1) // tokens_per_frame
    expect = np.append(np.arange(f * tokens_per_frame) // tokens_per_frame, -1)
    if not np.array_equal(frame[i, start : start + n], expect):
      raise ValueError(
        f'row {i}: video frame indices are not 0..{f - 1} in order of {tokens_per_frame} '
        f'tokens each followed by the image_newline (frame -1)'
      )
    spans.append((start, f))
  if len(set(spans)) != 1:
    raise ValueError(
      f'the video span differs between rows (start, frames): {spans}; a plan needs it at the same slots in every row'
    )
  start, f = spans[0]
  return VideoSpan(start, f, tokens_per_frame, s)


# ---------------------------------------------------------------- the within-frame layer


def _fold_frames(x: jnp.ndarray, span: VideoSpan) -> jnp.ndarray:
  """Frame tokens of x [B, S, ...] -> [B * F, t, ...] (row b * F + f is frame f of sample b)."""
  frames = x[:, span.start : span.start + span.num_frame_tokens]
  return frames.reshape((x.shape[0] * span.num_frames, span.tokens_per_frame) + x.shape[2:])


def _prefix_per_frame(x: jnp.ndarray, span: VideoSpan) -> jnp.ndarray:
  """The prefix slots of x [B, S, ...] once per frame -> [B * F, P, ...]."""
  return jnp.repeat(x[:, : span.start], span.num_frames, axis=0)


def _dense(features: int, use_bias: bool, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


class WithinFrameAttention(nn.Module):
  """Qwen2Attention (same parameters) over a whole prompt in which every frame query attends only the
  prefix and its own frame: frames folded into the batch, [B * F, t] queries against [B * F, P + t] keys,
  so no cross-frame tile exists. The other rows (prefix, newline, text) attend every allowed slot."""

  config: qwen2.Qwen2Config
  span: VideoSpan
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jnp.ndarray,
    positions: jnp.ndarray,
    meta: TokenMeta,
    cache_k: jnp.ndarray,
    cache_v: jnp.ndarray,
    k_meta: TokenMeta,
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """x [B, S, D] (the whole prompt, written from slot 0) -> (out [B, S, D], cache_k', cache_v')."""
    cfg, span = self.config, self.span
    b, s, _ = x.shape
    heads, kv_heads, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = _dense(heads * dh, True, self.dtype, 'q_proj')(x).reshape(b, s, heads, dh)
    k = _dense(kv_heads * dh, True, self.dtype, 'k_proj')(x).reshape(b, s, kv_heads, dh)
    v = _dense(kv_heads * dh, True, self.dtype, 'v_proj')(x).reshape(b, s, kv_heads, dh)
    k = qwen2.rotary(k, positions, cfg.rope_theta).astype(cache_k.dtype)
    v = v.astype(cache_v.dtype)
    q = qwen2.rotary(q, positions, cfg.rope_theta)
    zero = jnp.zeros((b,), jnp.int32)
    cache_k, cache_v = qwen2.write_slots(cache_k, k, zero), qwen2.write_slots(cache_v, v, zero)
    block = cfg.attention_block_size
    # Prefix, newline and text rows: the usual causal attention over the whole cache.
    rest = span.rest_slots
    # frame_mass=0: masked_attention returns the output alone.
    rest_out = cast(
      jax.Array,
      masked_attention(
        q[:, rest], cache_k, cache_v, jax.tree.map(lambda a: a[:, rest], meta), k_meta, None, block_size=block
      ),
    )
    # Frame rows: [B * F, t] queries, keys = prefix + own frame; causality inside the frame by index.
    keys = lambda a: jnp.concatenate([_prefix_per_frame(a, span), _fold_frames(a, span)], axis=1)
    frame_out = cast(
      jax.Array,
      masked_attention(
        _fold_frames(q, span),
        keys(k),
        keys(v),
        jax.tree.map(lambda a: _fold_frames(a, span), meta),
        jax.tree.map(keys, meta),
        None,
        block_size=block,
      ),
    )
    frame_out = frame_out.reshape(b, span.num_frame_tokens, heads, dh)
    out = jnp.concatenate([rest_out[:, : span.start], frame_out, rest_out[:, span.start :]], axis=1)
    out = _dense(cfg.hidden_size, False, self.dtype, 'o_proj')(out.reshape(b, s, heads * dh))
    return out, cache_k, cache_v


class WithinFrameDecoderLayer(nn.Module):
  """Qwen2DecoderLayer (same parameters) with WithinFrameAttention; prefill of a whole prompt only
  (a decoded token is text: it attends as in Qwen2DecoderLayer)."""

  config: qwen2.Qwen2Config
  span: VideoSpan
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, positions, meta, cache_k, cache_v, k_meta):
    eps = self.config.rms_norm_eps
    attn, cache_k, cache_v = WithinFrameAttention(self.config, self.span, self.dtype, name='self_attn')(
      qwen2.RMSNorm(eps, self.dtype, name='input_layernorm')(h), positions, meta, cache_k, cache_v, k_meta
    )
    h = h + attn
    h = h + qwen2.Qwen2MLP(self.config, self.dtype, name='mlp')(
      qwen2.RMSNorm(eps, self.dtype, name='post_attention_layernorm')(h)
    )
    return h, cache_k, cache_v


# ---------------------------------------------------------------- prefill and decoding


@struct.dataclass
class PlanCache:
  """The decode cache of a plan. low: layers [0, e), every prompt slot, [e, B, S + N, K, Dh] with
  low_meta [B, S + N]; high: layers [e, L), non-video slots only, [L - e, B, S' + N, K, Dh] with
  high_meta [B, S' + N] (index = compact slot)."""

  low: qwen2.KVCache
  low_meta: TokenMeta
  high: qwen2.KVCache
  high_meta: TokenMeta


def _layers(params, start: int, stop: int):
  return jax.tree.map(lambda x: x[start:stop], params['language_model']['layers'])


def _run(layer_fn, h, layer_params, cache_k, cache_v, unroll: bool):
  """Applies layer_fn(p, h, ck, cv) -> (h, ck, cv) over stacked layer params / caches [n, ...]."""

  def body(h, xs):
    h, ck, cv = layer_fn(*xs[:1], h, *xs[1:])
    return h, (ck, cv)

  h, (k, v) = jax.lax.scan(body, h, (layer_params, cache_k, cache_v), unroll=bool(unroll))
  return h, k, v


def _empty(config: qwen2.Qwen2Config, layers: int, b: int, slots: int, dtype) -> jnp.ndarray:
  return jnp.zeros((layers, b, slots, config.num_key_value_heads, config.head_dim), dtype)


def _concat_meta(a: TokenMeta, b: TokenMeta) -> TokenMeta:
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)


def compact_meta(meta: TokenMeta, span: VideoSpan) -> TokenMeta:
  """TokenMeta [B, S'] of the non-video slots, indexed 0..S'-1 (their slots in the high cache)."""
  text = span.text_slots
  b = meta.index.shape[0]
  return TokenMeta(
    index=jnp.broadcast_to(jnp.arange(len(text), dtype=jnp.int32), (b, len(text))),
    valid=meta.valid[:, text],
    group=meta.group[:, text],
    frame=jnp.full((b, len(text)), -1, jnp.int32),
  )


def output_slots(plan: InferencePlan, span: VideoSpan, num_layers: int) -> np.ndarray:
  """Prompt slot of each row `prefill` returns: the non-video slots when the video exits, else all."""
  return span.text_slots if plan.exit_layer < num_layers else np.arange(span.length)


def output_row(slot: jnp.ndarray, plan: InferencePlan, span: VideoSpan, num_layers: int) -> jnp.ndarray:
  """Row of `prefill`'s output holding (non-video) prompt slot `slot` [B]."""
  if plan.exit_layer == num_layers:
    return slot
  return jnp.where(slot >= span.start + span.num_tokens, slot - span.num_tokens, slot)


def embed(model: LlavaOnevisionForConditionalGeneration, params, input_ids, pixel_values_videos, plan: InferencePlan):
  """Prompt embeddings [B, S, D]; with exit_layer 0 no layer sees the video, so the vision tower is
  skipped (the video slots keep their placeholder embedding, which nothing reads)."""
  if plan.exit_layer == 0:
    return model.apply({'params': params}, input_ids, None, method='embed')
  return model.apply({'params': params}, input_ids, pixel_values_videos, method='embed')


def decoder_prefill(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  embeds: jnp.ndarray,
  positions: jnp.ndarray,
  meta: TokenMeta,
  plan: InferencePlan,
  span: VideoSpan,
  max_new_tokens: int = 0,
  unroll: bool = False,
) -> tuple[jnp.ndarray, PlanCache]:
  """The decoder on a whole prompt under the plan (not jitted; see `prefill`).

  Args:
    embeds: [B, S, D] prompt embeddings; positions [B, S] rotary positions; meta TokenMeta [B, S]
      (index = slot, valid marks padding).
    plan, span: static. max_new_tokens: N empty cache slots appended for decoding.
    unroll: unroll the layer scans (for XLA's cost analysis, which counts a loop body once).

  Returns:
    hidden [B, S_out, D] after the final norm (rows = `output_slots`), and the PlanCache.
  """
  cfg, dtype = model.config.text, model.dtype
  num_layers = cfg.num_hidden_layers
  plan.validate(num_layers)
  e, m = plan.exit_layer, plan.intra_frame_layers
  b, s, _ = embeds.shape
  if s != span.length:
    raise ValueError(f'embeds have {s} slots, the video span was built for {span.length}')
  n = max_new_tokens
  low_meta = _concat_meta(meta, qwen2.text_meta(jnp.zeros((b, n), bool), Group.LAST, offset=s))
  h = embeds.astype(dtype)
  low_k, low_v = [], []
  if m:
    layer = WithinFrameDecoderLayer(cfg, span, dtype)
    fn = lambda p, h, ck, cv: layer.apply({'params': p}, h, positions, meta, ck, cv, low_meta)
    h, k, v = _run(
      fn, h, _layers(params, 0, m), _empty(cfg, m, b, s + n, dtype), _empty(cfg, m, b, s + n, dtype), unroll
    )
    low_k.append(k)
    low_v.append(v)
  zero = jnp.zeros((b,), jnp.int32)
  full_layer = qwen2.Qwen2DecoderLayer(cfg, dtype)
  if e > m:
    fn = lambda p, h, ck, cv: full_layer.apply({'params': p}, h, positions, meta, ck, cv, low_meta, zero, None)
    h, k, v = _run(
      fn, h, _layers(params, m, e), _empty(cfg, e - m, b, s + n, dtype), _empty(cfg, e - m, b, s + n, dtype), unroll
    )
    low_k.append(k)
    low_v.append(v)
  cat = lambda xs: jnp.concatenate(xs) if xs else _empty(cfg, 0, b, s + n, dtype)
  low = qwen2.KVCache(cat(low_k), cat(low_v))
  text = span.text_slots
  high_meta = _concat_meta(
    compact_meta(meta, span), qwen2.text_meta(jnp.zeros((b, n), bool), Group.LAST, offset=len(text))
  )
  high_k = high_v = _empty(cfg, 0, b, len(text) + n, dtype)
  if e < num_layers:
    h, t_pos, t_meta = h[:, text], positions[:, text], compact_meta(meta, span)
    fn = lambda p, h, ck, cv: full_layer.apply({'params': p}, h, t_pos, t_meta, ck, cv, high_meta, zero, None)
    h, high_k, high_v = _run(
      fn,
      h,
      _layers(params, e, num_layers),
      _empty(cfg, num_layers - e, b, len(text) + n, dtype),
      _empty(cfg, num_layers - e, b, len(text) + n, dtype),
      unroll,
    )
  norm = qwen2.RMSNorm(cfg.rms_norm_eps, dtype)
  hidden = cast(jax.Array, norm.apply({'params': params['language_model']['norm']}, h))
  return hidden, PlanCache(low, low_meta, qwen2.KVCache(high_k, high_v), high_meta)


@functools.partial(jax.jit, static_argnames=('model', 'plan', 'span', 'max_new_tokens', 'unroll'))
def prefill(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  positions,
  meta: TokenMeta,
  plan: InferencePlan,
  span: VideoSpan,
  max_new_tokens: int = 0,
  unroll: bool = False,
) -> tuple[jnp.ndarray, PlanCache]:
  """Embedding (vision tower on the frames given) + `decoder_prefill`: input_ids [B, S], pixels
  [B, F, H, W, C] -> (hidden [B, S_out, D], PlanCache)."""
  embeds = embed(model, params, input_ids, pixel_values_videos, plan)
  return decoder_prefill(model, params, embeds, positions, meta, plan, span, max_new_tokens, unroll)


@functools.partial(jax.jit, static_argnames=('model', 'plan', 'span'))
def option_logprobs(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  positions,
  meta: TokenMeta,
  answer_index,
  option_ids,
  plan: InferencePlan,
  span: VideoSpan,
) -> jnp.ndarray:
  """log p(option letter) [B, O] at prompt slot answer_index [B] under the plan (full-vocabulary softmax)."""
  hidden, _ = prefill(model, params, input_ids, pixel_values_videos, positions, meta, plan, span)
  row = output_row(answer_index, plan, span, model.config.text.num_hidden_layers)
  last = jnp.take_along_axis(hidden, row[:, None, None], axis=1)[:, 0]
  logits = cast(jax.Array, model.apply({'params': params}, last, method='logits'))
  return jnp.take(jax.nn.log_softmax(logits, axis=-1), option_ids, axis=-1)


def _last_valid(valid: jnp.ndarray) -> jnp.ndarray:
  return valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'plan', 'span', 'max_new_tokens'))
def _generate_prefill(model, params, input_ids, pixel_values_videos, positions, meta, plan, span, max_new_tokens):
  """-> (first-step logits [B, V] at each row's last valid slot, next rotary position [B], PlanCache)."""
  hidden, cache = prefill(model, params, input_ids, pixel_values_videos, positions, meta, plan, span, max_new_tokens)
  out = output_slots(plan, span, model.config.text.num_hidden_layers)
  valid, out_pos = meta.valid[:, out], positions[:, out]
  b = hidden.shape[0]
  last = _last_valid(valid)
  logits = model.apply({'params': params}, hidden[jnp.arange(b), last], method='logits')
  return logits, out_pos[jnp.arange(b), last] + 1, cache


@functools.partial(jax.jit, static_argnames=('model', 'plan', 'span'))
def _decode_step(model, params, tokens, step, positions, cache: PlanCache, plan, span):
  """One new token per row, tokens [B] at decode step `step` (scalar): low-cache slot S + step,
  high-cache slot S' + step, rotary positions [B]. -> (logits [B, V], cache)."""
  cfg, dtype = model.config.text, model.dtype
  b = tokens.shape[0]
  e = plan.exit_layer
  layer = qwen2.Qwen2DecoderLayer(cfg, dtype)
  h = model.apply({'params': params}, tokens[:, None], None, method='embed').astype(dtype)
  pos = positions[:, None]

  def run(h, kv, k_meta, slot, start, stop):
    k_meta = k_meta.replace(valid=k_meta.valid | (k_meta.index == slot))
    q_meta = qwen2.text_meta(jnp.ones((b, 1), bool), Group.LAST, offset=slot)
    write = jnp.full((b,), slot, jnp.int32)
    fn = lambda p, h, ck, cv: layer.apply({'params': p}, h, pos, q_meta, ck, cv, k_meta, write, None)
    h, k, v = _run(fn, h, _layers(params, start, stop), kv.k, kv.v, False)
    return h, qwen2.KVCache(k, v), k_meta

  low, low_meta, high, high_meta = cache.low, cache.low_meta, cache.high, cache.high_meta
  if e:
    h, low, low_meta = run(h, low, low_meta, span.length + step, 0, e)
  if e < cfg.num_hidden_layers:
    h, high, high_meta = run(h, high, high_meta, len(span.text_slots) + step, e, cfg.num_hidden_layers)
  norm = qwen2.RMSNorm(cfg.rms_norm_eps, dtype)
  hidden = cast(jax.Array, norm.apply({'params': params['language_model']['norm']}, h))
  logits = model.apply({'params': params}, hidden[:, 0], method='logits')
  return logits, PlanCache(low, low_meta, high, high_meta)


def generate(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  positions,
  meta: TokenMeta,
  plan: InferencePlan,
  span: VideoSpan,
  max_new_tokens: int,
  *,
  eos_token_id: int | None = None,
  pad_token_id: int = 0,
) -> jnp.ndarray:
  """Greedy decoding under the plan with its cache (no video entries above the exit layer) -> new
  tokens [B, N] int32. Same conventions as `llava_onevision.generate` (right padding via meta.valid,
  rows that emitted eos continue with pad_token_id)."""
  logits, pos, cache = _generate_prefill(
    model, params, input_ids, pixel_values_videos, positions, meta, plan, span, max_new_tokens
  )

  def step(token, i):
    nonlocal cache
    logits, cache = _decode_step(model, params, token, jnp.int32(i), pos + i, cache, plan, span)
    return logits

  return qwen2.greedy_tokens(logits, step, max_new_tokens, eos_token_id, pad_token_id)
