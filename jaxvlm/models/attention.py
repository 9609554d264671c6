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
