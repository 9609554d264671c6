"""The one sample type every benchmark loader produces."""

from __future__ import annotations

import dataclasses

LETTERS = 'ABCDEFGHIJ'
# How a sample's visual input is stored: a video file, or a folder of numbered frame images (MVBench's
# Episodic Reasoning ships TVQA frames extracted at 3 fps instead of videos).
DATA_TYPES = ('video', 'frame')


class SampleError(ValueError):
  """A benchmark item is unusable; the message names the item."""


@dataclasses.dataclass(frozen=True)
class VideoQASample:
  """A multiple-choice (or open) video question.

  Attributes:
    id: unique within its benchmark.
    video: path of the video file, or of the frame folder when data_type is 'frame'.
    question: question text without options.
    options: option texts without letter prefixes, in presentation order (A, B, ...).
    answer: index into options, or None when the split has no public answer.
    start_s: start of the relevant clip in seconds, or None for the whole video.
    end_s: end of the relevant clip in seconds, or None.
    evidence_frames: frame indices that hold the answer (synthetic data), or None.
    task: task / category name.
    meta: other per-item fields a benchmark reports by (e.g. Video-MME duration, domain).
    data_type: 'video' (a file any decoder opens) or 'frame' (a folder of numbered images).
    frame_fps: the rate a frame folder was extracted at, which turns start_s / end_s into frame
      numbers; None for videos (their container knows its rate).
  """

  id: str
  video: str
  question: str
  options: list[str]
  answer: int | None
  start_s: float | None = None
  end_s: float | None = None
  evidence_frames: list[int] | None = None
  task: str = ''
  meta: dict[str, str] = dataclasses.field(default_factory=dict)
  data_type: str = 'video'
  frame_fps: float | None = None

  def __post_init__(self):
    if not self.options:
      raise SampleError(f'sample {self.id!r}: empty option list')
    if len(self.options) > len(LETTERS):
      raise SampleError(f'sample {self.id!r}: {len(self.options)} options, at most {len(LETTERS)}')
    if self.answer is not None and not 0 <= self.answer < len(self.options):
      raise SampleError(f'sample {self.id!r}: answer index {self.answer} out of range for {len(self.options)} options')
    if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
      raise SampleError(f'sample {self.id!r}: end {self.end_s}s before start {self.start_s}s')
    if self.data_type not in DATA_TYPES:
      raise SampleError(f'sample {self.id!r}: data_type {self.data_type!r} is not one of {DATA_TYPES}')
    if self.data_type == 'frame' and not (self.frame_fps and self.frame_fps > 0):
      raise SampleError(f'sample {self.id!r}: a frame folder needs a positive frame_fps, got {self.frame_fps!r}')

  @property
  def answer_letter(self) -> str | None:
    return None if self.answer is None else LETTERS[self.answer]
