"""PIL-exact 8-bit image resampling in numpy, as banded float64 matrix products.

Pillow's Resample.c resizes 8-bit images with a separable filter (widened by the downscale factor)
in two passes; each output sample is `clip8((2^21 + sum_k in[k] * w[k]) >> 22)` with the weights `w`
rounded to 22-bit fixed point, and the first pass is rounded to uint8 before the second runs.

Here each pass is a product with a banded matrix holding those integer weights times 2^-22. Every
product and partial sum of uint8 values and 22-bit weights is an integer multiple of 2^-22 below
2^31 * 2^-22 in magnitude, so float64 (53-bit mantissa) holds it exactly in any summation order:
the result equals Pillow's bit for bit while BLAS does the arithmetic. The band is cut into blocks
of a few output samples, each a small dense product over just the inputs that block reads, so the
zeros outside the band cost nothing.

Layout: a frame stays channels-last, viewed as [H, W * C]. The vertical pass is `M_v [h, H] @ x`;
the horizontal pass is `x @ (M_h^T kron I_C) [W * C, w * C]`, so no transpose is ever needed.
Frames are resized one at a time so a frame's float64 buffers stay in cache.
"""

from __future__ import annotations

import functools

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights: 22 fractional bits.
_ONE = 1 << PRECISION_BITS
# Output samples per block. Small blocks keep each product close to the band (a block reads about
# block * scale + taps inputs); 8 was fastest for 360x640 -> 384x384 among 4..32.
_BLOCK = 8


def _bicubic(x: np.ndarray) -> np.ndarray:
  a = -0.5
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {'bicubic': (_bicubic, 2.0), 'bilinear': (_triangle, 1.0)}


def resample_taps(in_size: int, out_size: int, resample: str) -> tuple[np.ndarray, np.ndarray]:
  """Input indices int64 [out_size, K] and fixed-point weights int32 [out_size, K] of one PIL pass.

  Padding taps point at index 0 with weight 0.
  """
  fn, support = FILTERS[resample]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = support * filterscale
  num_taps = int(np.ceil(support)) * 2 + 1
  taps = np.zeros((out_size, num_taps), np.int64)
  weights = np.zeros((out_size, num_taps), np.int32)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    idx = np.arange(xmin, xmax)
    w = fn((idx - center + 0.5) / filterscale)
    total = w.sum()
    if total != 0.0:
      w = w / total
    taps[xx, :len(idx)] = idx
    # PIL rounds half away from zero when converting to fixed point.
    weights[xx, :len(idx)] = np.trunc(w * _ONE + np.where(w < 0, -0.5, 0.5))
  return taps, weights


@functools.lru_cache(maxsize=32)
def _blocks(in_size: int, out_size: int, resample: str, channels: int
            ) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
  """The band of one pass as blocks (out_start, out_stop, in_start, in_stop, matrix).

  channels == 0: matrix float64 [out_stop - out_start, in_stop - in_start] for `M @ x[in_start:in_stop]`
  (vertical pass). channels == C: the transposed block kron I_C, float64 [(in_stop - in_start) * C,
  (out_stop - out_start) * C], for `x[:, in_start * C:in_stop * C] @ M` (horizontal pass, channels
  interleaved). Entries are the 22-bit integer weights times 2^-22 (exact in float64).
  """
  taps, weights = resample_taps(in_size, out_size, resample)
  blocks = []
  for start in range(0, out_size, _BLOCK):
    stop = min(start + _BLOCK, out_size)
    used = weights[start:stop] != 0
    band = taps[start:stop][used]
    lo, hi = (int(band.min()), int(band.max()) + 1) if band.size else (0, 1)
    matrix = np.zeros((stop - start, hi - lo), np.float64)
    rows = np.broadcast_to(np.arange(stop - start)[:, None], used.shape)[used]
    # Taps of one output are distinct, so assignment (not accumulation) is exact.
    matrix[rows, taps[start:stop][used] - lo] = weights[start:stop][used] / _ONE
    if channels:
      matrix = np.kron(matrix.T, np.eye(channels))
    matrix.setflags(write=False)
    blocks.append((start, stop, lo, hi, matrix))
  return tuple(blocks)


def _round_clip(y: np.ndarray, floor: bool) -> None:
  """In place: PIL's `clip8((acc + 2^21) >> 22)` on y = acc * 2^-22. Without `floor` the values are
  left for a truncating cast to uint8, which floors the non-negative clipped values the same way."""
  y += 0.5
  if floor:
    np.floor(y, out=y)
  np.clip(y, 0, 255, out=y)


def _vertical(x: np.ndarray, out_size: int, resample: str, floor: bool) -> np.ndarray:
  """float64 [H, R] -> [out_size, R], resampled along axis 0."""
  y = np.empty((out_size, x.shape[1]), np.float64)
  for start, stop, lo, hi, matrix in _blocks(x.shape[0], out_size, resample, 0):
    np.matmul(matrix, x[lo:hi], out=y[start:stop])
  _round_clip(y, floor)
  return y


def _horizontal(x: np.ndarray, out_size: int, channels: int, resample: str, floor: bool) -> np.ndarray:
  """float64 [R, W * C] -> [R, out_size * C], resampled along W (channels interleaved)."""
  c = channels
  y = np.empty((x.shape[0], out_size * c), np.float64)
  for start, stop, lo, hi, matrix in _blocks(x.shape[1] // c, out_size, resample, c):
    np.matmul(x[:, lo * c:hi * c], matrix, out=y[:, start * c:stop * c])
  _round_clip(y, floor)
  return y


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
  """Pillow's pass order. Pillow 13 runs the vertical pass first when the height shrinks by more
  than twice as many pixels as the width does (older Pillow always ran the horizontal pass first);
  rounding after each pass makes the order visible in the output."""
  (in_h, in_w), (out_h, out_w) = in_size, out_size
  return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def resize_uint8(frames: np.ndarray, size: tuple[int, int], resample: str = 'bicubic') -> np.ndarray:
  """PIL-equivalent `Image.resize((w, h), resample)` of uint8 [N, H, W, C] -> uint8 [N, h, w, C]."""
  if resample not in FILTERS:
    raise ValueError(f"unsupported resample {resample!r}; expected one of {sorted(FILTERS)}")
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4:
    raise ValueError(f'expected uint8 [N, H, W, C] frames, got {frames.dtype} {frames.shape}')
  out_h, out_w = (int(s) for s in size)
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'output size must be positive, got {size}')
  n, in_h, in_w, c = frames.shape
  out = np.empty((n, out_h, out_w, c), np.uint8)
  # PIL skips a pass whose size does not change.
  passes = [p for p, changes in (('h', out_w != in_w), ('v', out_h != in_h)) if changes]
  if vertical_first((in_h, in_w), (out_h, out_w)):
    passes.reverse()
  if not passes:
    out[...] = frames
    return out
  for frame, target in zip(frames, out):
    x = frame.reshape(in_h, in_w * c).astype(np.float64)
    for k, p in enumerate(passes):
      last = k == len(passes) - 1
      x = (_horizontal(x, out_w, c, resample, floor=not last) if p == 'h'
           else _vertical(x, out_h, resample, floor=not last))
    target.reshape(out_h, out_w * c)[...] = x  # truncating cast of values in [0, 255]
  return out
