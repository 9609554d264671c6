"""Preprocessing decoded frames to model input: PIL's 8-bit resampling reproduced bit for bit
(jaxvlm.resample: Pillow's separable filter with 22-bit fixed-point weights, rounded to uint8 after
each of the two passes, computed as exact banded float64 matrix products), then rescale and normalize
in float32, driven by a Hugging Face preprocessor config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvlm import resample as resample_lib

# PIL resample codes used in Hugging Face preprocessor configs.
_PIL_CODES = {2: 'bilinear', 3: 'bicubic'}


def resize_uint8(
  frames: np.ndarray, size: tuple[int, int], resample: str = 'bicubic', threads: int | None = None
) -> np.ndarray:
  """PIL-equivalent resize of uint8 [N, H, W, C] to uint8 [N, h, w, C] (see jaxvlm.resample; threads:
  how many threads the frames are spread over, None for its default)."""
  return resample_lib.resize_uint8(frames, size, resample, threads)


def preprocess(
  frames: np.ndarray,
  size: tuple[int, int],
  mean: Sequence[float] | None = (0.5, 0.5, 0.5),
  std: Sequence[float] | None = (0.5, 0.5, 0.5),
  resample: str = 'bicubic',
  rescale: float | None = 1 / 255,
) -> np.ndarray:
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
  x: np.ndarray = resize_uint8(frames, (size[0], size[1]), resample).astype(np.float32)
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
  raise ValueError(f'unsupported processor size {size!r}; expected {{height, width}} or {{shortest_edge}}')


def _center_crop(frames: np.ndarray, crop: Mapping[str, Any]) -> np.ndarray:
  crop_h, crop_w = int(crop['height']), int(crop['width'])
  _, h, w, _ = frames.shape
  if crop_h > h or crop_w > w:
    raise ValueError(f'crop {crop_h}x{crop_w} larger than resized frame {h}x{w}')
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  return frames[:, top : top + crop_h, left : left + crop_w]


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
  x: np.ndarray = frames.astype(np.float32)
  if cfg.get('do_rescale', True):
    x = x * np.float32(cfg.get('rescale_factor', 1 / 255))
  if cfg.get('do_normalize', True):
    if cfg.get('image_mean') is None or cfg.get('image_std') is None:
      raise ValueError('processor config has do_normalize but no image_mean / image_std')
    x = (x - np.asarray(cfg['image_mean'], np.float32)) / np.asarray(cfg['image_std'], np.float32)
  return x
