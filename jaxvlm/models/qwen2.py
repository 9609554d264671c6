"""Flax Qwen2 decoder (transformers `Qwen2ForCausalLM`) with an explicit KV cache and masked attention.

Every forward, whether a plain forward, a prefill, one decoding step or a partial recompute of a knockout
sweep, is the same call: the T new tokens write their keys/values into the cache at slots
[write_index, write_index + T) of each row, then attend to every slot that the key metadata, causality
and the layer's knockout rule allow (see `jaxvlm.models.attention`).

Letters: B batch, T new tokens, S cache slots, D hidden, H query heads, K key/value heads, Dh head dim,
L layers, V vocabulary, N new tokens of a generation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Mapping, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm.models.attention import AnyArray, Group, LayerRule, TokenMeta, masked_attention


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """The fields of a transformers Qwen2Config that the port uses (+ `attention_block_size`, ours)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  attention_block_size: int = 512  # keys per block of the online-softmax kernel
  # M-RoPE (Qwen2-VL / Qwen2.5-VL): frequencies split into sections turning with the temporal, height
  # and width position in turn; positions are then [B, T, 3] (see `rotary`). () = plain 1-D RoPE.
  mrope_section: tuple[int, ...] = ()

  @classmethod
  def from_hf(cls, d: Mapping[str, Any], allow_mrope: bool = False) -> Qwen2Config:
    """From a transformers config dict (v4 `rope_theta` or v5 `rope_parameters`); unsupported options
    (non-default RoPE, sliding window, non-SiLU activation) raise ValueError. A config with M-RoPE
    (`mrope_section`, or v4's rope type 'mrope') raises too unless `allow_mrope` (the Qwen2.5-VL port
    sets it): read as plain Qwen2 it would silently run with the wrong positions."""
    rope = d.get('rope_parameters') or d.get('rope_scaling') or {}
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    mrope = rope.get('mrope_section')
    if mrope is not None or rope_type == 'mrope':
      if not allow_mrope or mrope is None:
        raise ValueError(
          f'text config has M-RoPE (rope {dict(rope)}): it is a Qwen2-VL-style decoder, not '
          'plain Qwen2; load it through its multimodal family (e.g. qwen2_5_vl)'
        )
      rope_type = 'default'
    if rope_type != 'default':
      raise ValueError(f'Qwen2 rope_type {rope_type!r} is not supported (only default)')
    if d.get('use_sliding_window', False):
      raise ValueError('Qwen2 use_sliding_window=True is not supported')
    if d.get('hidden_act', 'silu') != 'silu':
      raise ValueError(f"Qwen2 hidden_act {d['hidden_act']!r} is not supported (only silu)")
    heads = d['num_attention_heads']
    return cls(
      vocab_size=d['vocab_size'],
      hidden_size=d['hidden_size'],
      intermediate_size=d['intermediate_size'],
      num_hidden_layers=d['num_hidden_layers'],
      num_attention_heads=heads,
      num_key_value_heads=d.get('num_key_value_heads') or heads,
      head_dim=d.get('head_dim') or d['hidden_size'] // heads,
      rms_norm_eps=d.get('rms_norm_eps', 1e-6),
      rope_theta=float(rope.get('rope_theta', d.get('rope_theta', 10000.0))),
      tie_word_embeddings=d.get('tie_word_embeddings', False),
      max_position_embeddings=d.get('max_position_embeddings', 32768),
      mrope_section=tuple(int(x) for x in mrope or ()),
    )


@struct.dataclass
class KVCache:
  """Keys and values of every layer, each [L, B, S, K, Dh] (rotary already applied to k)."""

  k: jnp.ndarray
  v: jnp.ndarray

  @classmethod
  def empty(cls, config: Qwen2Config, batch: int, slots: int, dtype: Any = jnp.float32) -> KVCache:
    shape = (config.num_hidden_layers, batch, slots, config.num_key_value_heads, config.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def text_meta(attention_mask: jnp.ndarray, group: int = Group.QUESTION, offset: int | jnp.ndarray = 0) -> TokenMeta:
  """TokenMeta [B, S] of a plain text batch: slot index offset + s, valid = attention_mask, every token
  in `group` (QUESTION by default: text with no layout information), frame -1."""
  b, s = attention_mask.shape
  index = jnp.broadcast_to(offset + jnp.arange(s, dtype=jnp.int32), (b, s))
  return TokenMeta(
    index=index,
    valid=attention_mask.astype(bool),
    group=jnp.full((b, s), group, jnp.int32),
    frame=jnp.full((b, s), -1, jnp.int32),
  )


def positions_from_mask(attention_mask: jnp.ndarray) -> jnp.ndarray:
  """Rotary positions [B, S] = number of valid tokens before each slot (transformers' generate
  convention, so left padding does not shift positions; padding slots get 0)."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)


def rotary(x: jnp.ndarray, positions: jnp.ndarray, theta: float, mrope_section: tuple[int, ...] = ()) -> jnp.ndarray:
  """Rotary embedding of x [B, T, N, Dh] at integer positions [B, T] (HF rotate_half: the two halves
  of Dh are the pair of each frequency). Computed in float32, returned in x's dtype.

  M-RoPE: with `mrope_section` (lengths summing to Dh/2) positions may be [B, T, 3] (temporal, height,
  width): section i of the frequencies turns with axis i % 3 (transformers' Qwen2-VL recomposition).
  [B, T] positions then mean the same value on all three axes (text), i.e. plain RoPE."""
  dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))  # [Dh/2]
  if positions.ndim == x.ndim - 1:
    if sum(mrope_section) != dim // 2:
      raise ValueError(
        f'positions {positions.shape} are M-RoPE [B, T, 3], but mrope_section '
        f'{mrope_section} does not split the {dim // 2} frequencies'
      )
    axis = np.repeat(np.arange(len(mrope_section)) % 3, mrope_section)  # [Dh/2] axis of each freq
    angles = positions[..., axis].astype(jnp.float32)[..., None, :] * inv_freq  # [B, T, 1, Dh/2]
  else:
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [B, T, 1, Dh/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def write_slots(cache: jnp.ndarray, new: jnp.ndarray, write_index: jnp.ndarray) -> jnp.ndarray:
  """cache [B, S, ...] with new [B, T, ...] written at slots [write_index[b], write_index[b] + T) of row b.

  The caller keeps write_index + T <= S (dynamic_update_slice would clamp the start otherwise).
  """
  write = lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), i, axis=0)
  return jax.vmap(write)(cache, new, write_index)


def _hide_slots(meta: TokenMeta, write_index: jnp.ndarray, count: int) -> TokenMeta:
  """meta [B, S] with slots [write_index[b], write_index[b] + count) of row b made unreachable: invalid,
  and an index past every query, so not even a query's own diagonal picks them."""
  slot = jnp.arange(meta.index.shape[1], dtype=jnp.int32)[None]
  hidden = (slot >= write_index[:, None]) & (slot < write_index[:, None] + count)
  return meta.replace(index=jnp.where(hidden, jnp.iinfo(jnp.int32).max, meta.index), valid=meta.valid & ~hidden)


def _rows(x, rows: jnp.ndarray):
  """Rows [B, R] of every leaf of x ([B, T, ...] arrays or a TokenMeta [B, T]) -> [B, R, ...]."""
  pick = lambda a: jnp.take_along_axis(a, rows.reshape(rows.shape + (1,) * (a.ndim - 2)), axis=1)
  return jax.tree.map(pick, x)


class RMSNorm(nn.Module):
  """Qwen2RMSNorm: normalised in float32, cast back to the input dtype, then scaled by `weight` [D]."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (weight.astype(self.dtype) * normed.astype(x.dtype)).astype(self.dtype)


def _dense(features: int, use_bias: bool, dtype: Any, name: str | None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


class Qwen2MLP(nn.Module):
  """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

  config: Qwen2Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    gate = _dense(cfg.intermediate_size, False, self.dtype, 'gate_proj')(x)
    up = _dense(cfg.intermediate_size, False, self.dtype, 'up_proj')(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ('batch', 'length', 'act_mlp'))
    return _dense(cfg.hidden_size, False, self.dtype, 'down_proj')(hidden)


class Qwen2Attention(nn.Module):
  """q/k/v projections (with bias), rotary, cache write, masked attention, o_proj (no bias).

  frame_mass: F > 0 also sows ('intermediates', 'frame_mass') the attention mass [B, T, H, F] of each
  query head on the tokens of frames 0..F-1 (see `masked_attention`); collect it with
  `apply(..., mutable=['intermediates'])`. 0 (default) computes nothing extra.
  """

  config: Qwen2Config
  dtype: Any = jnp.float32
  frame_mass: int = 0

  @nn.compact
  def __call__(
    self,
    x: jnp.ndarray,
    positions: jnp.ndarray,
    q_meta: TokenMeta,
    cache_k: jnp.ndarray,
    cache_v: jnp.ndarray,
    k_meta: TokenMeta,
    write_index: jnp.ndarray,
    rule: LayerRule | None,
    out_rows: jnp.ndarray | None = None,
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """x [B or C * B, T, D] -> (out [., T, D], cache_k', cache_v' [B, S, K, Dh]); arguments as
    Qwen2DecoderLayer (with out_rows [., R]: out [., R, D] of those rows only)."""
    cfg = self.config
    b, t, _ = x.shape
    heads, kv_heads, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q_proj = _dense(heads * dh, True, self.dtype, 'q_proj')
    k = _dense(kv_heads * dh, True, self.dtype, 'k_proj')(x).reshape(b, t, kv_heads, dh)
    v = _dense(kv_heads * dh, True, self.dtype, 'v_proj')(x).reshape(b, t, kv_heads, dh)
    k, v = (nn.with_logical_constraint(y, ('batch', 'length', 'act_kv_heads', 'head_dim')) for y in (k, v))
    k = rotary(k, positions, cfg.rope_theta, cfg.mrope_section)
    if b == cache_k.shape[0]:
      cache_k = write_slots(cache_k, k, write_index)
      cache_v = write_slots(cache_v, v, write_index)
      own = None
    else:
      # States sharing the cache: each keeps its new keys/values to itself, the cache stays clean.
      own = (k, v, q_meta)
      k_meta = _hide_slots(k_meta, write_index, t)
    if out_rows is not None:
      x, positions, q_meta = (_rows(y, out_rows) for y in (x, positions, q_meta))
    q = q_proj(x).reshape(b, x.shape[1], heads, dh)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'act_heads', 'head_dim'))
    q = rotary(q, positions, cfg.rope_theta, cfg.mrope_section)
    out = masked_attention(
      q,
      cache_k,
      cache_v,
      q_meta,
      k_meta,
      rule,
      own=own,
      block_size=cfg.attention_block_size,
      frame_mass=self.frame_mass,
    )
    if isinstance(out, tuple):  # self.frame_mass > 0: (output, per-frame attention mass)
      out, mass = out
      self.sow('intermediates', 'frame_mass', mass)
    out = _dense(cfg.hidden_size, False, self.dtype, 'o_proj')(out.reshape(b, x.shape[1], heads * dh))
    return out, cache_k, cache_v


class Qwen2DecoderLayer(nn.Module):
  """Pre-norm block: h + self_attn(input_layernorm(h)), then + mlp(post_attention_layernorm(.)).
  frame_mass: passed to Qwen2Attention (sows per-frame attention mass when > 0)."""

  config: Qwen2Config
  dtype: Any = jnp.float32
  frame_mass: int = 0

  @nn.compact
  def __call__(
    self,
    h: jnp.ndarray,
    positions: jnp.ndarray,
    q_meta: TokenMeta,
    cache_k: jnp.ndarray,
    cache_v: jnp.ndarray,
    k_meta: TokenMeta,
    write_index: jnp.ndarray,
    rule: LayerRule | None = None,
    out_rows: jnp.ndarray | None = None,
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One layer on T new tokens.

    The batch of h may be C times the cache's (rows c * B + b, e.g. the states of a knockout sweep):
    then every row reads the cache of sample b except slots [write_index[b], write_index[b] + T), where
    it sees its own new keys/values instead, and the cache is returned unchanged (one copy serves every
    state; see `masked_attention`).

    Args:
      h: [B, T, D] (or [C * B, T, D]) input hidden states of the new tokens.
      positions: [B, T] (or [C * B, T]) int rotary positions; [B, T, 3] with config.mrope_section.
      q_meta: TokenMeta [B, T] (or [C * B, T]) of the new tokens (their index must be the slot they
        are written to).
      cache_k, cache_v: [B, S, K, Dh] this layer's cache.
      k_meta: TokenMeta [B, S] of the cache slots, already marking the slots written here valid.
      write_index: [B] int32 first slot written in each row of the cache.
      rule: this layer's knockout rule or None (per row of h, or shared).
      out_rows: optional [B, R] (or [C * B, R]) rows of the T new tokens whose outputs are wanted: every
        row still writes its keys/values, but only these R query, so the rest of the layer costs R / T
        (e.g. the last layer of a prompt whose answer is read off one slot).

    Returns:
      (h_out [B or C * B, T, D] (or [., R, D] with out_rows), cache_k', cache_v').
    """
    eps = self.config.rms_norm_eps
    attn, cache_k, cache_v = Qwen2Attention(self.config, self.dtype, self.frame_mass, name='self_attn')(
      RMSNorm(eps, self.dtype, name='input_layernorm')(h),
      positions,
      q_meta,
      cache_k,
      cache_v,
      k_meta,
      write_index,
      rule,
      out_rows,
    )
    h = h + attn if out_rows is None else _rows(h, out_rows) + attn
    h = h + Qwen2MLP(self.config, self.dtype, name='mlp')(RMSNorm(eps, self.dtype, name='post_attention_layernorm')(h))
    return nn.with_logical_constraint(h, ('batch', 'length', 'act_embed')), cache_k, cache_v


class Qwen2Model(nn.Module):
  """transformers `Qwen2Model`: embed_tokens, layers (stacked, nn.scan), norm."""

  config: Qwen2Config
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32)
    self.layers = Qwen2DecoderLayer(cfg, self.dtype)
    self.norm = RMSNorm(cfg.rms_norm_eps, self.dtype)

  def embed(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    """input_ids [B, T] -> [B, T, D]."""
    return self.embed_tokens(input_ids)

  def __call__(
    self,
    inputs_embeds: jnp.ndarray,
    positions: jnp.ndarray,
    q_meta: TokenMeta,
    cache: KVCache,
    k_meta: TokenMeta,
    write_index: jnp.ndarray,
    spec: LayerRule | None = None,
    return_hidden_states: bool = False,
  ) -> tuple[jnp.ndarray, KVCache, jnp.ndarray | None]:
    """All layers on T new tokens (arguments as Qwen2DecoderLayer; spec = LayerRule with a leading L axis,
    layer l uses spec[l]).

    Returns:
      normed_hidden [B, T, D] (after the final norm), the updated cache, and hidden_states [L+1, B, T, D]
      or None: hidden_states[l] is the input of layer l and hidden_states[L] the output of the last layer
      BEFORE the final norm (transformers' output_hidden_states applies the norm to its last entry).
    """

    def body(layer, h, xs):
      cache_k, cache_v, rule = xs
      h_out, cache_k, cache_v = layer(h, positions, q_meta, cache_k, cache_v, k_meta, write_index, rule)
      return h_out, (cache_k, cache_v, h if return_hidden_states else None)

    scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True}, length=self.config.num_hidden_layers)
    h, (k, v, inputs) = scan(self.layers, inputs_embeds.astype(self.dtype), (cache.k, cache.v, spec))
    states = jnp.concatenate([inputs, h[None]]) if return_hidden_states else None
    return self.norm(h), KVCache(k, v), states


class Qwen2ForCausalLM(nn.Module):
  """transformers `Qwen2ForCausalLM`: model + lm_head (absent when tie_word_embeddings)."""

  config: Qwen2Config
  dtype: Any = jnp.float32

  def setup(self):
    self.model = Qwen2Model(self.config, self.dtype)
    if not self.config.tie_word_embeddings:
      self.lm_head = _dense(self.config.vocab_size, False, self.dtype, None)

  def embed(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    """input_ids [B, T] -> [B, T, D]."""
    return self.model.embed(input_ids)

  def decode(
    self,
    inputs_embeds: jnp.ndarray,
    positions: jnp.ndarray,
    q_meta: TokenMeta,
    cache: KVCache,
    k_meta: TokenMeta,
    write_index: jnp.ndarray,
    spec: LayerRule | None = None,
    return_hidden_states: bool = False,
  ) -> tuple[jnp.ndarray, KVCache, jnp.ndarray | None]:
    """Qwen2Model.__call__: (normed_hidden [B, T, D], cache, hidden_states [L+1, B, T, D] | None)."""
    return self.model(inputs_embeds, positions, q_meta, cache, k_meta, write_index, spec, return_hidden_states)

  def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
    """hidden [..., D] (final-normed) -> logits [..., V] in float32."""
    if self.config.tie_word_embeddings:
      out = self.model.embed_tokens.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)

  def __call__(
    self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray | None = None, spec: LayerRule | None = None
  ) -> jnp.ndarray:
    """Plain forward of a text batch input_ids [B, T] (attention_mask [B, T], any padding side) ->
    logits [B, T, V]; metadata from `text_meta`, positions from `positions_from_mask`."""
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, bool)
    b, t = input_ids.shape
    meta = text_meta(attention_mask)
    cache = KVCache.empty(self.config, b, t, self.dtype)
    hidden, _, _ = self.decode(
      self.embed(input_ids), positions_from_mask(attention_mask), meta, cache, meta, jnp.zeros((b,), jnp.int32), spec
    )
    return self.logits(hidden)


def _last_valid(valid: AnyArray) -> jnp.ndarray:
  """valid [B, S] -> [B] index of the last valid slot of each row."""
  s = valid.shape[1]
  return s - 1 - jnp.argmax(valid[:, ::-1], axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens'))
def _prefill(
  model: Qwen2ForCausalLM, params, inputs_embeds, positions, prompt_meta: TokenMeta, spec, max_new_tokens: int
):
  """Runs the prompt [B, S] into a cache of S + N slots; returns (cache, k_meta [B, S + N], first-step
  logits [B, V] at each row's last valid slot, the next position [B])."""
  b, s = prompt_meta.index.shape
  new = text_meta(jnp.zeros((b, max_new_tokens), bool), Group.LAST, offset=s)  # empty slots
  k_meta = jax.tree.map(lambda p, n: jnp.concatenate([p, n], axis=1), prompt_meta, new)
  cache = KVCache.empty(model.config, b, s + max_new_tokens, model.dtype)
  hidden, cache, _ = cast(
    tuple[jax.Array, KVCache, Any],
    model.apply(
      {'params': params},
      inputs_embeds,
      positions,
      prompt_meta,
      cache,
      k_meta,
      jnp.zeros((b,), jnp.int32),
      spec,
      method='decode',
    ),
  )
  last = _last_valid(prompt_meta.valid)
  logits = model.apply({'params': params}, hidden[jnp.arange(b), last], method='logits')
  return cache, k_meta, logits, positions[jnp.arange(b), last] + 1


@functools.partial(jax.jit, static_argnames=('model',))
def _decode_step(model: Qwen2ForCausalLM, params, tokens, slot, positions, cache: KVCache, k_meta: TokenMeta, spec):
  """One new token per row: tokens [B] at cache slot `slot` (scalar) and rotary positions [B].
  Returns (logits [B, V], cache, k_meta with the slot valid)."""
  b = tokens.shape[0]
  k_meta = k_meta.replace(valid=k_meta.valid | (k_meta.index == slot))
  q_meta = text_meta(jnp.ones((b, 1), bool), Group.LAST, offset=slot)
  embeds = model.apply({'params': params}, tokens[:, None], method='embed')
  hidden, cache, _ = cast(
    tuple[jax.Array, KVCache, Any],
    model.apply(
      {'params': params},
      embeds,
      positions[:, None],
      q_meta,
      cache,
      k_meta,
      jnp.full((b,), slot, jnp.int32),
      spec,
      method='decode',
    ),
  )
  return model.apply({'params': params}, hidden[:, 0], method='logits'), cache, k_meta


def greedy_tokens(
  logits: jnp.ndarray,
  step: Callable[[jnp.ndarray, int], jnp.ndarray],
  max_new_tokens: int,
  eos_token_id: int | None,
  pad_token_id: int,
) -> jnp.ndarray:
  """The greedy loop every decoder here shares: logits [B, V] of the prompt's last token -> new tokens
  [B, N] int32. `step(token [B], i)` feeds the i-th new token and returns the next logits (it is not
  called after the last token). A row that emitted eos continues with pad_token_id, as transformers."""
  done = jnp.zeros(logits.shape[:1], bool)
  out = []
  for i in range(max_new_tokens):
    token = jnp.where(done, pad_token_id, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
    out.append(token)
    if eos_token_id is not None:
      done |= token == eos_token_id
    if i + 1 < max_new_tokens:
      logits = step(token, i)
  return jnp.stack(out, axis=1)


def generate_from_embeds(
  model: Qwen2ForCausalLM,
  params,
  inputs_embeds: jnp.ndarray,
  positions: jnp.ndarray,
  prompt_meta: TokenMeta,
  max_new_tokens: int,
  *,
  spec: LayerRule | None = None,
  eos_token_id: int | None = None,
  pad_token_id: int = 0,
) -> jnp.ndarray:
  """Greedy decoding from prompt embeddings [B, S, D] (any padding side; the metadata marks padding).

  Args:
    model, params: a Qwen2ForCausalLM and its params.
    inputs_embeds: [B, S, D] prompt embeddings (text or merged multimodal).
    positions: [B, S] rotary positions of the prompt; new tokens continue from the last valid one.
    prompt_meta: TokenMeta [B, S] of the prompt, index = slot (0..S-1); new tokens are Group.LAST.
    max_new_tokens: N.
    spec: optional knockout spec [L, ...] applied to the prompt and to every new token.
    eos_token_id: once a row emits it, the row continues with pad_token_id (as transformers).

  Returns:
    [B, N] int32 new tokens.
  """
  s = prompt_meta.index.shape[1]
  cache, k_meta, logits, pos = _prefill(model, params, inputs_embeds, positions, prompt_meta, spec, max_new_tokens)

  def step(token, i):
    nonlocal cache, k_meta
    logits, cache, k_meta = _decode_step(model, params, token, jnp.int32(s + i), pos + i, cache, k_meta, spec)
    return logits

  return greedy_tokens(logits, step, max_new_tokens, eos_token_id, pad_token_id)


def greedy_generate(
  model: Qwen2ForCausalLM, params, input_ids: jnp.ndarray, attention_mask: jnp.ndarray, max_new_tokens: int, **kwargs
) -> jnp.ndarray:
  """Greedy decoding of a text batch input_ids [B, S] with attention_mask [B, S] (left padding as in
  transformers' generate; positions = cumsum(mask) - 1) -> new tokens [B, max_new_tokens].
  kwargs: spec, eos_token_id, pad_token_id of `generate_from_embeds`."""
  embeds = cast(jax.Array, model.apply({'params': params}, input_ids, method='embed'))
  return generate_from_embeds(
    model, params, embeds, positions_from_mask(attention_mask), text_meta(attention_mask), max_new_tokens, **kwargs
  )
