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

Layout: every pass is a left product `M [out, in] @ x [in, rest]` over a frame whose resampled axis is
outermost, the layout in which BLAS runs these short products fastest (a right product on the
channels-interleaved rows needs `M^T kron I_C`, three times the arithmetic, and ran several times
slower: docs/results.md). A horizontal-first resize ([H, W, C] -> [h, w, C]) runs:
  uint8 [H, W*C] --convert+T--> [W*C, H] = [W, C*H] --M_h--> [w, C*H] = [w*C, H] --round-->
  (BLAS reads its transpose [H, w*C] as it is) --M_v--> [h, w*C] --round, cast--> uint8 [h, w, C],
so the one explicit transpose rides on the uint8 -> float64 conversion the first pass needs anyway.
Clipping to [0, 255] is skipped for a pass whose weights cannot leave that range (bilinear). Frames
are resized one at a time, each chunk of frames on its own thread (numpy releases the GIL in the
products and element-wise passes).
"""

from __future__ import annotations

from concurrent import futures
import functools
import os
import threading
from typing import cast

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
    taps[xx, : len(idx)] = idx
    # PIL rounds half away from zero when converting to fixed point.
    weights[xx, : len(idx)] = np.trunc(w * _ONE + np.where(w < 0, -0.5, 0.5))
  return taps, weights


@functools.lru_cache(maxsize=32)
def _pass(in_size: int, out_size: int, resample: str) -> tuple[tuple[tuple[int, int, int, int, np.ndarray], ...], bool]:
  """One PIL pass: its band as blocks (out_start, out_stop, in_start, in_stop, matrix), and whether
  its output needs clipping to [0, 255].

  matrix: float64 [out_stop - out_start, in_stop - in_start] for `M @ x[in_start:in_stop]`; entries are
  the 22-bit integer weights times 2^-22 (exact in float64). No clip is needed when every weight is
  non-negative and 255 * (a row's weight sum) + 2^21 stays below 256 * 2^22 (then the rounded result
  of uint8 inputs is already in [0, 255]).
  """
  taps, weights = resample_taps(in_size, out_size, resample)
  blocks = []
  for start in range(0, out_size, _BLOCK):
    stop = min(start + _BLOCK, out_size)
    used = weights[start:stop] != 0
    band = taps[start:stop][used]
    lo, hi = (int(band.min()), int(band.max()) + 1) if band.size else (0, 1)
    matrix: np.ndarray = np.zeros((stop - start, hi - lo), np.float64)
    rows = np.broadcast_to(np.arange(stop - start)[:, None], used.shape)[used]
    # Taps of one output are distinct, so assignment (not accumulation) is exact.
    matrix[rows, taps[start:stop][used] - lo] = weights[start:stop][used] / _ONE
    matrix.setflags(write=False)
    blocks.append((start, stop, lo, hi, matrix))
  sums = weights.astype(np.int64).sum(1)
  clips = bool(weights.min() < 0 or 255 * sums.max() + (_ONE >> 1) >= 256 * _ONE)
  return tuple(blocks), clips


def _blocks(in_size: int, out_size: int, resample: str):
  """The band of one pass as blocks (out_start, out_stop, in_start, in_stop, matrix); see `_pass`."""
  return _pass(in_size, out_size, resample)[0]


def _product(x: np.ndarray, y: np.ndarray, blocks) -> None:
  """y [out, R] = M [out, in] @ x [in, R], block by block."""
  for start, stop, lo, hi, matrix in blocks:
    np.matmul(matrix, x[lo:hi], out=y[start:stop])


def _round(y: np.ndarray, clips: bool, floor: bool) -> None:
  """In place: PIL's `clip8((acc + 2^21) >> 22)` on y = acc * 2^-22. Without `floor` the values are
  left for a truncating cast to uint8, which floors the non-negative values the same way. Clipping
  y to [-0.5, 254.5] before adding 0.5 is the same as clipping the rounded result to [0, 255]."""
  if clips:
    np.clip(y, -0.5, 254.5, out=y)
  y += 0.5
  if floor:
    np.floor(y, out=y)


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
  """Pillow's pass order. Pillow 13 runs the vertical pass first when the height shrinks by more
  than twice as many pixels as the width does (older Pillow always ran the horizontal pass first);
  rounding after each pass makes the order visible in the output."""
  (in_h, in_w), (out_h, out_w) = in_size, out_size
  return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def _resize_frames(frames: np.ndarray, out: np.ndarray, plan: list, channels: int) -> None:
  """Resizes uint8 [n, H, W, C] frames into out [n, h, w, C] one frame at a time, following `plan`:
  per pass (layout, blocks, clips, input shape or None, output shape), shapes 2-D in the layout."""
  c = channels
  buffers = [(None if src is None else np.empty(src), np.empty(dst)) for _, _, _, src, dst in plan]
  for frame, target in zip(frames, out):
    image = frame.reshape(frame.shape[0], -1)  # uint8 [H, W * C]
    y, y_layout, y_clips = None, None, False  # the previous pass's output (float64, 2-D in its layout)
    for (layout, blocks, clips, _, _), (src, dst) in zip(plan, buffers):
      if y is None:  # the uint8 -> float64 conversion writes the first pass's layout
        x = cast(np.ndarray, src)  # the first pass has an input buffer
        np.copyto(x, image if layout == 'rows' else image.T)
      else:
        _round(y, y_clips, floor=True)
        if layout == 'rows':  # [w * C, H] -> [H, w * C]: BLAS reads the transpose as it is
          x = y.T
        else:  # [h, W * C] -> [W * C, h] = [W, C * h]: the product needs the rows contiguous
          x = cast(np.ndarray, src)  # a 'cols' pass has an input buffer
          np.copyto(x, y.T)
      n_in, n_out = (x.shape[0], dst.shape[0]) if layout == 'rows' else (x.shape[0] // c, dst.shape[0] // c)
      _product(x.reshape(n_in, -1), dst.reshape(n_out, -1), blocks)
      y, y_layout, y_clips = dst, layout, clips
    y = cast(np.ndarray, y)  # the plan has at least one pass
    final = target.reshape(target.shape[0], -1)
    if y_layout == 'rows':  # add 0.5 and cast in one pass (the cast truncates values in [0, 256))
      if y_clips:
        np.clip(y, -0.5, 254.5, out=y)
      np.add(y, 0.5, out=final, casting='unsafe')
    else:  # a ufunc writing a transposed output is slow; copyto transposes fast
      _round(y, y_clips, floor=False)
      np.copyto(final, y.T, casting='unsafe')  # truncating cast of [0, 255]


@functools.lru_cache(maxsize=1)
def _pool(workers: int) -> futures.ThreadPoolExecutor:
  return futures.ThreadPoolExecutor(workers, thread_name_prefix='resample')


_this_thread = threading.local()


def set_thread_default(threads: int | None) -> None:
  """`default_threads()` in the calling thread from now on (None: back to the CPU count). The input
  pipeline's workers set 1: they already resize several samples at once."""
  _this_thread.threads = threads


def default_threads() -> int:
  """Threads `resize_uint8` spreads frames over by default: the calling thread's `set_thread_default`,
  else the CPUs this process may use, at most 4."""
  chosen = getattr(_this_thread, 'threads', None)
  if chosen is not None:
    return int(chosen)
  return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))


def resize_uint8(
  frames: np.ndarray, size: tuple[int, int], resample: str = 'bicubic', threads: int | None = None
) -> np.ndarray:
  """PIL-equivalent `Image.resize((w, h), resample)` of uint8 [N, H, W, C] -> uint8 [N, h, w, C].

  threads: frames are split into that many contiguous chunks resized in parallel (numpy's products
  and element-wise passes release the GIL); None: `default_threads()`; 1: in the calling thread.
  Every frame is computed the same way whatever the split, so the output does not depend on it.
  """
  if resample not in FILTERS:
    raise ValueError(f"unsupported resample {resample!r}; expected one of {sorted(FILTERS)}")
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4:
    raise ValueError(f'expected uint8 [N, H, W, C] frames, got {frames.dtype} {frames.shape}')
  out_h, out_w = (int(s) for s in size)
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'output size must be positive, got {size}')
  threads = default_threads() if threads is None else int(threads)
  if threads < 1:
    raise ValueError(f'threads must be >= 1 or None, got {threads}')
  n, in_h, in_w, c = frames.shape
  out = np.empty((n, out_h, out_w, c), np.uint8)
  # PIL skips a pass whose size does not change.
  passes = [p for p, changes in (('h', out_w != in_w), ('v', out_h != in_h)) if changes]
  if vertical_first((in_h, in_w), (out_h, out_w)):
    passes.reverse()
  if not passes:
    out[...] = frames
    return out
  # Each pass multiplies [in, rest] with its axis outermost: a horizontal pass works on [W, C * rows]
  # (the 2-D transpose of the channels-last [rows, W * C]: layout 'cols'), a vertical pass on
  # [H, cols * C] (channels-last rows: layout 'rows').
  plan: list[tuple] = []
  rows, cols = in_h, in_w
  for k, p in enumerate(passes):
    if p == 'h':
      plan.append(('cols', *_pass(in_w, out_w, resample), (cols * c, rows), (out_w * c, rows)))
      cols = out_w
    else:
      # After a horizontal pass the vertical one reads that pass's output as a transposed operand.
      plan.append(('rows', *_pass(in_h, out_h, resample), (rows, cols * c) if k == 0 else None, (out_h, cols * c)))
      rows = out_h
  chunks = min(threads, n)
  if chunks <= 1:
    _resize_frames(frames, out, plan, c)
    return out
  bounds = np.linspace(0, n, chunks + 1).round().astype(int)
  jobs = [
    _pool(threads).submit(_resize_frames, frames[a:b], out[a:b], plan, c) for a, b in zip(bounds[:-1], bounds[1:])
  ]
  for job in jobs:
    job.result()
  return out
