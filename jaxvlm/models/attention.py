"""Masked attention whose allowed key set is derived from O(S) token metadata plus a per-layer rule.

No S x S mask is ever materialised: the kernel walks over (query block, key block) tiles (online
softmax) and rebuilds each tile of the mask from the metadata of its queries and keys.

Einsum letters: B batch, T query tokens, S key slots, H query heads, K key/value heads, G = H // K,
D head dim, F frames; C query rows per key row (states of a knockout sweep), R = C * B.

Allowed(q, k) =  causal (k.index <= q.index)  and  k.valid
                 and not rule.block[q.group, k.group]
                 and not (rule.cross_frame and both video and both framed and q.frame != k.frame)   # Video Temporal
                 and not (rule.same_frame  and both video and q.frame == k.frame >= 0 and q != k)  # Video Spatial
                 and not (q is text and k.frame >= 0 and rule.frames[k.frame])                      # frame knockout
               or  k is q itself (the diagonal is always allowed, so no row is ever empty: no NaNs).
"""

from __future__ import annotations

import enum
import functools
from typing import TYPE_CHECKING, Self

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Fields of the metadata / rule pytrees: numpy where they are built on the host (prompts, knockout
# specs), jax inside a jitted forward.
AnyArray = jax.Array | np.ndarray


class Group(enum.IntEnum):
  """Token groups of a video QA prompt. Every group but VIDEO counts as text."""

  SYSTEM = 0
  VIDEO = 1  # frame tokens and the image_newline token after them (frame index -1)
  QUESTION = 2
  OPTIONS = 3
  LAST = 4  # the assistant prefix / answer tokens; the option letter is read off the last one


NUM_GROUPS = len(Group)


@struct.dataclass
class TokenMeta:
  """Per-token metadata, every field [B, N] (N = T for queries, S for key slots).

  index: int32 slot in the sequence, used for causality (query attends to keys with index <= its own).
  valid: bool, False for padding and for empty KV-cache slots.
  group: int32 `Group` value.
  frame: int32 frame index of a video token, -1 for text and for the image_newline token.
  """

  index: AnyArray
  valid: AnyArray
  group: AnyArray
  frame: AnyArray

  if TYPE_CHECKING:  # flax.struct.dataclass adds it at runtime

    def replace(self, **updates) -> Self: ...

  def take(self, idx: jnp.ndarray) -> "TokenMeta":
    """Gathers tokens idx [B, T] along the token axis."""
    pick = lambda a: jnp.take_along_axis(a, idx, axis=1)
    return TokenMeta(pick(self.index), pick(self.valid), pick(self.group), pick(self.frame))


@struct.dataclass
class LayerRule:
  """The knockout rule of ONE layer. A `KnockoutSpec` (jaxvlm.knockout) is this with a leading layer axis.

  block: bool [NUM_GROUPS, NUM_GROUPS], query group -> key group edges removed.
  cross_frame: bool [], Video Temporal: video -> video tokens of another frame removed.
  same_frame: bool [], Video Spatial: video -> other tokens of its own frame removed (itself kept).
  frames: bool [F], text queries may not attend to the tokens of frame f.
  Every field may also carry a leading batch axis [B, ...]: one rule per batch row (e.g. the states of
  a knockout sweep folded into the batch).
  """

  block: AnyArray
  cross_frame: AnyArray
  same_frame: AnyArray
  frames: AnyArray

  if TYPE_CHECKING:  # flax.struct.dataclass adds it at runtime

    def replace(self, **updates) -> Self: ...


def _knocked_out(q: TokenMeta, k: TokenMeta, rule: LayerRule) -> jnp.ndarray:
  """Edges the rule removes, bool [B, T, N] (before the diagonal is added back)."""
  b = q.group.shape[0]
  per_row = jnp.ndim(rule.cross_frame) == 1
  rows = lambda x: jnp.broadcast_to(x if per_row else x[None], (b,) + jnp.shape(x)[per_row:])
  # Each query group's blocked key groups as bits: one O(T) gather, then a shift per edge (not a
  # [T, N] gather into block).
  bits = (rows(rule.block).astype(jnp.int32) << jnp.arange(NUM_GROUPS, dtype=jnp.int32)).sum(-1)  # [B, G]
  q_bits = jnp.take_along_axis(bits, q.group, axis=1)  # [B, T]
  q_group, k_group = q.group[:, :, None], k.group[:, None, :]
  q_frame, k_frame = q.frame[:, :, None], k.frame[:, None, :]
  out = ((q_bits[:, :, None] >> k_group) & 1).astype(bool)
  both_video = (q_group == Group.VIDEO) & (k_group == Group.VIDEO)
  both_framed = both_video & (q_frame >= 0) & (k_frame >= 0)
  out |= rows(rule.cross_frame)[:, None, None] & both_framed & (q_frame != k_frame)
  out |= rows(rule.same_frame)[:, None, None] & both_framed & (q_frame == k_frame)
  num_frames = rule.frames.shape[-1]
  if num_frames:
    # Frames beyond the rule's F are never knocked out; clip only keeps the gather in range.
    in_range = (k.frame >= 0) & (k.frame < num_frames)
    frame_off = jnp.take_along_axis(rows(rule.frames), jnp.clip(k.frame, 0, num_frames - 1), axis=1)
    out |= (q_group != Group.VIDEO) & (frame_off & in_range)[:, None, :]
  return out


def allowed(q: TokenMeta, k: TokenMeta, rule: LayerRule | None) -> AnyArray:
  """The mask of the module docstring for queries q [B, T] and keys k [B, N]: bool [B, T, N]."""
  q_index, k_index = q.index[:, :, None], k.index[:, None, :]
  ok = (k_index <= q_index) & k.valid[:, None, :]
  if rule is not None:
    ok &= ~_knocked_out(q, k, rule)
  return ok | (k_index == q_index)


def _pad_tokens(x: AnyArray, pad: int, value) -> jnp.ndarray:
  """Pads axis 1 (the token axis) of x with `pad` copies of value."""
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _to_blocks(x: jnp.ndarray, num_blocks: int) -> jnp.ndarray:
  """[B, nb * blk, ...] -> [nb, B, blk, ...], the block axis first for lax.scan / lax.map."""
  x = x.reshape(x.shape[0], num_blocks, -1, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _pad_meta(meta: TokenMeta, pad: int, index) -> TokenMeta:
  """Appends `pad` invalid, frameless slots with the given index."""
  return TokenMeta(
    index=_pad_tokens(meta.index, pad, index),
    valid=_pad_tokens(meta.valid, pad, False),
    group=_pad_tokens(meta.group, pad, 0),
    frame=_pad_tokens(meta.frame, pad, -1),
  )


def _key_blocks(k: jnp.ndarray, v: jnp.ndarray, meta: TokenMeta, block_size: int, states: int):
  """Key tiles for the scan. k, v [R, N, K, D] and meta [R, N], with R = B (keys shared by every
  state) or R = C * B (each query row's own keys, states = C) -> (k, v [nk, B, K, kb, D] or
  [nk, B, K, C, kb, D], meta [nk, R, kb], smallest index of each tile [nk])."""
  block = min(block_size, k.shape[1])
  num_blocks = -(-k.shape[1] // block)
  pad = num_blocks * block - k.shape[1]
  # Padding key slots: invalid, an index no query reaches.
  meta = _pad_meta(meta, pad, jnp.iinfo(jnp.int32).max)
  meta = jax.tree.map(lambda a: _to_blocks(a, num_blocks), meta)

  def to_heads(x):
    # Heads before tokens ([B, K, ., D]): batched matmuls in this layout are several times faster on
    # CPU than with the token axis between batch and head axes.
    x = _to_blocks(_pad_tokens(x, pad, 0), num_blocks)  # [nk, R, kb, K, D]
    if states == 1:
      return jnp.moveaxis(x, 3, 2)
    x = x.reshape(num_blocks, states, -1, *x.shape[2:])  # [nk, C, B, kb, K, D]
    return jnp.transpose(x, (0, 2, 4, 1, 3, 5))

  return to_heads(k), to_heads(v), meta, meta.index.min(axis=(1, 2))


def masked_attention(
  q: jnp.ndarray,
  k: jnp.ndarray,
  v: jnp.ndarray,
  q_meta: TokenMeta,
  k_meta: TokenMeta,
  rule: LayerRule | None,
  *,
  own: tuple[jnp.ndarray, jnp.ndarray, TokenMeta] | None = None,
  block_size: int = 512,
  frame_mass: int = 0,
) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
  """Scaled dot-product attention over the keys `allowed` by the metadata and the rule.

  Tiled online softmax: queries and keys are cut into blocks of `block_size`; for each query block
  the key blocks are visited in turn and a tile is skipped (lax.cond) when causality alone rules it
  out (every key index > every query index of the block), so a full causal forward computes about
  half the tiles, or when the rule masks all of it (e.g. Video Temporal, frames far apart). Memory is
  O(R * H * block^2), never O(T * S). Accumulators are float32 whatever the input dtype. A query whose
  own slot is not among the keys and whose other keys are all masked gets a zero output (cannot happen
  when the caller writes the query's k/v first). The causal skip reads only the metadata, so it stays
  a real branch under vmap over rules; the rule skip pays off when the rules are per batch row
  (`LayerRule` doc) rather than vmapped.

  Query rows may outnumber key rows: with R = C * B, row c * B + b reads key row b, and the C rows of
  a sample score against ONE copy of its keys in the same matmuls (the states of a knockout sweep share
  the clean prefix). Keys a row has of its own (a state's recomputed tail) come in `own`.

  Args:
    q: [R, T, H, D] queries, H = K * G; query head h reads key/value head h // G (as HF repeat_kv).
      R = C * B (C = 1: a plain batch).
    k: [B, S, K, D] keys shared by the C rows of each sample.
    v: [B, S, K, D] values.
    q_meta: TokenMeta [R, T] of the queries.
    k_meta: TokenMeta [B, S] of the key slots.
    rule: LayerRule of this layer (traced arrays), per query row [R, ...] or shared; None for
      causal + valid + diagonal only.
    own: optional (k, v [R, N, K, D], meta TokenMeta [R, N]): each query row's own keys, visited after
      the shared ones. The caller hides from k_meta the shared slots they replace.
    block_size: queries and keys per tile (static); T, S and N are padded to multiples of it.
    frame_mass: F > 0 (static) also returns the attention probability that each query head puts on
      the tokens of each frame 0..F-1, accumulated block by block like the output (keys of frame -1,
      e.g. text and image_newline, count for no frame).

  Returns:
    [R, T, H, D] in q's dtype; with frame_mass, (that, mass [R, T, H, F] float32).
  """
  rows, num_q, num_heads, head_dim = q.shape
  batch, num_kv_heads = k.shape[0], k.shape[2]
  if rows % batch:
    raise ValueError(f'{rows} query rows are not a multiple of {batch} key rows')
  states, groups = rows // batch, num_heads // num_kv_heads
  q_block = min(block_size, num_q)
  num_q_blocks = -(-num_q // q_block)
  q_pad = num_q_blocks * q_block - num_q
  # Padding queries: an index below every key, so they see nothing (zero output, dropped) and never
  # keep a tile alive.
  q_meta = _pad_meta(q_meta, q_pad, jnp.iinfo(jnp.int32).min)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  q = _pad_tokens(q, q_pad, 0).reshape(states, batch, num_q_blocks, q_block, num_kv_heads, groups, head_dim)
  queries = (
    jnp.transpose(q, (2, 1, 4, 0, 5, 3, 6)),  # [nq, B, K, C, G, qb, D]
    jax.tree.map(lambda a: _to_blocks(a, num_q_blocks), q_meta),
  )  # [nq, R, qb]
  key_sets = [(False, _key_blocks(k, v, k_meta, block_size, 1))]
  if own is not None:
    key_sets.append((True, _key_blocks(*own, block_size, states)))
  # Masked scores get a finite floor (no inf - inf, no NaN in any gradient), which exp turns into 0.
  floor = jnp.finfo(jnp.float32).min
  by_sample = lambda x: x.reshape(states, batch, *x.shape[1:])  # [R, ...] -> [C, B, ...]

  def query_block(x):
    q_blk, q_meta_blk = x
    q_last = q_meta_blk.index.max()

    def tile(carry, key_x, mask, is_own):
      row_max, row_sum, acc = carry[:3]  # [B, K, C, G, qb], [B, K, C, G, qb], [B, K, C, G, qb, D]
      k_blk, v_blk, meta_blk = key_x
      c = 'c' if is_own else ''  # own keys carry the state axis, shared keys do not
      scores = jnp.einsum(f'bkcgtd,bk{c}sd->bkcgts', q_blk, k_blk, preferred_element_type=jnp.float32)
      mask = jnp.swapaxes(by_sample(mask), 0, 1)[:, None, :, None]  # [B, 1, C, 1, qb, kb]
      scores = jnp.where(mask, scores, floor)
      new_max = jnp.maximum(row_max, scores.max(-1))
      # Masked scores sit at the floor, so exp sends them to exactly 0 with no second select over the
      # tile; a row with nothing allowed yet (max still the floor) is shifted by 0 for the same effect.
      p = jnp.exp(scores - jnp.where(new_max > floor, new_max, 0.0)[..., None])
      correction = jnp.exp(row_max - new_max)
      row_sum = row_sum * correction + p.sum(-1)
      pv = jnp.einsum(f'bkcgts,bk{c}sd->bkcgtd', p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
      acc = acc * correction[..., None] + pv
      if not frame_mass:
        return new_max, row_sum, acc
      in_frame = (meta_blk.frame[..., None] == jnp.arange(frame_mass)).astype(jnp.float32)  # [R', kb, F]
      if is_own:
        in_frame = by_sample(in_frame)
      mass = carry[3] * correction[..., None] + jnp.einsum(f'bkcgts,{c}bsf->bkcgtf', p, in_frame)
      return new_max, row_sum, acc, mass

    def masked_tile(carry, key_x, is_own):
      meta_blk = key_x[2] if is_own else jax.tree.map(lambda a: jnp.tile(a, (states, 1)), key_x[2])
      mask = allowed(q_meta_blk, meta_blk, rule)  # [R, qb, kb]
      if rule is None:
        return tile(carry, key_x, mask, is_own)
      # A knockout can empty a whole tile (Video Temporal: another frame's keys); its update would be
      # the identity, so skip it.
      return jax.lax.cond(mask.any(), functools.partial(tile, is_own=is_own), lambda c, *_: c, carry, key_x, mask)

    def scan_keys(carry, key_set):
      is_own, blocks = key_set

      def step(carry, key_x):
        visit = functools.partial(masked_tile, is_own=is_own)
        return jax.lax.cond(key_x[3] <= q_last, visit, lambda c, _: c, carry, key_x[:3]), None

      return jax.lax.scan(step, carry, blocks)[0]

    stats_shape = (batch, num_kv_heads, states, groups, q_block)
    carry: tuple[jax.Array, ...] = (
      jnp.full(stats_shape, floor, jnp.float32),
      jnp.zeros(stats_shape, jnp.float32),
      jnp.zeros((*stats_shape, head_dim), jnp.float32),
    )
    if frame_mass:
      carry += (jnp.zeros((*stats_shape, frame_mass), jnp.float32),)
    for key_set in key_sets:
      carry = scan_keys(carry, key_set)
    denom = jnp.where(carry[1] > 0, carry[1], 1.0)[..., None]
    return (carry[2] / denom,) + ((carry[3] / denom,) if frame_mass else ())

  outs = jax.lax.map(query_block, queries)  # each [nq, B, K, C, G, qb, .]

  def to_tokens(x):  # [nq, B, K, C, G, qb, E] -> [R, T, H, E]
    x = jnp.transpose(x, (3, 1, 0, 5, 2, 4, 6)).reshape(rows, num_q_blocks * q_block, num_heads, -1)
    return x[:, :num_q]

  out = to_tokens(outs[0]).astype(q.dtype)
  return (out, to_tokens(outs[1])) if frame_mass else out
