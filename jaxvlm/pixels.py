"""Preprocessing decoded frames to model input: a numpy re-implementation of PIL's 8-bit resampling
(Pillow's Resample.c: separable filter widened by the downscale factor, weights in 22-bit fixed point,
rounding to uint8 after each of the two passes), then rescale and normalize in float32, driven by a
Hugging Face preprocessor config.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_PRECISION_BITS = 32 - 8 - 2
# PIL resample codes used in Hugging Face preprocessor configs.
_PIL_CODES = {2: 'bilinear', 3: 'bicubic'}


def _bicubic(x: np.ndarray) -> np.ndarray:
  a = -0.5
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


_FILTERS = {'bicubic': (_bicubic, 2.0), 'bilinear': (_triangle, 1.0)}


def _resample_taps(in_size: int, out_size: int, resample: str) -> tuple[np.ndarray, np.ndarray]:
  """Input indices int64 [out_size, K] and fixed-point weights int32 [out_size, K] of one PIL pass.

  Padding taps point at index 0 with weight 0.
  """
  fn, support = _FILTERS[resample]
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
    weights[xx, :len(idx)] = np.trunc(w * (1 << _PRECISION_BITS) + np.where(w < 0, -0.5, 0.5))
  return taps, weights


def _resample_axis(x: np.ndarray, axis: int, out_size: int, resample: str) -> np.ndarray:
  """One PIL pass along `axis` of an int32 array holding uint8 values; rounds back to 0..255."""
  taps, weights = _resample_taps(x.shape[axis], out_size, resample)
  # The resampled axis goes first so each tap is a gather of contiguous rows.
  rows = np.moveaxis(x, axis, 0)
  rest = rows.shape[1:]
  rows = np.ascontiguousarray(rows).reshape(rows.shape[0], -1)
  # int32 cannot overflow: PIL's 22-bit weights leave two spare bits for the filter's lobes.
  acc = np.full((out_size, rows.shape[1]), 1 << (_PRECISION_BITS - 1), np.int32)
  for k in range(taps.shape[1]):
    acc += rows[taps[:, k]] * weights[:, k, None]
  out = np.clip(acc >> _PRECISION_BITS, 0, 255)  # Arithmetic shift = floor, as in PIL.
  return np.moveaxis(out.reshape((out_size,) + rest), 0, axis)


def resize_uint8(frames: np.ndarray, size: tuple[int, int],
                 resample: str = 'bicubic') -> np.ndarray:
  """PIL-equivalent resize of uint8 [N, H, W, C] to uint8 [N, h, w, C]."""
  if resample not in _FILTERS:
    raise ValueError(f"unsupported resample {resample!r}; expected one of {sorted(_FILTERS)}")
  out_h, out_w = size
  _, in_h, in_w, _ = frames.shape
  x = frames.astype(np.int32)
  # PIL skips a pass whose size does not change. Pillow 13 runs the vertical pass first when the
  # height shrinks by more than twice as many pixels as the width does (older Pillow always ran
  # the horizontal pass first); rounding after each pass makes the order visible in the output.
  axes = [(2, out_w), (1, out_h)]
  if in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w):
    axes.reverse()
  for axis, out_size in axes:
    if out_size != x.shape[axis]:
      x = _resample_axis(x, axis, out_size, resample)
  return x.astype(np.uint8)


def preprocess(frames: np.ndarray, size: tuple[int, int],
               mean: Sequence[float] | None = (0.5, 0.5, 0.5),
               std: Sequence[float] | None = (0.5, 0.5, 0.5),
               resample: str = 'bicubic', rescale: float | None = 1 / 255) -> np.ndarray:
  """Resize, rescale and normalize frames for a vision tower (channels-last, numpy only).

  The resize reproduces PIL's `Image.resize(..., resample)` on 8-bit RGB exactly (the tests
  compare bit for bit), i.e. what a PIL-backend Hugging Face processor does. It differs from
  transformers' default (torchvision) image/video processors in two ways: those resize uint8
  torch tensors with `torchvision.transforms.v2.functional.resize(antialias=True)`, whose
  antialiased bicubic/bilinear follows the same filter design as PIL but is a different
  implementation (not checked here: torchvision is not installed), and they fuse rescale and
  normalize as `(x - 255 * mean) / (255 * std)`, equal to ours up to float32 rounding (~1e-7).

  Args:
    frames: uint8 [N, H, W, 3].
    size: output (h, w).
    mean: per-channel mean after rescaling, or None to skip normalization.
    std: per-channel std, or None together with mean.
    resample: 'bicubic' | 'bilinear'.
    rescale: multiplier applied to pixel values, or None to skip.

  Returns:
    float32 [N, h, w, 3].
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'expected uint8 [N, H, W, 3] frames, got {frames.dtype} {frames.shape}')
  x = resize_uint8(frames, tuple(size), resample).astype(np.float32)
  if rescale is not None:
    x = x * np.float32(rescale)
  if mean is not None and std is not None:
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return x


def _output_size(cfg: Mapping[str, Any], height: int, width: int) -> tuple[int, int]:
  """Target (h, w) from a processor `size` dict, as transformers' get_resize_output_image_size."""
  size = cfg.get('size')
  if isinstance(size, Mapping) and 'height' in size and 'width' in size:
    return int(size['height']), int(size['width'])
  if isinstance(size, Mapping) and 'shortest_edge' in size:
    short = int(size['shortest_edge'])
    if height <= width:
      return short, int(short * width / height)
    return int(short * height / width), short
  raise ValueError(f'unsupported processor size {size!r}; expected {{height, width}} or '
                   '{shortest_edge}')


def _center_crop(frames: np.ndarray, crop: Mapping[str, Any]) -> np.ndarray:
  crop_h, crop_w = int(crop['height']), int(crop['width'])
  _, h, w, _ = frames.shape
  if crop_h > h or crop_w > w:
    raise ValueError(f'crop {crop_h}x{crop_w} larger than resized frame {h}x{w}')
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  return frames[:, top:top + crop_h, left:left + crop_w]


def preprocess_from_processor_config(frames: np.ndarray, cfg: Mapping[str, Any]) -> np.ndarray:
  """`preprocess` driven by a preprocessor_config.json / video_preprocessor_config.json dict.

  Reads size ({height, width} or {shortest_edge}), resample (PIL code: 2 bilinear, 3 bicubic),
  image_mean, image_std, rescale_factor, do_resize, do_rescale, do_normalize and optionally
  do_center_crop with crop_size {height, width}.

  Returns:
    float32 [N, h, w, 3].
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'expected uint8 [N, H, W, 3] frames, got {frames.dtype} {frames.shape}')
  code = int(cfg.get('resample', 3))
  if code not in _PIL_CODES:
    raise ValueError(f'unsupported PIL resample code {code}; supported: {_PIL_CODES}')
  if cfg.get('do_resize', True):
    frames = resize_uint8(frames, _output_size(cfg, *frames.shape[1:3]), _PIL_CODES[code])
  if cfg.get('do_center_crop'):
    frames = _center_crop(frames, cfg['crop_size'])
  x = frames.astype(np.float32)
  if cfg.get('do_rescale', True):
    x = x * np.float32(cfg.get('rescale_factor', 1 / 255))
  if cfg.get('do_normalize', True):
    if cfg.get('image_mean') is None or cfg.get('image_std') is None:
      raise ValueError('processor config has do_normalize but no image_mean / image_std')
    x = (x - np.asarray(cfg['image_mean'], np.float32)) / np.asarray(cfg['image_std'], np.float32)
  return x
