"""jaxvlm.resample against PIL at the sizes real frames have (test_video covers the small cases)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxvlm import resample

_CODES = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}


def _pil(frames: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
  h, w = size
  mode = 'L' if frames.shape[-1] == 1 else 'RGB'
  out = [
    np.asarray(Image.fromarray(f.squeeze(-1) if mode == 'L' else f, mode).resize((w, h), _CODES[name])) for f in frames
  ]
  return np.stack(out).reshape(len(frames), h, w, -1)


def _frames(shape, seed):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, shape, dtype=np.uint8)
  frames[0] = (frames[0] > 127) * 255  # hard edges: the bicubic lobes overshoot and get clipped
  return frames


@pytest.mark.parametrize('name', ['bicubic', 'bilinear'])
@pytest.mark.parametrize(
  'in_size,out_size',
  [
    ((360, 640), (384, 384)),  # a 360p video frame to SigLIP-so400m's input (width shrinks, height grows)
    ((240, 1000), (7, 13)),  # a downscale of ~77x: hundreds of taps per output sample
    ((700, 90), (41, 88)),  # height shrinks far more: Pillow runs the vertical pass first
  ],
)
def test_matches_pil_at_real_sizes(name, in_size, out_size):
  frames = _frames((2, *in_size, 3), sum(in_size))
  np.testing.assert_array_equal(resample.resize_uint8(frames, out_size, name), _pil(frames, out_size, name))


def test_single_channel_matches_pil_mode_l():
  frames = _frames((2, 50, 70, 1), 1)
  np.testing.assert_array_equal(resample.resize_uint8(frames, (33, 101)), _pil(frames, (33, 101), 'bicubic'))


def test_block_matrices_hold_pils_integer_weights():
  taps, weights = resample.resample_taps(640, 384, 'bicubic')
  dense = np.zeros((384, 640), np.int64)
  for row in range(384):
    np.add.at(dense[row], taps[row], weights[row])
  rebuilt = np.zeros((384, 640))
  for start, stop, lo, hi, matrix in resample._blocks(640, 384, 'bicubic'):
    rebuilt[start:stop, lo:hi] = matrix
  np.testing.assert_array_equal(rebuilt * (1 << resample.PRECISION_BITS), dense)
  # Each output's weights sum to one in fixed point up to PIL's rounding of each tap.
  assert np.all(np.abs(dense.sum(1) - (1 << resample.PRECISION_BITS)) <= taps.shape[1])


def test_unchanged_size_and_errors():
  frames = _frames((1, 9, 11, 3), 2)
  np.testing.assert_array_equal(resample.resize_uint8(frames, (9, 11)), frames)
  with pytest.raises(ValueError, match='unsupported resample'):
    resample.resize_uint8(frames, (4, 4), 'lanczos')
  with pytest.raises(ValueError, match='uint8'):
    resample.resize_uint8(frames.astype(np.int32), (4, 4))
  with pytest.raises(ValueError, match='positive'):
    resample.resize_uint8(frames, (0, 4))


def test_threads_do_not_change_the_output():
  frames = _frames((5, 36, 64, 3), 3)
  expected = _pil(frames, (38, 40), 'bicubic')
  for threads in (1, 2, 3, 8):
    np.testing.assert_array_equal(resample.resize_uint8(frames, (38, 40), threads=threads), expected)
  with pytest.raises(ValueError, match='threads'):
    resample.resize_uint8(frames, (38, 40), threads=0)


def test_clip_is_skipped_only_where_the_weights_cannot_leave_0_255():
  # Bicubic lobes go negative (hard edges overshoot), bilinear weights are non-negative and sum to ~1.
  assert resample._pass(640, 384, 'bicubic')[1] and resample._pass(360, 384, 'bicubic')[1]
  assert not resample._pass(640, 384, 'bilinear')[1] and not resample._pass(360, 384, 'bilinear')[1]
  edges = np.zeros((1, 8, 64, 3), np.uint8)
  edges[:, :, 1::2] = 255  # every other column saturated: the largest in-range sums bilinear can make
  np.testing.assert_array_equal(resample.resize_uint8(edges, (8, 37), 'bilinear'), _pil(edges, (8, 37), 'bilinear'))


@pytest.mark.parametrize('name', ['bicubic', 'bilinear'])
@pytest.mark.parametrize(
  'in_size,out_size',
  [
    ((40, 30), (17, 30)),  # vertical pass only (rows layout in and out)
    ((40, 30), (40, 71)),  # horizontal pass only (the transposed layout is cast back at the end)
    ((90, 20), (11, 9)),  # vertical first, then horizontal (the transposed copy between the passes)
  ],
)
def test_single_passes_and_vertical_first_match_pil(name, in_size, out_size):
  frames = _frames((3, *in_size, 3), sum(out_size))
  np.testing.assert_array_equal(resample.resize_uint8(frames, out_size, name), _pil(frames, out_size, name))


def test_thread_default_is_per_thread():
  import threading  # pylint: disable=g-import-not-at-top

  everywhere = resample.default_threads()
  inside = {}

  def worker():
    resample.set_thread_default(1)
    inside['set'] = resample.default_threads()
    resample.set_thread_default(None)
    inside['reset'] = resample.default_threads()

  t = threading.Thread(target=worker)
  t.start()
  t.join()
  assert inside == {'set': 1, 'reset': everywhere}
  assert resample.default_threads() == everywhere  # the other threads never saw it
