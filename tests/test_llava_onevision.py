"""LLaVA-OneVision parity against transformers (PyTorch) on tiny random models, greedy decoding, and
parameter counts of the full-size configs without memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs.plan import QWEN2, SIGLIP_SO400M_IN_LLAVA
from jaxvlm import checkpoints
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2
from jaxvlm.models.attention import TokenMeta

VIDEO_ID, IMAGE_ID = 98, 97
NUM_FRAMES = 2


def tiny_config(tie: bool, image_size: int = 35) -> transformers.LlavaOnevisionConfig:
  """image 35 / patch 7: a 5x5 grid pooled to 3x3 (odd sizes exercise the bilinear edge rule)."""
  vision = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=image_size,
    patch_size=7,
    vision_use_head=False,
  )
  text = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    rope_theta=5000.0,
    tie_word_embeddings=tie,
    max_position_embeddings=256,
  )
  return transformers.LlavaOnevisionConfig(
    vision_config=vision,
    text_config=text,
    image_token_index=IMAGE_ID,
    video_token_index=VIDEO_ID,
    vision_feature_layer=-1,
    vision_feature_select_strategy='full',
    tie_word_embeddings=tie,
  )


def build(tie: bool, seed: int = 0):
  """-> (torch model, our model, our params) with identical random weights (noise on every tensor so
  zero-initialised biases cannot hide a layout bug)."""
  torch.manual_seed(seed)
  hf = transformers.LlavaOnevisionForConditionalGeneration(tiny_config(tie)).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  config = lo.LlavaOnevisionConfig.from_hf(hf.config.to_dict())
  model = lo.LlavaOnevisionForConditionalGeneration(config)
  params = checkpoints.convert_state_dict(
    'llava_onevision', {k: v.numpy() for k, v in hf.state_dict().items()}, lo.param_shapes(model)
  )
  return hf, model, jax.tree.map(jnp.asarray, params)


def prompt(model: lo.LlavaOnevisionForConditionalGeneration, before: int, after: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  n = model.config.num_video_tokens(NUM_FRAMES)
  text = lambda k: rng.integers(1, 90, size=k)
  return np.concatenate([text(before), np.full(n, VIDEO_ID), text(after)]).astype(np.int32)


def pixels(seed: int, batch: int, size: int = 35) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, NUM_FRAMES, size, size, 3)).astype(np.float32)


def meta_from_mask(mask: np.ndarray) -> TokenMeta:
  return qwen2.text_meta(jnp.asarray(mask))


@pytest.mark.parametrize('tie', [False, True])
def test_padded_batch_logits_match_transformers(tie):
  hf, model, params = build(tie)
  ids = [prompt(model, 3, 7, 1), prompt(model, 5, 2, 2)]
  s = max(map(len, ids))
  batch = np.zeros((2, s), np.int32)
  mask = np.zeros((2, s), bool)
  for i, x in enumerate(ids):
    batch[i, : len(x)], mask[i, : len(x)] = x, True
  px = pixels(3, 2)
  with torch.no_grad():
    ref = hf(
      input_ids=torch.from_numpy(batch).long(),
      attention_mask=torch.from_numpy(mask).long(),
      pixel_values_videos=torch.from_numpy(px.transpose(0, 1, 4, 2, 3)),
    ).logits.numpy()

  @jax.jit
  def logits(params):
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (2, s))
    out = model.apply({'params': params}, batch, px, positions, meta_from_mask(mask))
    return model.apply({'params': params}, out.hidden, method='logits')

  ours = np.asarray(logits(params))
  err = np.abs(ours - ref)[mask].max()
  print(f'llava logits max abs diff (tie={tie}): {err:.2e}')
  assert err <= 1e-4


def test_video_features_match_transformers():
  hf, model, params = build(False)
  px = pixels(4, 1)
  with torch.no_grad():
    ref = hf.model.get_video_features(
      torch.from_numpy(px.transpose(0, 1, 4, 2, 3)), vision_feature_layer=-1, vision_feature_select_strategy='full'
    ).pooler_output.numpy()
  ours = np.asarray(model.apply({'params': params}, px, method='video_features'))
  assert ours.shape == (1, model.config.num_video_tokens(NUM_FRAMES), 64) == ref.shape
  assert np.abs(ours - ref).max() <= 1e-4


def test_greedy_generation_matches_transformers_generate():
  hf, model, params = build(False, seed=1)
  ids = [prompt(model, 2, 6, 5), prompt(model, 4, 1, 6)]
  s = max(map(len, ids))
  batch = np.zeros((2, s), np.int32)
  mask = np.zeros((2, s), bool)
  for i, x in enumerate(ids):  # left padding, as generate expects
    batch[i, s - len(x) :], mask[i, s - len(x) :] = x, True
  px = pixels(7, 2)
  with torch.no_grad():
    ref = hf.generate(
      input_ids=torch.from_numpy(batch).long(),
      attention_mask=torch.from_numpy(mask).long(),
      pixel_values_videos=torch.from_numpy(px.transpose(0, 1, 4, 2, 3)),
      do_sample=False,
      max_new_tokens=8,
      min_new_tokens=8,
      pad_token_id=0,
    )[:, s:].numpy()
  positions = qwen2.positions_from_mask(jnp.asarray(mask))
  ours = np.asarray(lo.generate(model, params, batch, px, positions, meta_from_mask(mask), 8))
  np.testing.assert_array_equal(ours, ref)


def test_bilinear_pooling_matrix_matches_torch_interpolate():
  for n_in in (4, 5, 27):
    n_out = -(-n_in // 2)
    x = torch.randn(1, 1, n_in, n_in)
    ref = torch.nn.functional.interpolate(x, size=(n_out, n_out), mode='bilinear').numpy()[0, 0]
    w = lo.bilinear_matrix(n_in, n_out)
    np.testing.assert_allclose(w @ x.numpy()[0, 0] @ w.T, ref, atol=1e-5)


# The full-size configs of the memory planner, keyed by preset (llava_ov_0_5b, llava_ov_7b, llava_ov_72b).
FULL_TEXT = QWEN2


@pytest.mark.parametrize('size', sorted(FULL_TEXT))
def test_full_size_parameter_count_equals_transformers(size):
  text = FULL_TEXT[size]
  hf_config = transformers.LlavaOnevisionConfig(
    vision_config=SIGLIP_SO400M_IN_LLAVA, text_config=text, tie_word_embeddings=text['tie_word_embeddings']
  )
  with torch.device('meta'):
    hf = transformers.LlavaOnevisionForConditionalGeneration(hf_config)
  expected = sum(p.numel() for p in hf.parameters())  # tied weights are counted once
  model = lo.LlavaOnevisionForConditionalGeneration(lo.LlavaOnevisionConfig.from_hf(hf_config.to_dict()))
  shapes = lo.param_shapes(model)
  assert lo.count_params(shapes) == expected
  assert model.config.num_video_tokens(32) == 32 * 196 + 1
  print(f'llava-onevision {size}: {expected:,} parameters')
