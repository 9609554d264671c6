"""Resize speed: jaxvlm.pixels.resize_uint8 (numpy, banded float64 products) vs PIL itself.

Resizes --frames frames of --height x --width to --size x --size (SigLIP-so400m-384's input) with
each filter and prints seconds, ours / PIL and whether the outputs are identical. The PIL side is what
a PIL-backend Hugging Face processor does per frame: Image.fromarray -> resize -> np.asarray, stacked.
Both run on one core unless numpy's BLAS is allowed more: run with OPENBLAS_NUM_THREADS=1 (or the
BLAS's equivalent) for a one-core comparison.

  python -m benchmarks.preprocess_speed
  OPENBLAS_NUM_THREADS=1 python -m benchmarks.preprocess_speed --frames=32 --height=360 --width=640
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from jaxvlm import pixels

_FRAMES = flags.DEFINE_integer('frames', 32, 'Frames per call.')
_HEIGHT = flags.DEFINE_integer('height', 360, 'Input frame height.')
_WIDTH = flags.DEFINE_integer('width', 640, 'Input frame width.')
_SIZE = flags.DEFINE_integer('size', 384, 'Output height and width.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (the best is kept).')
_CLOCK = flags.DEFINE_enum('clock', 'wall', ['wall', 'cpu'], 'wall: elapsed time; cpu: CPU time of this '
                           'process (all threads), steadier on a machine other jobs share.')

_PIL_FILTERS = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}


def _frames(n: int, height: int, width: int) -> np.ndarray:
  """uint8 [N, H, W, 3]: a moving texture with hard-edged blocks (the filter lobes overshoot there)."""
  y, x = np.mgrid[0:height, 0:width]
  out = np.empty((n, height, width, 3), np.uint8)
  for i in range(n):
    out[i] = np.stack([(x + 2 * i) % 256, (y + i) % 256, ((x * y) // 7 + 3 * i) % 256], -1)
    out[i, 40 + i:120 + i, 60:200] = (255, 0, 0)
  return out


def pil_resize(frames: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
  h, w = size
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), _PIL_FILTERS[resample])) for f in frames])


def _best_times(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Best of `repeats` seconds per method, the methods taking turns; and each one's last result."""
  clock = time.process_time if _CLOCK.value == 'cpu' else time.perf_counter
  best = {name: float('inf') for name in fns}
  results = {}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = clock()
      results[name] = fn()
      best[name] = min(best[name], clock() - start)
  return best, results


def main(argv):
  del argv
  frames = _frames(_FRAMES.value, _HEIGHT.value, _WIDTH.value)
  size = (_SIZE.value, _SIZE.value)
  print(f'{_FRAMES.value} frames {_HEIGHT.value}x{_WIDTH.value} -> {size[0]}x{size[1]}, clock: {_CLOCK.value}, '
        f'best of {_REPEATS.value}')
  print(f'{"filter":<10}{"ours s":>10}{"PIL s":>10}{"ours/PIL":>10}  identical')
  for resample in ('bicubic', 'bilinear'):
    times, got = _best_times({'ours': lambda: pixels.resize_uint8(frames, size, resample),
                              'pil': lambda: pil_resize(frames, size, resample)}, _REPEATS.value)
    t_ours, t_pil, ours, ref = times['ours'], times['pil'], got['ours'], got['pil']
    print(f'{resample:<10}{t_ours:>10.4f}{t_pil:>10.4f}{t_ours / t_pil:>10.2f}  {np.array_equal(ours, ref)}')


if __name__ == '__main__':
  app.run(main)
