"""Preprocessing is bit-exact with PIL's resampling and the Hugging Face processors' pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxvlm import pixels
from tests.test_video import _source_frames  # the frames the decoding tests encode


# ---------------------------------------------------------------------------------------------
# Preprocessing against PIL.


def _pil_reference(frames, size, resample, mean, std, rescale=1 / 255):
  h, w = size
  code = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}[resample]
  resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), code)) for f in frames])
  return (resized.astype(np.float32) * np.float32(rescale) - np.float32(mean)) / np.float32(std)


# Up, down, mixed, one axis only, and Pillow's vertical-first case (height shrinks much more).
SIZES = [
  ((48, 64), (96, 96)),
  ((48, 64), (20, 30)),
  ((48, 64), (60, 33)),
  ((48, 64), (48, 17)),
  ((64, 30), (10, 28)),
  ((64, 30), (9, 41)),
  ((17, 23), (17, 23)),
]


@pytest.mark.parametrize('resample', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('in_size,out_size', SIZES)
def test_resize_is_bit_exact_with_pil(resample, in_size, out_size):
  rng = np.random.default_rng(sum(in_size) * 100 + sum(out_size))
  frames = rng.integers(0, 256, (2, *in_size, 3), dtype=np.uint8)
  frames[1] = (frames[1] > 127) * 255  # hard edges drive the filter lobes out of range
  code = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}[resample]
  h, w = out_size
  expected = np.stack([np.asarray(Image.fromarray(f).resize((w, h), code)) for f in frames])
  np.testing.assert_array_equal(pixels.resize_uint8(frames, out_size, resample), expected)


def test_preprocess_matches_pil_pipeline():
  frames = _source_frames()[:4]
  mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
  got = pixels.preprocess(frames, (56, 56), mean, std, resample='bicubic')
  assert got.dtype == np.float32 and got.shape == (4, 56, 56, 3)
  np.testing.assert_allclose(got, _pil_reference(frames, (56, 56), 'bicubic', mean, std), rtol=0, atol=1e-6)


SIGLIP_CONFIG = {  # google/siglip-so400m-patch14-384 preprocessor_config.json (size shrunk)
  'do_normalize': True,
  'do_rescale': True,
  'do_resize': True,
  'image_mean': [0.5, 0.5, 0.5],
  'image_std': [0.5, 0.5, 0.5],
  'image_processor_type': 'SiglipImageProcessor',
  'processor_class': 'SiglipProcessor',
  'resample': 3,
  'rescale_factor': 0.00392156862745098,
  'size': {'height': 40, 'width': 40},
}

CLIP_STYLE_CONFIG = {
  'do_resize': True,
  'size': {'shortest_edge': 32},
  'resample': 2,
  'do_center_crop': True,
  'crop_size': {'height': 32, 'width': 32},
  'do_rescale': True,
  'rescale_factor': 1 / 255,
  'do_normalize': True,
  'image_mean': [0.48145466, 0.4578275, 0.40821073],
  'image_std': [0.26862954, 0.26130258, 0.27577711],
}


def test_preprocess_from_siglip_config():
  frames = _source_frames()[:3]
  got = pixels.preprocess_from_processor_config(frames, SIGLIP_CONFIG)
  expected = _pil_reference(frames, (40, 40), 'bicubic', 0.5, 0.5)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  assert got.min() >= -1.0 and got.max() <= 1.0


def test_preprocess_from_shortest_edge_config_with_center_crop():
  frames = _source_frames()[:2]  # 48 x 64 -> shortest edge 32 -> 32 x 42 -> crop 32 x 32
  got = pixels.preprocess_from_processor_config(frames, CLIP_STYLE_CONFIG)
  full = _pil_reference(frames, (32, 42), 'bilinear', CLIP_STYLE_CONFIG['image_mean'], CLIP_STYLE_CONFIG['image_std'])
  np.testing.assert_allclose(got, full[:, :, 5:37], rtol=0, atol=1e-6)


def test_preprocess_flags_and_errors():
  frames = _source_frames()[:1]
  raw = pixels.preprocess_from_processor_config(
    frames, {'do_resize': False, 'do_rescale': False, 'do_normalize': False}
  )
  np.testing.assert_array_equal(raw, frames.astype(np.float32))
  with pytest.raises(ValueError, match='resample code'):
    pixels.preprocess_from_processor_config(frames, {**SIGLIP_CONFIG, 'resample': 1})
  with pytest.raises(ValueError, match='processor size'):
    pixels.preprocess_from_processor_config(frames, {**SIGLIP_CONFIG, 'size': {'longest': 3}})
  with pytest.raises(ValueError, match='no image_mean'):
    pixels.preprocess_from_processor_config(frames, {'size': {'height': 8, 'width': 8}})
  with pytest.raises(ValueError, match='uint8'):
    pixels.preprocess(frames.astype(np.float32), (8, 8))
