"""Multiple-choice video prompts: text -> input ids + token layout -> padded batches -> option scores.

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
from typing import Sequence

import numpy as np

from jaxvlm.knockout import TokenLayout
from jaxvlm.models.attention import Group
from jaxvlm.processor import ANSWER_INSTRUCTION, VideoProcessor


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt: text fed to the tokenizer, input_ids / group / frame int32 [S]."""
  text: str
  input_ids: np.ndarray
  group: np.ndarray
  frame: np.ndarray
  num_frames: int

  @property
  def num_video_tokens(self) -> int:
    return int((self.group == Group.VIDEO).sum())


def build_prompt(processor: VideoProcessor, question: str, options: Sequence[str],
                 num_frames: int) -> Prompt:
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
  group = np.select([starts < video_at, starts < options_at, starts < last_at],
                    [Group.SYSTEM, Group.QUESTION, Group.OPTIONS], Group.LAST).astype(np.int32)
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
  frame[v0:v0 + n_video] = video_frames
  return Prompt(text, expanded, np.repeat(group, repeats), frame, num_frames)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Right-padded prompts: input_ids [B, S], layout [B, S], answer_index [B] (last real slot)."""
  input_ids: np.ndarray
  layout: TokenLayout
  answer_index: np.ndarray


def collate(prompts: Sequence[Prompt], pad_id: int, pad_multiple: int = 64) -> PromptBatch:
  """Right-pads to the longest prompt rounded up to `pad_multiple` (fewer distinct shapes, fewer
  compiles). Padding slots are invalid keys; positions run on (unused by real tokens)."""
  lengths = np.asarray([len(p.input_ids) for p in prompts])
  s = int(-(-lengths.max() // pad_multiple) * pad_multiple)
  b = len(prompts)
  ids = np.full((b, s), pad_id, np.int32)
  group = np.full((b, s), Group.LAST, np.int32)
  frame = np.full((b, s), -1, np.int32)
  for i, p in enumerate(prompts):
    ids[i, :lengths[i]], group[i, :lengths[i]], frame[i, :lengths[i]] = p.input_ids, p.group, p.frame
  valid = np.arange(s)[None] < lengths[:, None]
  positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
  return PromptBatch(ids, TokenLayout(group=group, frame=frame, positions=positions, valid=valid),
                     (lengths - 1).astype(np.int32))
