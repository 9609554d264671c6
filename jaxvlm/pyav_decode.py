"""Frame decoding with PyAV, planned per video from its keyframe index.

Two ways to reach a frame: decode forward from where the decoder is, or seek to the keyframe before
it and decode forward from there. `plan` walks the requested frames in order and seeks only when the
keyframe before the next frame lies more than `SEEK_COST` frames past the decoder's position, so a
dense sample of a video becomes one forward scan, a sparse sample of a long video with frequent
keyframes becomes one seek per frame, and everything between mixes the two. Frames that no request
needs are passed to the decoder with `skip_frame='NONREF'`: non-reference frames (most B-frames) are
then dropped unseen, reference frames are still decoded, so the requested frames come out identical.

Frame i is the i-th frame in presentation order, as decord counts. The index comes from the
container's sample table when it lists every frame (MP4/MOV, AVI): frames of a constant-rate stream
are then `start + i * step` in stream time base, and every decoded timestamp is checked against that
grid. Otherwise (Matroska/WebM cues list only keyframes, a rate that varies, a decoded timestamp off
the grid) the packets are demuxed once for their exact timestamps and keyframe flags.

Pixels are PyAV's `to_ndarray(format='rgb24')` (libswscale), the conversion decord uses too.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
from collections.abc import Callable, Sequence

import numpy as np

# Decoder restart cost of a seek, in frames decoded: flushing and the keyframe (an intra frame costs
# a few inter frames) against decoding forward. Only decides near-ties.
SEEK_COST = 3


class VideoError(RuntimeError):
  """A video cannot be opened or decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class StreamIndex:
  """Where the frames of a video stream are.

  Attributes:
    pts: int64 [T] presentation timestamps in `time_base`, increasing: frame i has pts[i].
    time_base: seconds per pts unit.
    fps: average frame rate.
    exact: False when pts is inferred from a constant-rate sample table (checked while decoding).
    keyframe_before: fn(frames int64 [N]) -> int64 [N], the last keyframe at or before each frame (0
      when none is listed before it). A sample-table index answers from the open container's table.
  """

  pts: np.ndarray
  time_base: fractions.Fraction
  fps: float
  exact: bool
  keyframe_before: Callable[[np.ndarray], np.ndarray]

  @property
  def num_frames(self) -> int:
    return len(self.pts)


def _keyframe_lookup(keyframes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  """keyframe_before for sorted keyframe indices int64 [K]."""

  def keyframe_before(frames):
    k = np.searchsorted(keyframes, frames, side='right') - 1
    return np.where(k >= 0, keyframes[np.maximum(k, 0)], 0)

  return keyframe_before


class _OffGrid(Exception):
  """A decoded timestamp is not on the inferred constant-rate grid."""


def _fail(path: str, what: str, e: BaseException | None = None) -> VideoError:
  detail = ''
  if e is not None:
    lines = str(e).strip().splitlines()
    detail = f': {lines[0] if lines else type(e).__name__}'
  return VideoError(f'{what} {path}{detail}')


def existing_video_file(path: str | os.PathLike[str]) -> str:
  """-> the path as a str; a VideoError naming it when it is missing or empty (checked before any backend
  sees it: their own messages for these cases are cryptic C++ log lines)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(f'video file not found: {path}')
  if os.path.getsize(path) == 0:
    raise VideoError(f'video file is empty (0 bytes): {path}')
  return path


def open_video(path: str | os.PathLike[str]):
  """-> (container, stream) of the first video stream; every failure is a VideoError naming the file."""
  import av  # pylint: disable=g-import-not-at-top  (heavy native library, load on use)

  path = existing_video_file(path)
  try:
    container = av.open(path)
  except Exception as e:  # av.error.InvalidDataError and friends
    raise _fail(path, 'cannot open video (corrupt, truncated or no video stream)', e) from e
  if not container.streams.video:
    container.close()
    raise VideoError(f'cannot open video (corrupt, truncated or no video stream): no video stream in {path}')
  stream = container.streams.video[0]
  # One decoding thread per video: parallelism comes from decoding several videos at once (the input
  # pipeline's workers). libav's default (slice threads, cores + 1 of them) cannot split the one-slice
  # frames common encoders write, yet its threads cost CPU the workers and the model need (measured in
  # docs/results.md, input pipeline). The frames are the same either way.
  stream.codec_context.thread_count = 1
  return container, stream


# Sample-table entries checked to lie on the constant-rate grid (reading all of a 10-minute video's
# 18000 entries in Python costs about a tenth of decoding 8 frames from it).
_GRID_CHECKS = 65


def _sample_table_index(stream) -> StreamIndex | None:
  """The index from a sample table that lists every frame at a constant rate, else None."""
  entries = stream.index_entries
  count = len(entries)
  if count < 2 or count != stream.frames or stream.start_time is None or stream.time_base is None:
    return None
  first = entries[0].timestamp
  step = entries[1].timestamp - first
  if step <= 0:
    return None
  for k in np.unique(np.linspace(0, count - 1, _GRID_CHECKS).astype(np.int64)).tolist():
    if entries[k].timestamp != first + k * step:
      return None  # not a constant rate: the demuxed index is exact
  pts = stream.start_time + step * np.arange(count, dtype=np.int64)

  def keyframe_before(frames):
    # Decode position of a keyframe = its presentation position for the closed GOPs encoders write;
    # only the plan reads keyframes, and a wrong guess costs a retried seek, never a wrong frame.
    found = [entries.search_timestamp(first + f * step, backward=True) for f in np.asarray(frames).tolist()]
    return np.maximum(np.asarray(found, np.int64), 0)

  fps = float(stream.average_rate or 0.0) or 1.0 / float(step * stream.time_base)
  return StreamIndex(pts, fractions.Fraction(stream.time_base), fps, False, keyframe_before)


def _demuxed_index(container, stream) -> StreamIndex:
  """The exact index from one demux pass over every packet (no decoding)."""
  pts_list, key = [], []
  for packet in container.demux(stream):
    if packet.pts is not None:
      pts_list.append(packet.pts)
      key.append(packet.is_keyframe)
  container.seek(0, stream=stream, backward=True)
  pts = np.asarray(pts_list, np.int64)
  order = np.argsort(pts, kind='stable')
  pts = pts[order]
  keyframes = np.flatnonzero(np.asarray(key, bool)[order]).astype(np.int64)
  rate = stream.average_rate
  if rate:
    fps = float(rate)
  elif len(pts) > 1 and pts[-1] > pts[0]:
    fps = float((len(pts) - 1) / ((pts[-1] - pts[0]) * stream.time_base))
  else:
    fps = 0.0
  return StreamIndex(pts, fractions.Fraction(stream.time_base), fps, True, _keyframe_lookup(keyframes))


def stream_index(container, stream, exact: bool = False) -> StreamIndex:
  index = None if exact else _sample_table_index(stream)
  return index if index is not None else _demuxed_index(container, stream)


def plan(index: StreamIndex, frames: np.ndarray, seek_cost: int = SEEK_COST) -> np.ndarray:
  """bool [N] for sorted distinct `frames` [N]: seek before decoding frame n (else decode forward).

  The first frame seeks unless decoding from the start is no dearer; a later frame seeks when its
  keyframe is more than `seek_cost` frames past the previous requested frame.
  """
  frames = np.asarray(frames, np.int64)
  keys = index.keyframe_before(frames)
  previous = np.concatenate([[-1], frames[:-1]])
  return keys - previous > seek_cost + 1


def _frame_lookup(index: StreamIndex) -> Callable[[int | None], int]:
  """fn(decoded pts) -> its frame index, or -1 when it is not one of the index's (or None); raises
  _OffGrid for a pts off an inferred grid. A dict, not a search per frame: this runs for every decoded
  frame while holding the GIL, which the input pipeline's worker threads share."""
  position = dict(zip(index.pts.tolist(), range(index.num_frames)))
  exact = index.exact

  def frame_of(pts: int | None) -> int:
    i = position.get(pts, -1)  # None is never a key
    if i < 0 and pts is not None and not exact:
      raise _OffGrid(pts)
    return i

  return frame_of


def _decode(path: str, container, stream, index: StreamIndex, frames: np.ndarray) -> dict[int, np.ndarray]:
  """Decodes sorted distinct `frames` [N] by the plan -> {frame: uint8 [H, W, 3]}."""
  seeks = plan(index, frames)
  wanted = set(frames.tolist())
  wanted_pts = set(index.pts[frames].tolist())
  codec = stream.codec_context
  frame_of = _frame_lookup(index)
  out: dict[int, np.ndarray] = {}
  skipping = codec.skip_frame  # the decoder's current mode, set only when it changes

  def decode_from(frame: int | None):
    """Decoded (frame index, av.VideoFrame) after a seek to the keyframe before `frame` (None: none)."""
    nonlocal skipping
    if frame is not None:
      key = int(index.keyframe_before(np.asarray([frame]))[0])
      container.seek(int(index.pts[key]), stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
      # Packets come in decode order but carry their presentation time: only requested frames must
      # come out of the decoder; the rest are decoded only if other frames reference them.
      pts = packet.pts
      mode = 'DEFAULT' if pts is None or pts in wanted_pts else 'NONREF'
      if mode != skipping:
        codec.skip_frame = skipping = mode
      for decoded in packet.decode():
        yield frame_of(decoded.pts), decoded

  stream_frames = decode_from(None)
  for target, seek in zip(frames.tolist(), seeks.tolist()):
    if target in out:
      continue
    if seek:
      stream_frames = decode_from(target)
    for attempt in range(2):
      landed = False
      for got, decoded in stream_frames:
        if seek and not landed and got > target:
          break  # the demuxer landed past the target's keyframe (guessed from decode order)
        landed = True
        if got in wanted and got not in out:
          out[got] = decoded.to_ndarray(format='rgb24')
        if got >= target:
          break
      if target in out or not seek or attempt:
        break
      # Retry from the very start: slow, but never a wrong or missing frame.
      container.seek(int(index.pts[0]), stream=stream, backward=True, any_frame=False)
      stream_frames, seek = decode_from(None), False
    if target not in out:
      raise VideoError(
        f'frame {target} of {index.num_frames} could not be decoded (the stream ends early: truncated file?): {path}'
      )
  codec.skip_frame = 'DEFAULT'
  return out


@dataclasses.dataclass(frozen=True)
class Decoded:
  """pixels uint8 [N, H, W, 3] of `indices` int64 [N] (request order), timestamps_s float64 [N]."""

  pixels: np.ndarray
  indices: np.ndarray
  timestamps_s: np.ndarray


def read(
  path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray | None = None, select=None
) -> tuple[Decoded, StreamIndex]:
  """Decodes frames of a video by the plan; any order and repeats allowed.

  Args:
    path: video file.
    indices: frame indices, or None with `select`.
    select: fn(StreamIndex) -> indices, for indices that depend on the frame count or rate.

  Raises:
    VideoError naming the file (missing, unreadable, truncated, zero frames), IndexError for indices
    outside the video.
  """
  path = os.fspath(path)
  container, stream = open_video(path)
  try:
    try:
      index = stream_index(container, stream)
    except Exception as e:  # pylint: disable=broad-except  # demux errors of broken files
      raise _fail(path, 'cannot read the frame index of', e) from e
    if index.num_frames == 0:
      raise VideoError(f'video has zero frames: {path}')
    wanted = np.asarray(select(index) if select is not None else indices, np.int64).reshape(-1)
    if wanted.size == 0:
      raise ValueError(f'no frame indices requested for {path}')
    bad = wanted[(wanted < 0) | (wanted >= index.num_frames)]
    if bad.size:
      raise IndexError(f'frame indices {bad.tolist()[:5]} out of range [0, {index.num_frames}) for {path}')
    distinct = np.unique(wanted)
    try:
      try:
        got = _decode(path, container, stream, index, distinct)
      except _OffGrid:  # not the constant rate the sample table promised: demux for the exact index
        container.close()
        container, stream = open_video(path)
        index = stream_index(container, stream, exact=True)
        got = _decode(path, container, stream, index, distinct)
    except VideoError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # libav errors mid-stream
      raise _fail(path, f'decoding frames {wanted.tolist()[:5]}... failed for', e) from e
  finally:
    container.close()
  pixels = np.stack([got[i] for i in wanted.tolist()])
  timestamps = index.pts[wanted].astype(np.float64) * float(index.time_base)
  return Decoded(pixels, wanted, timestamps), index
