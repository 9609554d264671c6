"""Qwen2.5-VL processing: smart resize, numpy patchify and normalization vs transformers (frames already at
the target size), the keyframe -> temporal patch rule, and the prompt's token layout."""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_image

from jaxvlm import qwen2_5_vl_processor as qp
from jaxvlm.models import qwen2_5_vl as qv
from jaxvlm.models.attention import Group
from jaxvlm.processor import ANSWER_INSTRUCTION

PIXELS = qp.QwenPixels(patch_size=4, temporal_patch_size=2, merge_size=2, min_pixels=8 * 8, max_pixels=64 * 64)


@contextlib.contextmanager
def _without_torchvision():
  """transformers' Qwen2-VL video processor module imports torchvision at import time, and torchvision is
  not installed. Its `patchify` is plain torch; to run that real code, the import sees an empty
  placeholder module, removed again right after."""
  names = ['torchvision', 'torchvision.transforms', 'torchvision.transforms.v2', 'torchvision.transforms.v2.functional']
  added = [n for n in names if n not in sys.modules]
  for n in added:
    sys.modules[n] = types.ModuleType(n)
  try:
    yield
  finally:
    for n in added:
      sys.modules.pop(n, None)


def hf_video_patchify(frames: np.ndarray) -> np.ndarray:
  """transformers' `Qwen2VLVideoProcessor.patchify` on normalized frames [F, H, W, C] -> [T*gh*gw, P]."""
  with _without_torchvision():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
  videos = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))[None]
  flat, *_ = Qwen2VLVideoProcessor.patchify(
    None,
    videos,
    patch_size=PIXELS.patch_size,
    merge_size=PIXELS.merge_size,
    temporal_patch_size=PIXELS.temporal_patch_size,
  )
  return flat[0].numpy()


def hf_image_processor():
  return hf_image.Qwen2VLImageProcessorPil(
    patch_size=PIXELS.patch_size,
    merge_size=PIXELS.merge_size,
    temporal_patch_size=PIXELS.temporal_patch_size,
    min_pixels=PIXELS.min_pixels,
    max_pixels=PIXELS.max_pixels,
  )


def frames_u8(n: int, h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_smart_resize_equals_transformers():
  for h, w in [(24, 40), (100, 300), (1080, 1920), (17, 400), (5000, 60), (30, 30), (480, 854)]:
    for lo, hi in [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28), (8 * 8, 64 * 64)]:
      factor = 28 if lo > 64 else 8
      assert qp.smart_resize(h, w, factor, lo, hi) == hf_image.smart_resize(h, w, factor, lo, hi), (h, w, lo)
  assert PIXELS.target_size(24, 40) == (24, 40)  # already at a valid size: unchanged


@pytest.mark.parametrize('num_frames', [4, 5])
def test_patchify_equals_transformers_video_processor(num_frames):
  x = PIXELS.normalize(frames_u8(num_frames))
  ours = PIXELS.patchify(x)
  t = -(-num_frames // 2)
  assert ours.shape == (t, 3, 5, 4, 3 * 2 * 4 * 4)
  pad = np.concatenate([x, x[-1:]]) if num_frames % 2 else x  # transformers' last-frame repeat
  np.testing.assert_array_equal(ours.reshape(-1, ours.shape[-1]), hf_video_patchify(pad))
  assert PIXELS.grid(num_frames, 24, 40) == (t, 6, 10)


def test_keyframes_become_one_temporal_patch_each_like_the_image_path():
  selected = frames_u8(3, seed=1)
  patches, grid = PIXELS.preprocess(qp.keyframe_clip(selected))
  assert grid == (3, 6, 10) and patches.shape[0] == 3
  ref = hf_image_processor()(images=list(selected), return_tensors='np')
  np.testing.assert_array_equal(ref['image_grid_thw'], [[1, 6, 10]] * 3)
  per_image = ref['pixel_values'].reshape(3, -1, patches.shape[-1])
  np.testing.assert_allclose(patches.reshape(3, -1, patches.shape[-1]), per_image, atol=1e-5)
  # Temporal patch t depends on selected frame t only.
  changed = selected.copy()
  changed[1] = 255 - changed[1]
  again, _ = PIXELS.preprocess(qp.keyframe_clip(changed))
  np.testing.assert_array_equal(again[[0, 2]], patches[[0, 2]])
  assert not np.array_equal(again[1], patches[1])
  assert qp.patch_of_frame(np.arange(6)).tolist() == [0, 0, 1, 1, 2, 2]


QWEN_TEMPLATE = (
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
  "{% for c in message['content'] %}{% if c['type'] == 'video' %}"
  "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
  "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
  '[PAD] [UNK] user assistant What colour is the ball ? A B C . red blue green Answer with option '
  '\' s letter from given choices directly'
).split()
SPECIAL = ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|video_pad|>', '<|image_pad|>']


def qwen_tokenizer():
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token='[UNK]', pad_token='[PAD]', additional_special_tokens=SPECIAL
  )


def test_prompt_layout_of_the_video_span():
  tok = qwen_tokenizer()
  question, options = 'What colour is the ball?', ['red', 'blue', 'green']
  user = '\n'.join([question] + [f'{l}. {o}' for l, o in zip('ABC', options)] + [ANSWER_INSTRUCTION])
  grid = (2, 6, 10)
  p = qp.build_prompt(tok, QWEN_TEMPLATE, user, question, ANSWER_INSTRUCTION, grid, 2)
  pad, start, end = (tok.convert_tokens_to_ids(t) for t in (qp.VIDEO_PAD, qp.VISION_START, qp.VISION_END))
  n_pads = int(np.prod(grid)) // 4  # transformers: video_grid_thw.prod() // merge**2
  assert int((p.input_ids == pad).sum()) == n_pads == 30
  video = np.flatnonzero(p.group == Group.VIDEO)
  assert p.input_ids[video[0]] == start and p.input_ids[video[-1]] == end and len(video) == n_pads + 2
  assert np.all(np.diff(video) == 1)
  np.testing.assert_array_equal(p.frame[video[1:-1]], np.repeat([0, 1], 15))
  assert p.frame[video[0]] == p.frame[video[-1]] == -1 and (p.frame[p.group != Group.VIDEO] == -1).all()
  assert p.group[0] == Group.SYSTEM and p.group[-1] == Group.LAST
  assert set(np.unique(p.group).tolist()) == {int(g) for g in Group}
  assert p.num_frames == 2
  # The layout agrees with the model-side helpers and feeds rope_index.
  cfg = qv.Qwen25VLConfig(
    vision=qv.Qwen25VLVisionConfig(patch_size=4, spatial_merge_size=2),
    text=None,
    video_token_id=pad,
    vision_start_token_id=start,
    vision_end_token_id=end,
    image_token_id=tok.convert_tokens_to_ids('<|image_pad|>'),
  )
  np.testing.assert_array_equal(qv.video_frames(p.input_ids, cfg, 15), p.frame)
  positions, _ = qv.rope_index(p.input_ids[None], cfg, [grid], [1.0])
  assert positions.shape == (3, 1, len(p.input_ids))
