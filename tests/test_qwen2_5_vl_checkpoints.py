"""Qwen2.5-VL checkpoints: strict loading of the hub and transformers-5 key layouts, the Conv3d patch
embedding, M-RoPE configs never read as plain Qwen2, export -> transformers, and the 7B parameter count."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from jaxvlm import checkpoints
from jaxvlm.checkpoints import ShapeMismatchError, TensorSetError
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2
from jaxvlm.models import qwen2_5_vl as qv
from tests import test_qwen2_5_vl as tq

# The published Qwen/Qwen2.5-VL-7B-Instruct config.json (hub layout: text fields at the top level).
QWEN2_5_VL_7B = {
  'architectures': ['Qwen2_5_VLForConditionalGeneration'],
  'model_type': 'qwen2_5_vl',
  'attention_dropout': 0.0,
  'bos_token_id': 151643,
  'eos_token_id': 151645,
  'vision_start_token_id': 151652,
  'vision_end_token_id': 151653,
  'vision_token_id': 151654,
  'image_token_id': 151655,
  'video_token_id': 151656,
  'hidden_act': 'silu',
  'hidden_size': 3584,
  'initializer_range': 0.02,
  'intermediate_size': 18944,
  'max_position_embeddings': 128000,
  'max_window_layers': 28,
  'num_attention_heads': 28,
  'num_hidden_layers': 28,
  'num_key_value_heads': 4,
  'rms_norm_eps': 1e-06,
  'rope_theta': 1000000.0,
  'sliding_window': 32768,
  'tie_word_embeddings': False,
  'torch_dtype': 'bfloat16',
  'use_cache': True,
  'use_sliding_window': False,
  'vocab_size': 152064,
  'vision_config': {
    'depth': 32,
    'hidden_act': 'silu',
    'hidden_size': 1280,
    'intermediate_size': 3420,
    'num_heads': 16,
    'in_chans': 3,
    'out_hidden_size': 3584,
    'patch_size': 14,
    'spatial_merge_size': 2,
    'spatial_patch_size': 14,
    'window_size': 112,
    'fullatt_block_indexes': [7, 15, 23, 31],
    'tokens_per_second': 2,
    'temporal_patch_size': 2,
  },
  'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]},
}


@pytest.fixture(scope='module')
def tiny():
  return tq.build(seed=4)


@pytest.fixture(scope='module')
def hub_dir(tiny, tmp_path_factory):
  """transformers 5 `save_pretrained`: the hub layout (`visual.*`, `model.*`, `lm_head.*`)."""
  path = tmp_path_factory.mktemp('qwen_hub')
  tiny[0].save_pretrained(path)
  return os.fspath(path)


def _reference_logits(hf, ids, mask, flats):
  with torch.no_grad():
    return hf(**tq.hf_inputs(ids, mask, flats)).logits.numpy()


def _our_logits(model, params, ids, mask, flats):
  positions, _ = qv.rope_index(ids, model.config, [tq.GRID] * len(flats), None, mask)
  return tq._logits(model, params, ids, tq.our_pixels(flats), positions, mask)  # pylint: disable=protected-access


def _batch():
  ids, mask = tq.padded([tq.prompt(3, 4, 1)], left=False)
  return ids, mask, [tq.flat_pixels(2)]


def test_hub_layout_loads_strictly_with_equal_logits(tiny, hub_dir):
  hf, _, _ = tiny
  keys = checkpoints.read_state_dict(hub_dir)
  assert 'visual.patch_embed.proj.weight' in keys and 'model.embed_tokens.weight' in keys
  assert keys['visual.patch_embed.proj.weight'].ndim == 5
  model, params, processor = checkpoints.load_pretrained(hub_dir)
  assert isinstance(model, qv.Qwen25VLForConditionalGeneration) and processor is None
  ids, mask, flats = _batch()
  err = np.abs(_our_logits(model, params, ids, mask, flats) - _reference_logits(hf, ids, mask, flats)).max()
  assert err <= 1e-4


def test_transformers5_in_memory_layout_loads(tiny, hub_dir, tmp_path):
  hf, _, want = tiny
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert any(k.startswith('model.visual.') for k in sd) and any(k.startswith('model.language_model.') for k in sd)
  save_file(sd, os.fspath(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(hub_dir, 'config.json')) as f:
    config = json.load(f)
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(config, f)
  _, params, _ = checkpoints.load_pretrained(tmp_path)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, want)


def test_strictness_names_the_tensor(tiny, hub_dir, tmp_path):
  _, model, _ = tiny
  sd = dict(checkpoints.read_state_dict(hub_dir))
  target = qv.param_shapes(model)
  missing = {k: v for k, v in sd.items() if k != 'visual.blocks.1.attn.qkv.bias'}
  with pytest.raises(TensorSetError, match='visual.layers.1.attn.qkv.bias'):
    checkpoints.convert_state_dict('qwen2_5_vl', missing, target, model)
  extra = dict(sd, **{'visual.blocks.9.norm1.weight': np.zeros(32, np.float32)})
  with pytest.raises(TensorSetError, match='unexpected'):
    checkpoints.convert_state_dict('qwen2_5_vl', extra, target, model)
  bad = dict(sd, **{'visual.patch_embed.proj.weight': np.zeros((32, 3, 1, 4, 4), np.float32)})
  with pytest.raises(ShapeMismatchError, match=r'patch_embed.*\(32, 3, 1, 4, 4\).*\(32, 3, 2, 4, 4\)'):
    checkpoints.convert_state_dict('qwen2_5_vl', bad, target, model)


def test_mrope_config_never_loads_as_plain_qwen2(hub_dir):
  with open(os.path.join(hub_dir, 'config.json')) as f:
    config = json.load(f)
  with pytest.raises(ValueError, match='M-RoPE'):
    qwen2.Qwen2Config.from_hf(config['text_config'])  # v5: rope_type default + mrope_section
  flat_text = {k: v for k, v in QWEN2_5_VL_7B.items() if k != 'vision_config'}
  with pytest.raises(ValueError, match='M-RoPE'):
    qwen2.Qwen2Config.from_hf(flat_text)  # hub: rope_scaling type mrope
  llava_like = {
    'model_type': 'llava_onevision',
    'text_config': config['text_config'],
    'vision_config': {
      'hidden_size': 16,
      'intermediate_size': 24,
      'num_hidden_layers': 1,
      'num_attention_heads': 2,
      'image_size': 28,
      'patch_size': 7,
    },
  }
  with pytest.raises(ValueError, match='M-RoPE'):
    lo.LlavaOnevisionConfig.from_hf(llava_like)
  # And the Qwen2.5-VL family reads the sections.
  assert qv.Qwen25VLConfig.from_hf(config).text.mrope_section == (2, 3, 3)


def test_export_loads_in_transformers_with_equal_logits(tiny, tmp_path):
  hf, model, params = tiny
  config = hf.config.to_dict()
  checkpoints.export_pretrained(model, params, config, os.fspath(tmp_path))
  back = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
  ids, mask, flats = _batch()
  np.testing.assert_allclose(
    _reference_logits(back, ids, mask, flats), _reference_logits(hf, ids, mask, flats), atol=1e-6
  )
  # Exported under the names transformers itself writes.
  assert 'visual.blocks.0.attn.qkv.weight' in checkpoints.read_state_dict(os.fspath(tmp_path))


def test_7b_parameter_count_equals_transformers_meta_model():
  hf_config = transformers.Qwen2_5_VLConfig(**QWEN2_5_VL_7B)
  with torch.device('meta'):
    hf = transformers.Qwen2_5_VLForConditionalGeneration(hf_config)
  expected = sum(p.numel() for p in hf.parameters())
  model = qv.Qwen25VLForConditionalGeneration(qv.Qwen25VLConfig.from_hf(QWEN2_5_VL_7B))
  got = qv.count_params(qv.param_shapes(model))
  print(f'qwen2.5-vl-7b: {got:,} parameters')
  assert got == expected
  assert round(got / 1e9, 2) == 8.29
  cfg = model.config
  assert cfg.text.mrope_section == (16, 24, 24) and cfg.text.head_dim == 128
  assert cfg.vision.window_units == 4 and cfg.vision.fullatt_block_indexes == (7, 15, 23, 31)


def tokenizer_with_model_ids():
  """Word-level tokenizer whose vision tokens carry the tiny model's ids (110..113)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from tests import test_qwen2_5_vl_processor as tp

  words = list(tp.WORDS) + ['D']  # the synthetic benchmark asks with 4 options
  words += [f'w{i}' for i in range(tq.IMAGE_ID - len(words))]
  special = ['<|image_pad|>', '<|video_pad|>', '<|vision_start|>', '<|vision_end|>', '<|im_start|>', '<|im_end|>']
  vocab = {w: i for i, w in enumerate(words + special)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token='[UNK]', pad_token='[PAD]', additional_special_tokens=special
  )
  fast.chat_template = tp.QWEN_TEMPLATE
  assert fast.convert_tokens_to_ids('<|video_pad|>') == tq.VIDEO_ID
  return fast


PIXEL_CONFIG = {
  'patch_size': tq.PATCH,
  'temporal_patch_size': 2,
  'merge_size': tq.MERGE,
  'size': {'shortest_edge': 64, 'longest_edge': 64 * 64},
  'resample': 3,
}


def write_random_qwen_checkpoint(path, num_layers: int = 2, seed: int = 0) -> str:
  """A tiny random Qwen2.5-VL (hub layout, saved by transformers) with tokenizer, chat template and pixel
  config: what `load_pretrained` reads from a downloaded checkpoint."""
  hf, _, _ = tq.build(seed=seed, layers=num_layers)
  hf.save_pretrained(path)
  tokenizer_with_model_ids().save_pretrained(path)
  with open(os.path.join(path, 'video_preprocessor_config.json'), 'w') as f:
    json.dump(PIXEL_CONFIG, f)
  return os.fspath(path)


def test_load_pretrained_processor_prompt_to_logits_matches_transformers(tiny, hub_dir, tmp_path):
  """checkpoint dir with tokenizer + pixel config -> (model, params, processor) -> frames and a question ->
  patches, prompt, M-RoPE positions -> logits equal to transformers' on the same inputs."""
  hf = tiny[0]
  import shutil

  ckpt = tmp_path / 'ckpt'
  shutil.copytree(hub_dir, ckpt)
  tokenizer_with_model_ids().save_pretrained(ckpt)
  with open(ckpt / 'video_preprocessor_config.json', 'w') as f:
    json.dump(PIXEL_CONFIG, f)
  model, params, processor = checkpoints.load_pretrained(ckpt)
  from jaxvlm.qwen2_5_vl_processor import Qwen25VLProcessor

  assert isinstance(processor, Qwen25VLProcessor)
  frames = np.random.default_rng(0).integers(0, 256, size=(4, 24, 40, 3), dtype=np.uint8)
  patches, grid = processor.preprocess(frames)
  assert grid == tq.GRID
  p = processor.build_prompt('What colour is the ball?', ['red', 'blue', 'green'], grid)
  ids, mask = p.input_ids[None], np.ones((1, len(p.input_ids)), bool)
  positions, _ = qv.rope_index(ids, model.config, [grid], [0.5], mask)
  again = processor.build_prompt('What colour is the ball?', ['red', 'blue', 'green'], grid, 0.5)
  np.testing.assert_array_equal(again.positions, positions[:, 0])  # the prompt carries them
  ours = tq._logits(model, params, ids, patches[None], positions, mask)  # pylint: disable=protected-access
  with torch.no_grad():
    ref = hf(**tq.hf_inputs(ids, mask, [patches.reshape(-1, patches.shape[-1])], [0.5])).logits.numpy()
  assert np.abs(ours - ref).max() <= 1e-4
  letters = processor.option_letter_ids(3)
  assert [processor.tokenizer.convert_ids_to_tokens(int(i)) for i in letters] == ['A', 'B', 'C']


def test_sharded_load_equals_the_whole_load(hub_dir):
  """load_pretrained(mesh=) reads the Conv3d patch embedding whole (relaid into the Dense kernel) and
  every other tensor block by block: the same params as the whole-model load, on the mesh."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from jaxvlm import sharding  # pylint: disable=g-import-not-at-top

  _, whole, _ = checkpoints.load_pretrained(hub_dir)
  mesh = sharding.make_mesh(data=1, fsdp=-1, devices=jax.devices())
  _, sharded, _ = checkpoints.load_pretrained(hub_dir, mesh=mesh)
  a, b = traverse_util.flatten_dict(whole), traverse_util.flatten_dict(sharded)
  assert a.keys() == b.keys()
  for path in a:
    assert b[path].sharding.mesh == mesh, path
    np.testing.assert_array_equal(np.asarray(b[path]), np.asarray(a[path]), err_msg='/'.join(path))
  assert any('patch_embed' in '/'.join(p) for p in a)
