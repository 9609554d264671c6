"""Candidate frames of a sample: the pool of N frames a selector picks from, decoded once and prompted
over all N frames, with the candidate positions of the ground-truth evidence frames. Shared by the
keyframe diagnosis and the selector's teacher labelling."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxvlm import data, frame_folders, prompts, runs


@dataclasses.dataclass(frozen=True)
class Candidates:
  """A sample with its candidate pool: prompt over all N frames, the Video-LLM's pixels [N, ...] (one
  entry per candidate: `runs.video_inputs` with keyframes=True, so a Qwen2.5-VL temporal patch is one
  candidate), the decoded frames uint8 [N, h, w, 3] (for SigLIP), their frame indices [N] and the
  candidate positions of the ground-truth evidence frames (empty when the benchmark has none)."""

  sample: data.VideoQASample
  prompt: prompts.Prompt
  pixels: np.ndarray
  frames: np.ndarray
  indices: np.ndarray
  evidence: np.ndarray


def prepare_pool(
  samples: Sequence[data.VideoQASample], processor, config, max_positions: int | None = None
) -> tuple[list[Candidates], list[tuple[str, str]]]:
  """Decodes the pool of each sample inside its clip [start_s, end_s] (the whole video when it has none);
  a failing sample becomes (id, reason), never a crash. max_positions: the model's prompt limit."""
  ok, failed = [], []
  for s in samples:
    try:
      if s.answer is None:
        raise ValueError('no answer: the diagnosis needs labelled samples')
      # Inside the sample's clip, from its video file or frame folder.
      frames = frame_folders.sample_frames_of(s, config.num_candidates, rule='pool')
      if len(frames.indices) < config.num_candidates:
        raise ValueError(
          f'{"clip" if s.start_s is not None or s.end_s is not None else "video"} has '
          f'{len(frames.indices)} frames, fewer than the {config.num_candidates} candidates'
        )
      evidence = np.flatnonzero(np.isin(frames.indices, s.evidence_frames or []))
      prompt, pixels = runs.video_inputs(
        processor, s.question, s.options, frames.pixels, frames.timestamps_s, keyframes=True
      )
      runs.check_prompt_length(prompt, max_positions)
      ok.append(Candidates(s, prompt, pixels, frames.pixels, frames.indices, evidence))
    except Exception as e:  # pylint: disable=broad-except  # recorded per sample, the run goes on
      failed.append((s.id, f'{type(e).__name__}: {e}'))
  return ok, failed


def layer_range(text: str, num_layers: int, field: str) -> tuple[int, int]:
  """'' -> all layers; 'a-b' -> (a, b), 0-based inclusive."""
  if not text:
    return 0, num_layers - 1
  try:
    first, last = (int(x) for x in text.split('-'))
  except ValueError:
    raise ValueError(f"{field}={text!r}: expected '' or 'first-last'") from None
  if not 0 <= first <= last < num_layers:
    raise ValueError(f'{field}={text!r} outside the layers 0..{num_layers - 1}')
  return first, last
