"""Resize speed: jaxvlm.pixels.resize_uint8 (numpy, banded float64 products) vs PIL itself.

Resizes --frames frames of --height x --width to --size x --size (SigLIP-so400m-384's input) with
each filter and prints seconds, ours / PIL and whether the outputs are identical. The PIL side is what
a PIL-backend Hugging Face processor does per frame: Image.fromarray -> resize -> np.asarray, stacked,
in one thread. Ours runs as the pipeline calls it (frames spread over `resample.default_threads()`
threads, or --threads) and in one thread. Each is timed on the wall clock (what a caller waits) and on
the CPU clock of the process (all threads: the work done, which other jobs on a shared machine
disturb less). Run with OPENBLAS_NUM_THREADS=1 so that numpy's BLAS does not add threads of its own.

  OPENBLAS_NUM_THREADS=1 python -m benchmarks.preprocess_speed
  OPENBLAS_NUM_THREADS=1 python -m benchmarks.preprocess_speed --frames=32 --height=360 --width=640
"""

from __future__ import annotations

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from benchmarks import timing
from jaxvlm import pixels
from jaxvlm import resample as resample_lib

_FRAMES = flags.DEFINE_integer('frames', 32, 'Frames per call.')
_HEIGHT = flags.DEFINE_integer('height', 360, 'Input frame height.')
_WIDTH = flags.DEFINE_integer('width', 640, 'Input frame width.')
_SIZE = flags.DEFINE_integer('size', 384, 'Output height and width.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (the best is kept).')
_CLOCK = flags.DEFINE_enum(
  'clock',
  'both',
  ['wall', 'cpu', 'both'],
  'wall: elapsed time; cpu: CPU time of this process (all threads); both: one table row per clock.',
)
_THREADS = flags.DEFINE_integer('threads', None, "Threads of ours (default: the resampler's default).")

_PIL_FILTERS = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}


def _frames(n: int, height: int, width: int) -> np.ndarray:
  """uint8 [N, H, W, 3]: a moving texture with hard-edged blocks (the filter lobes overshoot there)."""
  y, x = np.mgrid[0:height, 0:width]
  out = np.empty((n, height, width, 3), np.uint8)
  for i in range(n):
    out[i] = np.stack([(x + 2 * i) % 256, (y + i) % 256, ((x * y) // 7 + 3 * i) % 256], -1)
    out[i, 40 + i : 120 + i, 60:200] = (255, 0, 0)
  return out


def pil_resize(frames: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
  h, w = size
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), _PIL_FILTERS[resample])) for f in frames])


def main(argv):
  del argv
  frames = _frames(_FRAMES.value, _HEIGHT.value, _WIDTH.value)
  size = (_SIZE.value, _SIZE.value)
  threads = _THREADS.value or resample_lib.default_threads()
  print(
    f'{_FRAMES.value} frames {_HEIGHT.value}x{_WIDTH.value} -> {size[0]}x{size[1]}, best of {_REPEATS.value}, '
    f'ours on {threads} thread(s) and on 1'
  )
  print(
    f'{"filter":<10}{"clock":<6}{"ours s":>9}{"ours/1 s":>10}{"PIL s":>9}{"ours/PIL":>10}{"ours/1/PIL":>12}  identical'
  )
  clocks = ('wall', 'cpu') if _CLOCK.value == 'both' else (_CLOCK.value,)
  for resample in ('bicubic', 'bilinear'):
    for clock in clocks:
      times, got = timing.best_times(
        {
          'ours': lambda: pixels.resize_uint8(frames, size, resample, threads=threads),
          'one': lambda: pixels.resize_uint8(frames, size, resample, threads=1),
          'pil': lambda: pil_resize(frames, size, resample),
        },
        _REPEATS.value,
        clock,
      )
      t_ours, t_one, t_pil = times['ours'], times['one'], times['pil']
      same = np.array_equal(got['ours'], got['pil']) and np.array_equal(got['one'], got['pil'])
      print(
        f'{resample:<10}{clock:<6}{t_ours:>9.4f}{t_one:>10.4f}{t_pil:>9.4f}{t_ours / t_pil:>10.2f}'
        f'{t_one / t_pil:>12.2f}  {same}'
      )


if __name__ == '__main__':
  app.run(main)
