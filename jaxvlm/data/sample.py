"""The one sample type every benchmark loader produces."""

from __future__ import annotations

import dataclasses

LETTERS = 'ABCDEFGHIJ'


class SampleError(ValueError):
  """A benchmark item is unusable; the message names the item."""


@dataclasses.dataclass(frozen=True)
class VideoQASample:
  """A multiple-choice (or open) video question.

  Attributes:
    id: unique within its benchmark.
    video: path of the video file.
    question: question text without options.
    options: option texts without letter prefixes, in presentation order (A, B, ...).
    answer: index into options, or None when the split has no public answer.
    start_s: start of the relevant clip in seconds, or None for the whole video.
    end_s: end of the relevant clip in seconds, or None.
    evidence_frames: frame indices that hold the answer (synthetic data), or None.
    task: task / category name.
    meta: other per-item fields a benchmark reports by (e.g. Video-MME duration, domain).
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

  def __post_init__(self):
    if not self.options:
      raise SampleError(f'sample {self.id!r}: empty option list')
    if len(self.options) > len(LETTERS):
      raise SampleError(f'sample {self.id!r}: {len(self.options)} options, at most {len(LETTERS)}')
    if self.answer is not None and not 0 <= self.answer < len(self.options):
      raise SampleError(f'sample {self.id!r}: answer index {self.answer} out of range for '
                        f'{len(self.options)} options')
    if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
      raise SampleError(f'sample {self.id!r}: end {self.end_s}s before start {self.start_s}s')

  @property
  def answer_letter(self) -> str | None:
    return None if self.answer is None else LETTERS[self.answer]
