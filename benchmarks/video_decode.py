"""Frame sampling speed: jaxvlm.video (one decord get_batch per video) vs PyAV baselines.

For each video and N in --frames, times `video.sample_frames(path, N)` (uniform indices, open
included) against
  - seek: PyAV seek to each frame's timestamp, decode forward to it (the straightforward way),
  - scan: PyAV decode the whole video once, keep the requested frames,
checks that all three return identical pixels, and prints frames/s and the ratios.

  python -m benchmarks.video_decode                      # generated H.264 test videos
  python -m benchmarks.video_decode --videos=a.mp4,b.mp4
"""

from __future__ import annotations

import fractions
import os
import tempfile
import time

from absl import app
from absl import flags
import av
import numpy as np

from jaxvlm import video

_VIDEOS = flags.DEFINE_list('videos', [], 'Videos to time; empty: generate test videos.')
_FRAMES = flags.DEFINE_list('frames', ['8', '32', '64'], 'Numbers of frames to sample.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats per setting (the best is kept).')

# (name, frames, height, width, fps, keyframe interval): 10 s and 60 s at 30 fps with x264's
# default GOP of 250 frames, and 60 s with a 2 s GOP as in many streamed videos. The seek baseline
# decodes from the preceding keyframe, so its cost depends on the GOP.
_GENERATED = [('10s_320x240_gop250', 300, 240, 320, 30, 250),
              ('60s_320x240_gop250', 1800, 240, 320, 30, 250),
              ('60s_320x240_gop60', 1800, 240, 320, 30, 60)]


def _test_frame(i: int, height: int, width: int) -> np.ndarray:
  """A textured frame with moving blocks, uint8 [H, W, 3], so P/B-frames carry real content."""
  y, x = np.mgrid[0:height, 0:width]
  frame = np.stack([(x + 2 * i) % 256, (y + i) % 256, ((x + y) // 2 + 3 * i) % 256], -1)
  for k in range(3):
    cx, cy = (37 * k + 3 * i) % (width - 40), (53 * k + 2 * i) % (height - 40)
    frame[cy:cy + 40, cx:cx + 40] = (255 * (k == 0), 255 * (k == 1), 255 * (k == 2))
  return frame.astype(np.uint8)


def _write_test_video(path: str, num_frames: int, height: int, width: int, fps: int,
                      gop: int) -> None:
  with av.open(path, 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.height, stream.width, stream.pix_fmt = height, width, 'yuv420p'
    time_base = fractions.Fraction(1, fps)  # stream.time_base changes once the muxer opens
    stream.time_base = time_base
    stream.options = {'preset': 'veryfast', 'crf': '23', 'g': str(gop)}
    for i in range(num_frames):
      frame = av.VideoFrame.from_ndarray(_test_frame(i, height, width), format='rgb24')
      frame.pts, frame.time_base = i, time_base
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def pyav_seek_per_frame(path: str, indices: np.ndarray) -> np.ndarray:
  """Seeks (to the preceding keyframe) and decodes forward once per requested frame."""
  out = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    fps = float(stream.average_rate)
    for index in indices:
      target = index / fps
      container.seek(int(target / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        if frame.time >= target - 0.5 / fps:
          out.append(frame.to_ndarray(format='rgb24'))
          break
  return np.stack(out)


def pyav_scan(path: str, indices: np.ndarray) -> np.ndarray:
  """Decodes every frame once, converting only the requested ones."""
  wanted = set(int(i) for i in indices)
  kept = {}
  with av.open(path) as container:
    for i, frame in enumerate(container.decode(video=0)):
      if i in wanted:
        kept[i] = frame.to_ndarray(format='rgb24')
      if i >= indices.max():
        break
  return np.stack([kept[int(i)] for i in indices])


def _best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
  best, result = float('inf'), None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    paths = list(_VIDEOS.value)
    if not paths:
      for name, *spec in _GENERATED:
        paths.append(os.path.join(tmp, f'{name}.mp4'))
        _write_test_video(paths[-1], *spec)
    print(f'{"video":<25}{"N":>4}{"ours f/s":>10}{"seek f/s":>10}{"scan f/s":>10}'
          f'{"ours/seek":>11}{"ours/scan":>11}')
    for path in paths:
      total = video.video_info(path).num_frames
      for n in (int(v) for v in _FRAMES.value):
        indices = video.uniform_indices(total, n)
        t_ours, ours = _best_time(lambda: video.sample_frames(path, n).pixels, _REPEATS.value)
        t_seek, seek = _best_time(lambda: pyav_seek_per_frame(path, indices), _REPEATS.value)
        t_scan, scan = _best_time(lambda: pyav_scan(path, indices), _REPEATS.value)
        same = np.array_equal(ours, seek) and np.array_equal(ours, scan)
        print(f'{os.path.basename(path)[:24]:<25}{n:>4}{n / t_ours:>10.1f}{n / t_seek:>10.1f}'
              f'{n / t_scan:>10.1f}{t_seek / t_ours:>11.2f}{t_scan / t_ours:>11.2f}'
              f'{"" if same else "  PIXELS DIFFER"}')


if __name__ == '__main__':
  app.run(main)
