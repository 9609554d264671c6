"""Frame sampling speed: jaxvlm.video (decoding planned per video) vs PyAV baselines and decord.

For each video and N, times `video.sample_frames(path, N)` (uniform indices, open included) against
  - seek: PyAV seek to each frame's timestamp, decode forward to it (the straightforward way),
  - scan: PyAV decode the whole video once, keep the requested frames,
  - decord: one decord get_batch (the previous default; skipped if decord is not installed),
checks that all return identical pixels, and prints frames/s, ours / best(seek, scan) per row and the
worst row.

  python -m benchmarks.video_decode                      # generated H.264 test videos
  python -m benchmarks.video_decode --video_dir=/tmp/v    # keep the generated videos for the next run
  python -m benchmarks.video_decode --videos=a.mp4,b.mp4 --frames=8,32
"""

from __future__ import annotations

import fractions
import importlib.util
import os
import tempfile

from absl import app
from absl import flags
import av
import numpy as np

from benchmarks import timing
from jaxvlm import video

_VIDEOS = flags.DEFINE_list('videos', [], 'Videos to time; empty: generate test videos.')
_FRAMES = flags.DEFINE_list(
  'frames',
  [],
  'Numbers of frames to sample; empty: each generated video\'s own list (8,32,64; 8,32 for the 10-minute ones).',
)
_VIDEO_DIR = flags.DEFINE_string(
  'video_dir', None, 'Where generated videos are written and reused (default: a temporary directory).'
)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats per setting (the best is kept).')
_CLOCK = flags.DEFINE_enum(
  'clock',
  'wall',
  ['wall', 'cpu'],
  'wall: elapsed time; cpu: CPU time of this process (all threads), steadier on a machine other jobs share.',
)

# (name, frames, height, width, fps, keyframe interval): 10 s, 60 s and 10 min at 30 fps with x264's
# default GOP of 250 frames, and 60 s and 10 min with a 2 s GOP as in many streamed videos. The seek
# baseline decodes from the preceding keyframe, so its cost depends on the GOP.
_GENERATED = [
  ('10s_320x240_gop250', 300, 240, 320, 30, 250),
  ('60s_320x240_gop250', 1800, 240, 320, 30, 250),
  ('60s_320x240_gop60', 1800, 240, 320, 30, 60),
  ('600s_320x240_gop250', 18000, 240, 320, 30, 250),
  ('600s_320x240_gop60', 18000, 240, 320, 30, 60),
]
_DEFAULT_FRAMES = (8, 32, 64)
_LONG_FRAMES = (8, 32)  # 64 seeks into a 10-minute video take the seek baseline most of a minute


def _test_frame(i: int, height: int, width: int) -> np.ndarray:
  """A textured frame with moving blocks, uint8 [H, W, 3], so P/B-frames carry real content."""
  y, x = np.mgrid[0:height, 0:width]
  frame = np.stack([(x + 2 * i) % 256, (y + i) % 256, ((x + y) // 2 + 3 * i) % 256], -1)
  for k in range(3):
    cx, cy = (37 * k + 3 * i) % (width - 40), (53 * k + 2 * i) % (height - 40)
    frame[cy : cy + 40, cx : cx + 40] = (255 * (k == 0), 255 * (k == 1), 255 * (k == 2))
  return frame.astype(np.uint8)


def _write_test_video(path: str, num_frames: int, height: int, width: int, fps: int, gop: int) -> None:
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


def _decord_batch(path: str, indices: np.ndarray) -> np.ndarray:
  import decord  # pylint: disable=g-import-not-at-top

  reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
  return reader.get_batch(indices.tolist()).asnumpy()


def _has_decord() -> bool:
  return importlib.util.find_spec('decord') is not None


def _videos(tmp: str) -> list[tuple[str, tuple[int, ...]]]:
  if _VIDEOS.value:
    return [(p, _DEFAULT_FRAMES) for p in _VIDEOS.value]
  root = _VIDEO_DIR.value or tmp
  os.makedirs(root, exist_ok=True)
  out = []
  for name, *spec in _GENERATED:
    path = os.path.join(root, f'{name}.mp4')
    if not os.path.isfile(path):
      _write_test_video(path + '.part.mp4', *spec)
      os.replace(path + '.part.mp4', path)
    out.append((path, _LONG_FRAMES if spec[0] > 10000 else _DEFAULT_FRAMES))
  return out


def main(argv):
  del argv
  decord_too = _has_decord()
  with tempfile.TemporaryDirectory() as tmp:
    print(f'clock: {_CLOCK.value}, best of {_REPEATS.value}')
    print(
      f'{"video":<22}{"N":>4}{"ours f/s":>10}{"seek f/s":>10}{"scan f/s":>10}{"decord f/s":>12}'
      f'{"ours/best(seek,scan)":>22}'
    )
    worst = float('inf')
    for path, frame_counts in _videos(tmp):
      total = video.video_info(path).num_frames
      for n in (int(v) for v in _FRAMES.value) if _FRAMES.value else frame_counts:
        indices = video.uniform_indices(total, n)
        fns = {
          'ours': lambda: video.sample_frames(path, n).pixels,
          'seek': lambda: pyav_seek_per_frame(path, indices),
          'scan': lambda: pyav_scan(path, indices),
        }
        if decord_too:
          fns['decord'] = lambda: _decord_batch(path, indices)
        times, got = timing.best_times(fns, _REPEATS.value, _CLOCK.value)
        t_ours, t_seek, t_scan = times['ours'], times['seek'], times['scan']
        same = all(np.array_equal(got['ours'], x) for x in got.values())
        decord_col = f'{n / times["decord"]:>12.1f}' if decord_too else ''
        ratio = min(t_seek, t_scan) / t_ours  # speed of ours over the faster baseline's
        worst = min(worst, ratio)
        print(
          f'{os.path.basename(path)[:21]:<22}{n:>4}{n / t_ours:>10.1f}{n / t_seek:>10.1f}'
          f'{n / t_scan:>10.1f}{decord_col:>12}{ratio:>22.2f}{"" if same else "  PIXELS DIFFER"}'
        )
    print(f'worst row: ours / best(seek, scan) = {worst:.2f} (speed ratio; >= 0.9 is the goal)')


if __name__ == '__main__':
  app.run(main)
