"""Video decoding (PyAV, or decord) and frame sampling rules (preprocessing to model input: `pixels.py`).

Index rules are pure functions of the frame count so that selectors, oracles and tests share them:

- `uniform_indices`: N indices spread evenly over the whole video, first and last frame included
  (`np.linspace(0, T - 1, N)` truncated to int, the rule of the LLaVA-OneVision evaluations).
- `fps_indices`: frames at multiples of `video_fps / target_fps`, uniform fallback above a cap.
- `candidate_pool`: N_c distinct uniform indices from which keyframe selectors choose k.

Fewer frames than requested (T < N): `uniform_indices` still returns N indices and repeats frames
(linspace over [0, T - 1]), so the model always sees N frames and the token layout is fixed;
`candidate_pool` returns min(N_c, T) distinct indices, because a pool with duplicates would let a
selector pick the same frame twice.

Decoding: backend 'pyav' (the default, 'auto') plans per video from its keyframe index whether to
seek or decode forward to each requested frame (jaxvlm.pyav_decode); 'decord' reads all requested
frames with one decord `get_batch` call (decord has no wheel for macOS arm64 or aarch64 Linux, so it
is optional). Both give the same pixels (libswscale's RGB conversion) and count frames the same way.
Every failure (missing, unreadable, truncated or zero-frame file, index out of range) raises
`VideoError` naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np

from jaxvlm import pyav_decode


VideoError = pyav_decode.VideoError
BACKENDS = ('auto', 'pyav', 'decord')


@dataclasses.dataclass(frozen=True)
class Frames:
  """Decoded frames of one video.

  Attributes:
    pixels: uint8 [N, H, W, 3] RGB.
    indices: int64 [N] frame indices into the video.
    timestamps_s: float64 [N] presentation time of each frame (start of the frame) in seconds.
  """

  pixels: np.ndarray
  indices: np.ndarray
  timestamps_s: np.ndarray


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  num_frames: int
  fps: float
  height: int
  width: int

  @property
  def duration_s(self) -> float:
    return self.num_frames / self.fps if self.fps > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Index rules.


def _check_total(num_frames_total: int) -> None:
  if num_frames_total <= 0:
    raise ValueError(f'video has no frames (num_frames_total={num_frames_total})')


def uniform_indices(num_frames_total: int, n: int) -> np.ndarray:
  """N indices evenly spread over [0, T - 1], first and last included; repeats when T < N.

  Returns:
    int64 [n], non-decreasing.
  """
  _check_total(num_frames_total)
  if n <= 0:
    raise ValueError(f'number of frames to sample must be positive, got {n}')
  if n == 1:
    return np.zeros((1,), np.int64)
  return np.linspace(0, num_frames_total - 1, n).astype(np.int64)


def fps_indices(
  num_frames_total: int, video_fps: float, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
  """Frames floor(k * video_fps / target_fps), k = 0, 1, ..., inside the video.

  The fractional step keeps the sampled rate exact on average (LLaVA-Video's loader rounds the
  step to an integer instead, e.g. every 2nd frame for 25 -> 10 fps). If that gives more than
  `max_frames` frames, fall back to `uniform_indices(T, max_frames)` so a long video still fits
  the frame budget.

  Returns:
    int64 [M], strictly increasing.
  """
  _check_total(num_frames_total)
  if video_fps <= 0 or target_fps <= 0:
    raise ValueError(f'fps must be positive, got video_fps={video_fps}, target_fps={target_fps}')
  step = max(video_fps / target_fps, 1.0)
  indices = np.unique(np.floor(np.arange(0.0, num_frames_total, step)).astype(np.int64))
  if max_frames is not None and len(indices) > max_frames:
    return uniform_indices(num_frames_total, max_frames)
  return indices


def candidate_pool(num_frames_total: int, n_c: int) -> np.ndarray:
  """min(N_c, T) distinct uniformly spread indices (first and last included) for selectors.

  Returns:
    int64 [min(n_c, T)], strictly increasing.
  """
  return uniform_indices(num_frames_total, min(n_c, num_frames_total))


# ----------------------------------------------------------------------------------------------
# Decoding.


def _backend(backend: str) -> str:
  if backend not in BACKENDS:
    raise ValueError(f'unknown video backend {backend!r}; expected one of {BACKENDS}')
  return 'pyav' if backend == 'auto' else backend


def _open(path: str | os.PathLike[str]):
  """Opens a decord VideoReader, turning every failure into a VideoError naming the file."""
  try:
    import decord  # pylint: disable=g-import-not-at-top  (heavy native library, load on use)
  except ImportError as e:
    raise VideoError(
      f"backend 'decord' is not installed (no wheel for this platform?); use 'pyav' to read {path}"
    ) from e
  path = pyav_decode.existing_video_file(path)
  try:
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
  except Exception as e:  # decord raises RuntimeError or DECORDError with a C++ log line.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise VideoError(f'cannot open video {path} (corrupt, truncated or no video stream): {first_line}') from e
  if len(reader) == 0:
    raise VideoError(f'video has zero frames: {path}')
  return reader


def video_info(path: str | os.PathLike[str], backend: str = 'auto') -> VideoInfo:
  if _backend(backend) == 'decord':
    reader = _open(path)
    height, width = reader[0].shape[:2]
    return VideoInfo(num_frames=len(reader), fps=float(reader.get_avg_fps()), height=int(height), width=int(width))
  container, stream = pyav_decode.open_video(path)
  try:
    index = pyav_decode.stream_index(container, stream)
    return VideoInfo(
      num_frames=index.num_frames,
      fps=index.fps,
      height=int(stream.codec_context.height),
      width=int(stream.codec_context.width),
    )
  except VideoError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # libav errors of broken files
    raise VideoError(f'cannot read the frame index of {os.fspath(path)}: {e}') from e
  finally:
    container.close()


def _read(reader, path: str, indices: np.ndarray) -> Frames:
  """Decodes `indices` with one decord get_batch call."""
  total = len(reader)
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise ValueError(f'no frame indices requested for {path}')
  bad = indices[(indices < 0) | (indices >= total)]
  if bad.size:
    raise IndexError(f'frame indices {bad.tolist()[:5]} out of range [0, {total}) for {path}')
  try:
    pixels = reader.get_batch(indices.tolist()).asnumpy()
    timestamps = reader.get_frame_timestamp(indices.tolist())[:, 0]
  except Exception as e:
    raise VideoError(f'decoding frames {indices.tolist()[:5]}... failed for {path}: {e}') from e
  return Frames(
    pixels=np.ascontiguousarray(pixels, np.uint8), indices=indices, timestamps_s=np.asarray(timestamps, np.float64)
  )


def _read_pyav(path, indices=None, select=None) -> Frames:
  decoded, _ = pyav_decode.read(path, indices, select)
  return Frames(pixels=decoded.pixels, indices=decoded.indices, timestamps_s=decoded.timestamps_s)


def read_frames(path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray, backend: str = 'auto') -> Frames:
  """Decodes the given frame indices (any order, repeats allowed)."""
  if _backend(backend) == 'decord':
    return _read(_open(path), os.fspath(path), np.asarray(indices))
  return _read_pyav(path, np.asarray(indices))


def clip_range(num_frames_total: int, video_fps: float, start_s: float | None, end_s: float | None) -> tuple[int, int]:
  """Frames [first, last + 1) inside the clip [start_s, end_s] (seconds; None = video start / end).
  A clip that misses the video entirely raises ValueError."""
  first = 0 if start_s is None else int(np.ceil(start_s * video_fps - 1e-6))
  stop = num_frames_total if end_s is None else min(num_frames_total, int(np.floor(end_s * video_fps)) + 1)
  first = max(first, 0)
  if stop <= first:
    raise ValueError(
      f'clip [{start_s}, {end_s}] s holds no frame of a {num_frames_total}-frame video at {video_fps:g} fps'
    )
  return first, stop


_RULES = ('uniform', 'fps', 'pool')


def _select(
  rule: str, n: int, target_fps: float | None, start_s: float | None, end_s: float | None, num_frames: int, fps: float
) -> np.ndarray:
  """Frame indices of `rule` inside the clip of a video with `num_frames` frames at `fps`."""
  first, stop = (0, num_frames) if start_s is None and end_s is None else clip_range(num_frames, fps, start_s, end_s)
  total = stop - first
  if rule == 'uniform':
    indices = uniform_indices(total, n)
  elif rule == 'pool':
    indices = candidate_pool(total, n)
  else:
    assert target_fps is not None  # sample_frames checks that rule 'fps' has it
    indices = fps_indices(total, fps, target_fps, max_frames=n)
  return indices + first


def sample_frames(
  path: str | os.PathLike[str],
  n: int,
  rule: str = 'uniform',
  target_fps: float | None = None,
  start_s: float | None = None,
  end_s: float | None = None,
  backend: str = 'auto',
) -> Frames:
  """Opens a video once, picks indices by `rule` inside the clip [start_s, end_s] (the whole video by
  default; benchmark samples such as MVBench's carry a clip) and decodes them.

  Args:
    path: video file.
    n: frames for 'uniform', pool size N_c for 'pool', frame cap for 'fps'.
    rule: 'uniform' | 'fps' | 'pool' (see the module docstring).
    target_fps: sampling rate for rule 'fps'.
    start_s, end_s: the clip, in seconds.
    backend: 'auto' | 'pyav' | 'decord' (see the module docstring).
  """
  if rule not in _RULES:
    raise ValueError(f"unknown sampling rule {rule!r}; expected 'uniform', 'fps' or 'pool'")
  if rule == 'fps' and target_fps is None:
    raise ValueError("rule 'fps' needs target_fps")
  select = functools.partial(_select, rule, n, target_fps, start_s, end_s)
  if _backend(backend) == 'decord':
    reader = _open(path)
    return _read(reader, os.fspath(path), select(len(reader), float(reader.get_avg_fps())))
  return _read_pyav(path, select=lambda index: select(index.num_frames, index.fps))
