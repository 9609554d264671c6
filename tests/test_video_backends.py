"""The PyAV decoder (jaxvlm.pyav_decode, the default) against decord: identical frames, indices and
timestamps for every kind of request, and its seek / decode-forward plan."""

from __future__ import annotations

import builtins
import dataclasses
import fractions

import av
import numpy as np
import pytest

from jaxvlm import pyav_decode, video

FPS = 10


def _frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
  """uint8 [n, H, W, 3]: a block moving one pixel per frame over a ramp, every frame distinct."""
  out = np.zeros((n, height, width, 3), np.uint8)
  out[..., 2] = np.linspace(0, 160, width, dtype=np.uint8)[None, None, :]
  for f in range(n):
    out[f, 10:30, f % (width - 20) : f % (width - 20) + 20, 0] = 255
    out[f, 32:44, 2 * f % (width - 12) : 2 * f % (width - 12) + 12, 1] = 200
  return out


SOURCE = _frames(120)


def _write(path, frames, options, pts=None, container_format=None):
  """H.264 (yuv420p) with x264 `options`; `pts` (in 1/FPS / 4 units) makes a variable frame rate."""
  with av.open(str(path), 'w', format=container_format) as c:
    s = c.add_stream('libx264', rate=FPS)
    s.height, s.width = frames.shape[1:3]
    s.pix_fmt = 'yuv420p'
    s.options = options
    tb = fractions.Fraction(1, FPS * 4)
    s.time_base = tb
    for i, fr in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(fr, format='rgb24')
      frame.pts, frame.time_base = (4 * i if pts is None else pts[i]), tb
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp('backends')
  frames = SOURCE
  vfr_pts = np.cumsum([0] + [4 + 3 * (i % 3 == 0) for i in range(119)])  # steps of 4 and 7
  return {
    'bframes_gop250': _write(root / 'a.mp4', frames, {'crf': '28'}),  # x264 default: B-frames
    'gop8': _write(root / 'b.mp4', frames, {'crf': '28', 'g': '8', 'keyint_min': '8'}),
    'matroska': _write(root / 'c.mkv', frames, {'crf': '28', 'g': '16'}, container_format='matroska'),
    'variable_rate': _write(root / 'd.mp4', frames, {'crf': '28', 'g': '16'}, pts=vfr_pts),
  }


REQUESTS = {
  'sparse': [0, 60, 119],
  'dense_unsorted_repeats': [5, 4, 4, 90, 3, 91, 119, 0, 33, 34, 35, 119],
  'every_frame': list(range(120)),
  'last_only': [119],
}


@pytest.mark.parametrize('name', ['bframes_gop250', 'gop8', 'matroska', 'variable_rate'])
@pytest.mark.parametrize('request_name', sorted(REQUESTS))
def test_pyav_equals_decord(videos, name, request_name):
  idx = REQUESTS[request_name]
  by_pyav = video.read_frames(videos[name], idx, backend='pyav')
  by_decord = video.read_frames(videos[name], idx, backend='decord')
  np.testing.assert_array_equal(by_pyav.pixels, by_decord.pixels)
  np.testing.assert_array_equal(by_pyav.indices, idx)
  np.testing.assert_allclose(by_pyav.timestamps_s, by_decord.timestamps_s, atol=1e-6)
  # The right frame, not only the same one as decord: each is nearest to the source frame it names.
  err = np.abs(by_pyav.pixels[:, None].astype(np.int16) - SOURCE[None]).mean(axis=(2, 3, 4))  # [N, 120]
  np.testing.assert_array_equal(err.argmin(axis=1), idx)


@pytest.mark.parametrize('name', ['bframes_gop250', 'gop8', 'matroska', 'variable_rate'])
def test_video_info_and_sampling_agree(videos, name):
  assert video.video_info(videos[name], backend='pyav') == video.video_info(videos[name], backend='decord')
  for kwargs in [dict(n=8), dict(n=16, rule='pool'), dict(n=5, start_s=2.0, end_s=6.0)]:
    a = video.sample_frames(videos[name], backend='pyav', **kwargs)
    b = video.sample_frames(videos[name], backend='decord', **kwargs)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_index_sources(videos):
  """MP4's sample table gives the index without demuxing; Matroska cues and a variable rate do not."""
  for name, exact in [('bframes_gop250', False), ('gop8', False), ('matroska', True), ('variable_rate', True)]:
    container, stream = pyav_decode.open_video(videos[name])
    with container:
      index = pyav_decode.stream_index(container, stream)
    assert index.num_frames == 120 and index.exact == exact, name
  for exact in (False, True):  # from MP4's sample table, and from demuxed packets
    container, stream = pyav_decode.open_video(videos['gop8'])
    with container:
      index = pyav_decode.stream_index(container, stream, exact=exact)
      np.testing.assert_array_equal(index.keyframe_before(np.arange(120)), np.arange(120) // 8 * 8)


def _index(num_frames: int, gop: int) -> pyav_decode.StreamIndex:
  return pyav_decode.StreamIndex(
    np.arange(num_frames), fractions.Fraction(1, 30), 30.0, True, lambda frames: np.asarray(frames) // gop * gop
  )


def test_plan_seeks_for_sparse_frames_and_scans_dense_ones():
  sparse = np.array([0, 500, 1000, 1500])
  np.testing.assert_array_equal(pyav_decode.plan(_index(2000, 30), sparse), [False, True, True, True])
  # One keyframe at the start: seeking never helps.
  np.testing.assert_array_equal(pyav_decode.plan(_index(2000, 5000), sparse), [False] * 4)
  # Frames closer together than a seek costs: decode forward; a gap of 7 across a keyframe: seek.
  assert not pyav_decode.plan(_index(2000, 30), np.arange(0, 300, 3)).any()
  np.testing.assert_array_equal(pyav_decode.plan(_index(2000, 30), np.array([80, 84, 91])), [True, False, True])
  # The first frame far into the video with keyframes: seek there instead of decoding from the start.
  np.testing.assert_array_equal(pyav_decode.plan(_index(2000, 30), np.array([1203, 1205])), [True, False])


def test_decord_missing_falls_back_to_pyav(videos, monkeypatch):
  real_import = builtins.__import__

  def no_decord(name, *args, **kwargs):
    if name == 'decord':
      raise ImportError('No module named decord')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_decord)
  got = video.sample_frames(videos['gop8'], 4)  # 'auto' needs no decord
  assert got.pixels.shape == (4, 48, 64, 3)
  with pytest.raises(video.VideoError, match='not installed'):
    video.sample_frames(videos['gop8'], 4, backend='decord')
  with pytest.raises(ValueError, match='unknown video backend'):
    video.sample_frames(videos['gop8'], 4, backend='opencv')


def test_a_timestamp_off_the_inferred_grid_falls_back_to_the_demuxed_index(videos, monkeypatch):
  table_index = pyav_decode._sample_table_index

  def shifted(stream):  # a sample table whose grid misses the real timestamps by one unit
    index = table_index(stream)
    return dataclasses.replace(index, pts=index.pts + 1)

  monkeypatch.setattr(pyav_decode, '_sample_table_index', shifted)
  idx = [3, 50, 51, 100]
  decoded, index = pyav_decode.read(videos['gop8'], idx)
  assert index.exact
  np.testing.assert_array_equal(decoded.pixels, video.read_frames(videos['gop8'], idx, backend='decord').pixels)
