"""Masked attention whose allowed key set is derived from O(S) token metadata plus a per-layer rule.

No S x S mask is ever materialised: the kernel walks over key blocks (online softmax) and rebuilds the
[T, block] slice of the mask from the metadata of the queries and of the keys in that block.

Einsum letters: B batch, T query tokens, S key slots, H query heads, K key/value heads, G = H // K,
D head dim, F frames.

Allowed(q, k) =  causal (k.index <= q.index)  and  k.valid
                 and not rule.block[q.group, k.group]
                 and not (rule.cross_frame and both video and both framed and q.frame != k.frame)   # Video Temporal
                 and not (rule.same_frame  and both video and q.frame == k.frame >= 0 and q != k)  # Video Spatial
                 and not (q is text and k.frame >= 0 and rule.frames[k.frame])                      # frame knockout
               or  k is q itself (the diagonal is always allowed, so no row is ever empty: no NaNs).
"""
from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
from flax import struct


class Group(enum.IntEnum):
  """Token groups of a video QA prompt. Every group but VIDEO counts as text."""
  SYSTEM = 0
  VIDEO = 1      # frame tokens and the image_newline token after them (frame index -1)
  QUESTION = 2
  OPTIONS = 3
  LAST = 4       # the assistant prefix / answer tokens; the option letter is read off the last one


NUM_GROUPS = len(Group)


@struct.dataclass
class TokenMeta:
  """Per-token metadata, every field [B, N] (N = T for queries, S for key slots).

  index: int32 slot in the sequence, used for causality (query attends to keys with index <= its own).
  valid: bool, False for padding and for empty KV-cache slots.
  group: int32 `Group` value.
  frame: int32 frame index of a video token, -1 for text and for the image_newline token.
  """
  index: jnp.ndarray
  valid: jnp.ndarray
  group: jnp.ndarray
  frame: jnp.ndarray

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
  """
  block: jnp.ndarray
  cross_frame: jnp.ndarray
  same_frame: jnp.ndarray
  frames: jnp.ndarray


def _knocked_out(q: TokenMeta, k: TokenMeta, rule: LayerRule) -> jnp.ndarray:
  """Edges the rule removes, bool [B, T, N] (before the diagonal is added back)."""
  q_group, k_group = q.group[:, :, None], k.group[:, None, :]
  q_frame, k_frame = q.frame[:, :, None], k.frame[:, None, :]
  both_video = (q_group == Group.VIDEO) & (k_group == Group.VIDEO)
  both_framed = both_video & (q_frame >= 0) & (k_frame >= 0)
  out = rule.block[q_group, k_group]
  out |= rule.cross_frame & both_framed & (q_frame != k_frame)
  out |= rule.same_frame & both_framed & (q_frame == k_frame)
  num_frames = rule.frames.shape[-1]
  if num_frames:
    # Frames beyond the rule's F are never knocked out; clip only keeps the gather in range.
    in_range = (k_frame >= 0) & (k_frame < num_frames)
    frame_off = rule.frames[jnp.clip(k_frame, 0, num_frames - 1)] & in_range
    out |= (q_group != Group.VIDEO) & frame_off
  return out


def allowed(q: TokenMeta, k: TokenMeta, rule: LayerRule | None) -> jnp.ndarray:
  """The mask of the module docstring for queries q [B, T] and keys k [B, N]: bool [B, T, N]."""
  q_index, k_index = q.index[:, :, None], k.index[:, None, :]
  ok = (k_index <= q_index) & k.valid[:, None, :]
  if rule is not None:
    ok &= ~_knocked_out(q, k, rule)
  return ok | (k_index == q_index)


def _pad_keys(x: jnp.ndarray, pad: int, value) -> jnp.ndarray:
  """Pads axis 1 (the key axis) of x with `pad` copies of value."""
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _to_blocks(x: jnp.ndarray, num_blocks: int) -> jnp.ndarray:
  """[B, nb * blk, ...] -> [nb, B, blk, ...], the block axis first for lax.scan."""
  x = x.reshape(x.shape[0], num_blocks, -1, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def masked_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, q_meta: TokenMeta,
                     k_meta: TokenMeta, rule: LayerRule | None, *, block_size: int = 512,
                     frame_mass: int = 0) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
  """Scaled dot-product attention over the keys `allowed` by the metadata and the rule.

  Online softmax over key blocks: memory is O(B * H * T * block), never O(T * S). Accumulators are
  float32 whatever the input dtype. A query whose own slot is not among the keys and whose other keys
  are all masked gets a zero output (cannot happen when the caller writes the query's k/v first).

  Args:
    q: [B, T, H, D] queries, H = K * G; query head h reads key/value head h // G (as HF repeat_kv).
    k: [B, S, K, D] keys.
    v: [B, S, K, D] values.
    q_meta: TokenMeta [B, T] of the queries.
    k_meta: TokenMeta [B, S] of the key slots.
    rule: LayerRule of this layer (traced arrays) or None for causal + valid + diagonal only.
    block_size: keys per block (static); S is padded with invalid slots to a multiple of it.
    frame_mass: F > 0 (static) also returns the attention probability that each query head puts on
      the tokens of each frame 0..F-1, accumulated block by block like the output (keys of frame -1,
      e.g. text and image_newline, count for no frame).

  Returns:
    [B, T, H, D] in q's dtype; with frame_mass, (that, mass [B, T, H, F] float32).
  """
  batch, num_q, num_heads, head_dim = q.shape
  num_keys, num_kv_heads = k.shape[1], k.shape[2]
  groups = num_heads // num_kv_heads
  block = min(block_size, num_keys)
  num_blocks = -(-num_keys // block)
  pad = num_blocks * block - num_keys
  # Padding slots: invalid, and an index no query reaches, so neither causal nor diagonal.
  k_meta = TokenMeta(index=_pad_keys(k_meta.index, pad, jnp.iinfo(jnp.int32).max),
                     valid=_pad_keys(k_meta.valid, pad, False),
                     group=_pad_keys(k_meta.group, pad, 0),
                     frame=_pad_keys(k_meta.frame, pad, -1))
  xs = (_to_blocks(_pad_keys(k, pad, 0), num_blocks), _to_blocks(_pad_keys(v, pad, 0), num_blocks),
        jax.tree.map(lambda a: _to_blocks(a, num_blocks), k_meta))
  q = q.reshape(batch, num_q, num_kv_heads, groups, head_dim)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  # Masked scores get a finite floor and p is zeroed explicitly: no inf - inf, no NaN in any gradient.
  floor = jnp.finfo(jnp.float32).min

  def step(carry, x):
    row_max, row_sum, acc = carry[:3]  # [B, K, G, T], [B, K, G, T], [B, K, G, T, D]
    k_blk, v_blk, meta_blk = x
    scores = jnp.einsum('btkgd,bskd->bkgts', q, k_blk, preferred_element_type=jnp.float32) * scale
    mask = allowed(q_meta, meta_blk, rule)[:, None, None]  # [B, 1, 1, T, blk]
    scores = jnp.where(mask, scores, floor)
    new_max = jnp.maximum(row_max, scores.max(-1))
    p = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
    correction = jnp.exp(row_max - new_max)
    row_sum = row_sum * correction + p.sum(-1)
    pv = jnp.einsum('bkgts,bskd->bkgtd', p.astype(v_blk.dtype), v_blk,
                    preferred_element_type=jnp.float32)
    acc = acc * correction[..., None] + pv
    if not frame_mass:
      return (new_max, row_sum, acc), None
    in_frame = (meta_blk.frame[..., None] == jnp.arange(frame_mass)).astype(jnp.float32)  # [B, blk, F]
    mass = carry[3] * correction[..., None] + jnp.einsum('bkgts,bsf->bkgtf', p, in_frame)
    return (new_max, row_sum, acc, mass), None

  stats_shape = (batch, num_kv_heads, groups, num_q)
  init = (jnp.full(stats_shape, floor, jnp.float32), jnp.zeros(stats_shape, jnp.float32),
          jnp.zeros((*stats_shape, head_dim), jnp.float32))
  if frame_mass:
    init += (jnp.zeros((*stats_shape, frame_mass), jnp.float32),)
  final, _ = jax.lax.scan(step, init, xs)
  row_sum, acc = final[1:3]
  denom = jnp.where(row_sum > 0, row_sum, 1.0)[..., None]
  out = jnp.moveaxis(acc / denom, 3, 1).reshape(batch, num_q, num_heads, head_dim)  # [B, T, H, D]
  if not frame_mass:
    return out.astype(q.dtype)
  mass = jnp.moveaxis(final[3] / denom, 3, 1).reshape(batch, num_q, num_heads, frame_mass)
  return out.astype(q.dtype), mass
