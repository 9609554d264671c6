"""Multiple-choice video prompts: text -> input ids + token layout -> padded batches -> option scores.

Everything that knows where a prompt's parts sit lives here: the per-token layout (`TokenLayout`), the
slot indices the answer and the auxiliary losses read, and the one option scorer (`option_logprobs`:
log p(option letter) under the full-vocabulary softmax at the answer slot) that every experiment,
the sweep engine and the evaluations use.

Token groups (see `attention.Group`), read off the rendered prompt by character offsets:
  SYSTEM    everything before the video (system turn, user header);
  VIDEO     the expanded `<video>` slots: frame f owns tokens_per_frame slots, the image_newline slot
            after the last frame has frame -1;
  QUESTION  the text after the video up to the first option line;
  OPTIONS   the option lines ("A. ...");
  LAST      the answer instruction, the end of the user turn and the assistant header: the tokens
            right before the answer, the last of which predicts the option letter.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Self, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm.models.attention import AnyArray, Group, TokenMeta
from jaxvlm.processor import ANSWER_INSTRUCTION, VideoProcessor


@struct.dataclass
class TokenLayout:
  """Per-token layout of a prompt batch, every field [B, S]: group (`Group`), frame (-1 if not a
  frame token), positions (rotary position ids; [3, B, S] M-RoPE ids for Qwen2.5-VL, see
  `jaxvlm.models.qwen2_5_vl`), valid (False for padding)."""

  group: AnyArray
  frame: AnyArray
  positions: AnyArray
  valid: AnyArray

  if TYPE_CHECKING:  # flax.struct.dataclass adds it at runtime

    def replace(self, **updates) -> Self: ...

  def meta(self) -> TokenMeta:
    index = jnp.broadcast_to(jnp.arange(self.group.shape[-1], dtype=jnp.int32), self.group.shape)
    return TokenMeta(index=index, valid=self.valid, group=self.group, frame=self.frame)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt: text fed to the tokenizer, input_ids / group / frame int32 [S], num_frames (knockout
  frames: LLaVA frames, Qwen2.5-VL temporal patches), positions: None (rotary position = slot index) or
  M-RoPE positions int32 [3, S] (Qwen2.5-VL)."""

  text: str
  input_ids: np.ndarray
  group: np.ndarray
  frame: np.ndarray
  num_frames: int
  positions: np.ndarray | None = None

  @property
  def num_video_tokens(self) -> int:
    return int((self.group == Group.VIDEO).sum())


def build_prompt(processor: VideoProcessor, question: str, options: Sequence[str], num_frames: int) -> Prompt:
  """The checkpoint's chat-template prompt for a multiple-choice video question, with its layout."""
  user_text = processor.question_text(question, options)
  text = processor.render(user_text)
  enc = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = np.asarray(enc['input_ids'], np.int32)
  starts = np.asarray([a for a, _ in enc['offset_mapping']])
  user_at = text.index(user_text)
  options_at = user_at + len(question) + 1
  last_at = user_at + user_text.rindex(ANSWER_INSTRUCTION)
  video_at = text.index(processor.video_token)
  group = np.select(
    [starts < video_at, starts < options_at, starts < last_at],
    [Group.SYSTEM, Group.QUESTION, Group.OPTIONS],
    Group.LAST,
  ).astype(np.int32)
  is_video = ids == processor.video_token_id
  if is_video.sum() != 1:
    raise ValueError(f'expected one video placeholder in the prompt, found {int(is_video.sum())}')
  group[is_video] = Group.VIDEO
  expanded = processor.expand_video_tokens(ids, num_frames)
  n_video = processor.num_video_tokens(num_frames)
  repeats = np.where(is_video, n_video, 1)
  video_frames = np.append(np.arange(n_video - 1) // processor.tokens_per_frame, -1)
  frame = np.full(expanded.shape, -1, np.int32)
  v0 = int(np.flatnonzero(is_video)[0])
  frame[v0 : v0 + n_video] = video_frames
  return Prompt(text, expanded, np.repeat(group, repeats), frame, num_frames)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Right-padded prompts: input_ids [B, S], layout [B, S], answer_index [B] (last real slot)."""

  input_ids: np.ndarray
  layout: TokenLayout
  answer_index: np.ndarray


def collate(prompts: Sequence[Prompt], pad_id: int, pad_multiple: int = 64) -> PromptBatch:
  """Right-pads to the longest prompt rounded up to `pad_multiple` (fewer distinct shapes, fewer
  compiles). Padding slots are invalid keys. Positions [B, S] run on over the padding (unused by real
  tokens); prompts with M-RoPE positions give [3, B, S] with 0 in padding slots (as
  `qwen2_5_vl.rope_index` under an attention mask)."""
  mrope = [p.positions is not None for p in prompts]
  if any(mrope) and not all(mrope):
    raise ValueError(
      f'prompts {[i for i, m in enumerate(mrope) if not m]} have no M-RoPE positions, '
      'the others do: one batch holds prompts of one model family'
    )
  lengths = np.asarray([len(p.input_ids) for p in prompts])
  s = int(-(-lengths.max() // pad_multiple) * pad_multiple)
  b = len(prompts)
  ids = np.full((b, s), pad_id, np.int32)
  group = np.full((b, s), Group.LAST, np.int32)
  frame = np.full((b, s), -1, np.int32)
  for i, p in enumerate(prompts):
    ids[i, : lengths[i]], group[i, : lengths[i]], frame[i, : lengths[i]] = p.input_ids, p.group, p.frame
  valid = np.arange(s)[None] < lengths[:, None]
  if all(mrope):
    positions = np.zeros((3, b, s), np.int32)
    for i, p in enumerate(prompts):
      assert p.positions is not None  # all(mrope)
      positions[:, i, : lengths[i]] = p.positions
  else:
    positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
  return PromptBatch(
    ids, TokenLayout(group=group, frame=frame, positions=positions, valid=valid), (lengths - 1).astype(np.int32)
  )


# ---------------------------------------------------------------- the option scorer


def option_logprobs(model, params, hidden_last: jnp.ndarray, option_ids: jnp.ndarray) -> jnp.ndarray:
  """hidden_last [..., D] (final-normed, at the answer slot) -> log p(option letter) [..., O] under the
  full-vocabulary softmax. `model` is any Video-LLM with a `logits` method (the tied or untied head)."""
  logits = model.apply({'params': params}, hidden_last, method='logits')
  return jnp.take(jax.nn.log_softmax(logits, axis=-1), option_ids, axis=-1)


def positions_at(positions: AnyArray, idx: jnp.ndarray) -> jnp.ndarray:
  """Layout positions [B, S] or M-RoPE [3, B, S] at slots idx [B, T] -> what a decoder layer takes:
  [B, T], or batch-first [B, T, 3] (the adapter every tail recompute of an M-RoPE model goes through)."""
  if positions.ndim == 2:
    return jnp.take_along_axis(positions, idx, axis=1)
  return jnp.take_along_axis(jnp.moveaxis(positions, 0, -1), idx[..., None], axis=1)


def at_slot(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """x [B, S, ...], index [B] -> [B, ...]: each row's value at its own slot."""
  return jnp.take_along_axis(x, index.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=('model',))
def answer_logprobs(
  model, params, input_ids, pixels, layout: TokenLayout, answer_index, option_ids, spec=None
) -> jnp.ndarray:
  """Option log-probs [B, O] of one full forward of prompts input_ids [B, S] with pixels
  [B, F, H, W, C], under knockout `spec` (None: clean)."""
  out = model.apply({'params': params}, input_ids, pixels, layout.positions, layout.meta(), spec=spec)
  return option_logprobs(model, params, at_slot(out.hidden, answer_index), option_ids)


# ---------------------------------------------------------------- slot indices


def question_end_index(group: np.ndarray) -> np.ndarray:
  """group [B, S] -> int32 [B]: the last slot of each row's question (before the option lines)."""
  is_question = group == Group.QUESTION
  if not is_question.any(axis=1).all():
    raise ValueError('a prompt row has no question slot')
  return (group.shape[1] - 1 - np.argmax(is_question[:, ::-1], axis=1)).astype(np.int32)


def option_end_index(input_ids: np.ndarray, group: np.ndarray, letter_ids: np.ndarray) -> np.ndarray:
  """input_ids, group [B, S] -> int32 [B, O]: the last slot of each option line ("B. red ring")."""
  out = np.zeros((input_ids.shape[0], len(letter_ids)), np.int32)
  for b in range(input_ids.shape[0]):
    options = group[b] == Group.OPTIONS
    starts = np.flatnonzero(options & np.isin(input_ids[b], letter_ids))
    if len(starts) != len(letter_ids):
      raise ValueError(f'row {b}: expected {len(letter_ids)} option lines, found {len(starts)}')
    out[b] = np.append(starts[1:], np.flatnonzero(options)[-1] + 1) - 1
  return out


def frame_end_index(frame: jnp.ndarray, num_frames: int) -> jnp.ndarray:
  """frame [B, S] (frame of each slot, -1 if none) -> [B, F] the last slot of each frame."""
  index = jnp.arange(frame.shape[1], dtype=jnp.int32)
  own = frame[:, None, :] == jnp.arange(num_frames, dtype=frame.dtype)[None, :, None]  # [B, F, S]
  return jnp.max(jnp.where(own, index, -1), axis=-1)
