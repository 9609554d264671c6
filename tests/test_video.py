"""Decoding and sampling rules of jaxvlm.video against PyAV."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from jaxvlm import video

FPS = 8
NUM_FRAMES = 40


def _source_frames() -> np.ndarray:
  """uint8 [40, 48, 64, 3]: two moving blocks over a ramp, every frame distinct."""
  frames = np.zeros((NUM_FRAMES, 48, 64, 3), np.uint8)
  frames[..., 2] = np.linspace(0, 120, 64, dtype=np.uint8)[None, None, :]
  for f in range(NUM_FRAMES):
    frames[f, 8:28, f : f + 20, 0] = 255
    frames[f, 20:40, 40 - f // 2 : 60 - f // 2, 1] = 200
    frames[f, 0, 0] = (f * 6, 0, 0)  # frame id in a corner pixel
  return frames


def _write(path, frames, codec, pix_fmt, options, container_options=None):
  with av.open(str(path), 'w', options=container_options or {}) as c:
    s = c.add_stream(codec, rate=FPS)
    s.height, s.width = frames.shape[1:3]
    s.pix_fmt = pix_fmt
    s.options = options
    for fr in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(fr, format='rgb24')):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def _pyav_decode_all(path) -> np.ndarray:
  with av.open(str(path)) as c:
    return np.stack([f.to_ndarray(format='rgb24') for f in c.decode(video=0)])


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  frames = _source_frames()
  paths = {'h264': root / 'h264.mp4', 'lossless': root / 'lossless.mp4', 'faststart': root / 'faststart.mp4'}
  _write(paths['h264'], frames, 'libx264', 'yuv420p', {'crf': '23'})  # default GOP with B-frames
  _write(paths['lossless'], frames, 'libx264rgb', 'rgb24', {'qp': '0'})
  _write(paths['faststart'], frames, 'libx264', 'yuv420p', {'crf': '23'}, {'movflags': 'faststart'})
  return frames, paths


# ---------------------------------------------------------------------------------------------
# Index rules.


def test_uniform_indices_include_ends_and_spread_evenly():
  idx = video.uniform_indices(100, 8)
  np.testing.assert_array_equal(idx, [0, 14, 28, 42, 56, 70, 84, 99])
  assert idx.dtype == np.int64
  np.testing.assert_array_equal(video.uniform_indices(5, 5), np.arange(5))
  np.testing.assert_array_equal(video.uniform_indices(7, 1), [0])


def test_uniform_indices_repeat_frames_when_video_is_short():
  idx = video.uniform_indices(3, 8)
  assert len(idx) == 8 and idx[0] == 0 and idx[-1] == 2
  np.testing.assert_array_equal(np.unique(idx), [0, 1, 2])
  assert np.all(np.diff(idx) >= 0)


@pytest.mark.parametrize('total,n', [(0, 8), (-1, 8), (10, 0)])
def test_uniform_indices_reject_empty(total, n):
  with pytest.raises(ValueError):
    video.uniform_indices(total, n)


def test_fps_indices_step_and_cap():
  np.testing.assert_array_equal(video.fps_indices(90, 30.0, 1.0), [0, 30, 60])
  np.testing.assert_array_equal(video.fps_indices(10, 25.0, 10.0), [0, 2, 5, 7])
  np.testing.assert_array_equal(video.fps_indices(5, 8.0, 100.0), np.arange(5))  # no upsampling
  capped = video.fps_indices(3000, 30.0, 1.0, max_frames=32)
  np.testing.assert_array_equal(capped, video.uniform_indices(3000, 32))


def test_candidate_pool_is_distinct_and_capped_by_video_length():
  pool = video.candidate_pool(1000, 64)
  assert len(pool) == 64 and len(np.unique(pool)) == 64 and pool[0] == 0 and pool[-1] == 999
  np.testing.assert_array_equal(video.candidate_pool(10, 64), np.arange(10))


# ---------------------------------------------------------------------------------------------
# Decoding.


def test_lossless_decode_is_exact(videos):
  frames, paths = videos
  idx = [0, 39, 7, 7, 20, 3]
  got = video.read_frames(paths['lossless'], idx)
  np.testing.assert_array_equal(got.pixels, frames[idx])
  np.testing.assert_array_equal(got.pixels, _pyav_decode_all(paths['lossless'])[idx])


@pytest.mark.parametrize('name', ['h264', 'faststart'])
def test_h264_decode_matches_pyav_for_any_indices(videos, name):
  frames, paths = videos
  reference = _pyav_decode_all(paths[name])
  assert len(reference) == NUM_FRAMES
  idx = np.array([39, 0, 13, 13, 26, 1, 38, 5])  # unsorted, repeated, across B-frames
  got = video.read_frames(paths[name], idx)
  assert got.pixels.dtype == np.uint8 and got.pixels.shape == (8, 48, 64, 3)
  # Same libswscale conversion in both: equal, not just close.
  np.testing.assert_array_equal(got.pixels, reference[idx])
  # Frame accuracy against the source: each decoded frame is nearest to the source frame it names.
  err = np.abs(got.pixels[:, None].astype(int) - frames[None]).mean(axis=(2, 3, 4))  # [8, 40]
  np.testing.assert_array_equal(err.argmin(axis=1), idx)
  np.testing.assert_array_equal(got.indices, idx)
  np.testing.assert_allclose(got.timestamps_s, idx / FPS)


def test_video_info(videos):
  info = video.video_info(videos[1]['h264'])
  assert (info.num_frames, info.fps, info.height, info.width) == (NUM_FRAMES, FPS, 48, 64)
  assert info.duration_s == pytest.approx(NUM_FRAMES / FPS)


def test_sample_frames_rules(videos):
  frames, paths = videos
  uni = video.sample_frames(paths['lossless'], 8)
  np.testing.assert_array_equal(uni.indices, video.uniform_indices(NUM_FRAMES, 8))
  np.testing.assert_array_equal(uni.pixels, frames[uni.indices])
  short = video.sample_frames(paths['lossless'], 64)  # more than the video has: repeats
  assert len(short.indices) == 64 and short.indices[-1] == NUM_FRAMES - 1
  np.testing.assert_array_equal(short.pixels, frames[short.indices])
  pool = video.sample_frames(paths['lossless'], 64, rule='pool')
  np.testing.assert_array_equal(pool.indices, np.arange(NUM_FRAMES))
  by_fps = video.sample_frames(paths['lossless'], 100, rule='fps', target_fps=2.0)
  np.testing.assert_array_equal(by_fps.indices, np.arange(0, NUM_FRAMES, 4))
  np.testing.assert_allclose(by_fps.timestamps_s, np.arange(0, NUM_FRAMES, 4) / FPS)
  with pytest.raises(ValueError, match='unknown sampling rule'):
    video.sample_frames(paths['lossless'], 8, rule='random')


# ---------------------------------------------------------------------------------------------
# Bad input: every error names the file.


def _truncated(src, dst):
  data = src.read_bytes()
  dst.write_bytes(data[: len(data) // 2])
  return dst


def _zero_frame_video(path):
  with av.open(str(path), 'w') as c:
    s = c.add_stream('libx264', rate=FPS)
    s.width = s.height = 32
    s.pix_fmt = 'yuv420p'
    c.start_encoding()  # header with a video stream, no frames
  return path


def _audio_only(path):
  with av.open(str(path), 'w') as c:
    s = c.add_stream('aac', rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
    frame.sample_rate = 16000
    for i in range(4):
      frame.pts = i * 1024
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


def _bytes(path, data):
  path.write_bytes(data)
  return path


BAD_VIDEOS = {
  'missing': lambda d, v: d / 'missing.mp4',
  'empty': lambda d, v: _bytes(d / 'empty.mp4', b''),
  'garbage': lambda d, v: _bytes(d / 'garbage.mp4', b'\x00not a video' * 64),
  'truncated': lambda d, v: _truncated(v['h264'], d / 'truncated.mp4'),  # moov at the end: lost
  'truncated_faststart': lambda d, v: _truncated(v['faststart'], d / 'truncated_fs.mp4'),
  'zero_frames': lambda d, v: _zero_frame_video(d / 'zero.mp4'),
  'no_video_stream': lambda d, v: _audio_only(d / 'audio.mp4'),
}


@pytest.mark.parametrize('kind', sorted(BAD_VIDEOS))
def test_bad_videos_raise_video_error_naming_the_file(tmp_path, videos, kind):
  path = BAD_VIDEOS[kind](tmp_path, videos[1])
  with pytest.raises(video.VideoError, match=str(path.name)):
    video.read_frames(path, [0])
  with pytest.raises(video.VideoError, match=str(path.name)):
    video.sample_frames(path, 8)


def test_out_of_range_indices_name_the_file(videos):
  path = videos[1]['h264']
  with pytest.raises(IndexError, match='h264.mp4'):
    video.read_frames(path, [0, NUM_FRAMES])
  with pytest.raises(IndexError, match='h264.mp4'):
    video.read_frames(path, [-1])
  with pytest.raises(ValueError, match='no frame indices'):
    video.read_frames(path, [])


def test_clip_range_rules():
  assert video.clip_range(100, 10.0, None, None) == (0, 100)
  assert video.clip_range(100, 10.0, 2.0, 4.0) == (20, 41)
  assert video.clip_range(100, 10.0, 8.5, 20.0) == (85, 100)
  with pytest.raises(ValueError, match='holds no frame'):
    video.clip_range(100, 10.0, 12.0, 15.0)


def test_sample_frames_inside_a_clip(videos):
  frames, paths = videos
  first, stop = video.clip_range(NUM_FRAMES, FPS, 1.0 / FPS * 4, 1.0 / FPS * 11)
  clip = video.sample_frames(paths['lossless'], 4, start_s=4 / FPS, end_s=11 / FPS)
  np.testing.assert_array_equal(clip.indices, first + video.uniform_indices(stop - first, 4))
  assert clip.indices[0] == 4 and clip.indices[-1] == 11
  np.testing.assert_array_equal(clip.pixels, frames[clip.indices])
