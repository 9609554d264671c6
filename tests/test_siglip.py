"""SigLIP port vs transformers (PyTorch) on tiny random models, plus a full-size eval_shape check."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxvlm import checkpoints
from jaxvlm.models import siglip

TOL = 1e-4  # float32 parity

TINY_VISION = dict(
  hidden_size=32,
  intermediate_size=37,
  num_hidden_layers=3,
  num_attention_heads=4,
  image_size=28,
  patch_size=7,
  num_channels=3,
)
TINY_TEXT = dict(
  hidden_size=32,
  intermediate_size=37,
  num_hidden_layers=2,
  num_attention_heads=4,
  vocab_size=99,
  max_position_embeddings=16,
  pad_token_id=1,
  bos_token_id=2,
  eos_token_id=3,
)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Adds noise to every parameter: HF init zeroes biases and logit scale/bias, which would hide
  layout bugs (a transposed or misplaced bias) from a parity test."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _convert(module, state_dict, *inputs):
  target = jax.eval_shape(module.init, jax.random.key(0), *inputs)['params']
  return checkpoints.state_dict_to_params(state_dict, target)


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)  # [B, H, W, C]
  ids = rng.integers(0, 99, size=(3, 10)).astype(np.int32)  # S=10 < max positions: positions sliced
  return pixels, ids


@pytest.fixture(scope='module')
def hf_siglip():
  torch.manual_seed(0)
  config = transformers.SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)
  return _perturbed(transformers.SiglipModel(config), seed=1)


def test_config_from_hf_reads_transformers_dicts(hf_siglip):
  config = siglip.SiglipConfig.from_hf(hf_siglip.config.to_dict())
  assert config.vision_config == siglip.SiglipVisionConfig(**TINY_VISION)
  assert config.text_config.vocab_size == 99 and config.text_config.max_position_embeddings == 16
  assert config.text_config.num_hidden_layers == 2 and config.text_config.output_size == 32
  # LLaVA-OneVision's vision_config: no vision_use_head key -> default True; explicit False honoured.
  llava_vision = {
    'model_type': 'siglip_vision_model',
    'hidden_size': 1152,
    'image_size': 384,
    'patch_size': 14,
    'num_hidden_layers': 26,
    'intermediate_size': 4304,
    'num_attention_heads': 16,
    'vision_use_head': False,
  }
  assert not siglip.SiglipVisionConfig.from_hf(llava_vision).vision_use_head
  del llava_vision['vision_use_head']
  cfg = siglip.SiglipVisionConfig.from_hf(llava_vision)
  assert cfg.vision_use_head and cfg.num_patches == 27 * 27
  with pytest.raises(ValueError, match='hidden_act'):
    siglip.SiglipVisionConfig.from_hf({'hidden_act': 'swish'})


def test_siglip_model_matches_transformers(hf_siglip, inputs):
  pixels, ids = inputs
  config = siglip.SiglipConfig.from_hf(hf_siglip.config.to_dict())
  model = siglip.SiglipModel(config)
  params = _convert(model, _state_dict(hf_siglip), pixels, ids)
  variables = {'params': params}

  with torch.no_grad():
    pt_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC -> NCHW
    pt_ids = torch.from_numpy(ids).long()
    ref = hf_siglip(input_ids=pt_ids, pixel_values=pt_pixels)
    ref_vision = hf_siglip.vision_model(pixel_values=pt_pixels, output_hidden_states=True)
    ref_image = hf_siglip.get_image_features(pixel_values=pt_pixels).pooler_output
    ref_text = hf_siglip.get_text_features(input_ids=pt_ids).pooler_output

  # One traced call for everything: eager op-by-op dispatch is the slow part on CPU.
  image, text, logits, vision, rel = jax.jit(
    lambda v, x, t: (
      model.apply(v, x, t, method=lambda m, x, t: (m.image_features(x), m.text_features(t), m(x, t), m.vision_model(x)))
      + (siglip.relevance(model, v['params'], x, t),)
    )
  )(variables, pixels, ids)

  assert image.shape == (2, 32) and text.shape == (3, 32) and logits.shape == (2, 3)
  diffs = {
    'image_embeds': _max_diff(image, ref_image),
    'text_embeds': _max_diff(text, ref_text),
    'logits_per_image': _max_diff(logits, ref.logits_per_image),
    'vision_last_hidden_state': _max_diff(vision.last_hidden_state, ref_vision.last_hidden_state),
  }
  assert vision.hidden_states.shape == (4, 2, 16, 32)
  assert len(ref_vision.hidden_states) == 4
  for i, ref_h in enumerate(ref_vision.hidden_states):
    diffs[f'vision_hidden_states[{i}]'] = _max_diff(vision.hidden_states[i], ref_h)
  diffs['relevance'] = _max_diff(rel, torch.sigmoid(ref.logits_per_image))
  print('max abs diff vs transformers:', diffs)
  assert max(diffs.values()) <= TOL, diffs
  # The parity above is only meaningful if the logits are not saturated/degenerate.
  assert float(np.std(np.asarray(logits))) > 1e-2


def test_vision_tower_without_head_matches_siglip_vision_model():
  # 31 = 4 * 7 + 3: the border that does not fill a patch is dropped, as in so400m (384 = 27 * 14 + 6).
  pixels = np.random.default_rng(1).standard_normal((2, 31, 31, 3)).astype(np.float32)
  torch.manual_seed(2)
  hf_config = transformers.SiglipVisionConfig(**{**TINY_VISION, 'image_size': 31}, vision_use_head=False)
  hf = _perturbed(transformers.SiglipVisionModel(hf_config), seed=3)
  config = siglip.SiglipVisionConfig.from_hf(hf_config.to_dict())
  tower = siglip.SiglipVisionTransformer(config)
  params = _convert(tower, _state_dict(hf), pixels)
  assert 'head' not in params

  out = tower.apply({'params': params}, pixels)
  with torch.no_grad():
    ref = hf(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
  assert out.pooled is None
  diffs = [_max_diff(out.hidden_states[i], h) for i, h in enumerate(ref.hidden_states)]
  diffs.append(_max_diff(out.last_hidden_state, ref.last_hidden_state))
  print('max abs diff per hidden state (+ last_hidden_state):', diffs)
  assert max(diffs) <= TOL, diffs


def test_reading_last_hidden_state_does_not_keep_the_layer_stack():
  """LLaVA-OneVision reads hidden_states[-1]: the [L+1, B, P, D] stack must be optimised away then."""
  config = siglip.SiglipVisionConfig(
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=8,
    num_attention_heads=4,
    image_size=64,
    patch_size=4,
    vision_use_head=False,
  )
  tower = siglip.SiglipVisionTransformer(config)
  pixels = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32)
  params = jax.eval_shape(tower.init, jax.random.key(0), pixels)['params']
  stack_bytes = (config.num_hidden_layers + 1) * 4 * config.num_patches * config.hidden_size * 4

  def temp_bytes(layer: int) -> int:
    fn = jax.jit(lambda p, x: tower.apply({'params': p}, x).hidden_states[layer])
    return fn.lower(params, pixels).compile().memory_analysis().temp_size_in_bytes

  last, middle = temp_bytes(-1), temp_bytes(3)
  print(f'temp bytes: hidden_states[-1] {last}, hidden_states[3] {middle}, full stack {stack_bytes}')
  assert last < stack_bytes // 2
  assert middle > last


def test_bfloat16_compute_keeps_float32_params(hf_siglip, inputs):
  pixels, ids = inputs
  config = siglip.SiglipConfig.from_hf(hf_siglip.config.to_dict())
  params = _convert(siglip.SiglipModel(config), _state_dict(hf_siglip), pixels, ids)
  model16 = siglip.SiglipModel(config, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(jax.eval_shape(model16.init, jax.random.key(0), pixels, ids))} == {
    jnp.dtype(jnp.float32)
  }
  features = lambda model: jax.jit(functools.partial(model.apply, method=model.image_features))(
    {'params': params}, pixels
  )
  image16, image32 = features(model16), features(siglip.SiglipModel(config))
  assert image16.dtype == jnp.bfloat16
  cos = np.sum(np.asarray(image16, np.float32) * np.asarray(image32), -1) / (
    np.linalg.norm(np.asarray(image16, np.float32), axis=-1) * np.linalg.norm(image32, axis=-1)
  )
  assert np.all(cos > 0.99), cos


def test_so400m_param_count_matches_transformers():
  vision = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
  )
  text = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    vocab_size=32000,
    max_position_embeddings=64,
    bos_token_id=None,
    eos_token_id=1,
  )
  hf_config = transformers.SiglipConfig(vision_config=vision, text_config=text)
  with torch.device('meta'):
    hf = transformers.SiglipModel(hf_config)
  hf_count = sum(p.numel() for p in hf.parameters())

  model = siglip.SiglipModel(siglip.SiglipConfig.from_hf(hf_config.to_dict()))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 384, 384, 3)), jnp.zeros((1, 64), jnp.int32))[
    'params'
  ]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  print(f'so400m-patch14-384 parameters: jax {count:,} transformers {hf_count:,}')
  assert count == hf_count
  assert shapes['vision_model']['encoder']['layers']['mlp']['fc1']['kernel'].shape == (27, 1152, 4304)
  assert shapes['vision_model']['head']['attention']['in_proj_weight'].shape == (3 * 1152, 1152)
