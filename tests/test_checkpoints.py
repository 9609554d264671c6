"""Checkpoint loading/export: transformers save_pretrained -> load_pretrained -> export -> transformers.

Tiny random models are written by transformers into tmp dirs; every test is strict about names/shapes.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import save_file

from jaxvlm import checkpoints
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2
from jaxvlm.checkpoints import (
  CheckpointError,
  CheckpointNotFoundError,
  ShapeMismatchError,
  TensorSetError,
  UnsupportedModelError,
)
from tests import test_processor

TOL = 1e-4
SIGLIP_VISION = dict(
  hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7
)
SIGLIP_TEXT = dict(
  hidden_size=16,
  intermediate_size=24,
  num_hidden_layers=2,
  num_attention_heads=2,
  vocab_size=50,
  max_position_embeddings=12,
  pad_token_id=1,
  bos_token_id=2,
  eos_token_id=3,
)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
  """Noise on every parameter (HF init zeroes biases, which would hide a misplaced bias)."""
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _file_tensors(ckpt_dir) -> dict[str, np.ndarray]:
  return checkpoints.read_state_dict(os.fspath(ckpt_dir))


def _assert_trees_equal(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg='/'.join(k))


def _copy_config(src, dst) -> str:
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, 'config.json'), dst)
  return os.fspath(dst)


# ------------------------------------------------------------------------------------------------
# SigLIP


@pytest.fixture(scope='module')
def siglip_hf():
  torch.manual_seed(0)
  config = transformers.SiglipConfig(vision_config=SIGLIP_VISION, text_config=SIGLIP_TEXT)
  return _perturbed(transformers.SiglipModel(config))


@pytest.fixture(scope='module')
def siglip_dir(siglip_hf, tmp_path_factory):
  path = tmp_path_factory.mktemp('siglip')
  siglip_hf.save_pretrained(path)
  return os.fspath(path)


@pytest.fixture(scope='module')
def siglip_inputs():
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)
  ids = rng.integers(0, 50, size=(3, 12)).astype(np.int32)
  return pixels, ids


def _siglip_torch_logits(model, pixels, ids) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
  return out.logits_per_image.numpy()


def test_siglip_load_matches_transformers(siglip_hf, siglip_dir, siglip_inputs):
  model, params, processor = checkpoints.load_pretrained(siglip_dir)
  assert processor is None  # save_pretrained of a model writes no tokenizer
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  _assert_trees_equal(checkpoints.params_to_state_dict(params), _state_dict(siglip_hf))
  pixels, ids = siglip_inputs
  ours = np.asarray(jax.jit(model.apply)({'params': params}, pixels, ids))
  diff = np.abs(ours - _siglip_torch_logits(siglip_hf, pixels, ids)).max()
  print(f'siglip logits_per_image max abs diff {diff:.2e}')
  assert diff <= TOL


def test_siglip_export_is_loaded_by_transformers(siglip_hf, siglip_dir, siglip_inputs, tmp_path):
  model, params, _ = checkpoints.load_pretrained(siglip_dir)
  config = json.loads(open(os.path.join(siglip_dir, 'config.json')).read())
  checkpoints.export_pretrained(model, params, config, os.fspath(tmp_path))
  # Same file keys as transformers writes, and the values come back bit-exact.
  assert _file_tensors(tmp_path).keys() == _file_tensors(siglip_dir).keys()
  again = transformers.SiglipModel.from_pretrained(tmp_path).eval()
  _assert_trees_equal(_state_dict(again), _state_dict(siglip_hf))
  pixels, ids = siglip_inputs
  np.testing.assert_array_equal(_siglip_torch_logits(again, pixels, ids), _siglip_torch_logits(siglip_hf, pixels, ids))


def test_sharded_index_loading(siglip_hf, siglip_dir, tmp_path):
  sharded = tmp_path / 'hf_sharded'
  siglip_hf.save_pretrained(sharded, max_shard_size='20KB')
  assert (sharded / checkpoints.INDEX_FILE).exists() and not (sharded / checkpoints.SINGLE_FILE).exists()
  assert len(list(sharded.glob('model-*.safetensors'))) > 1
  _, params, _ = checkpoints.load_pretrained(sharded)
  _, reference, _ = checkpoints.load_pretrained(siglip_dir)
  _assert_trees_equal(params, reference)
  # Our sharded export is read back by transformers.
  model, _, _ = checkpoints.load_pretrained(siglip_dir)
  config = json.loads((sharded / 'config.json').read_text())
  ours = tmp_path / 'ours_sharded'
  checkpoints.export_pretrained(model, params, config, os.fspath(ours), max_shard_bytes=20_000)
  assert len(list(ours.glob('model-*.safetensors'))) > 1
  _assert_trees_equal(_state_dict(transformers.SiglipModel.from_pretrained(ours)), _state_dict(siglip_hf))


def test_bfloat16_checkpoint_converts_exactly(siglip_hf, tmp_path):
  bf16 = transformers.SiglipModel(siglip_hf.config)
  bf16.load_state_dict(siglip_hf.state_dict())
  bf16.to(torch.bfloat16).save_pretrained(tmp_path)
  _, params, _ = checkpoints.load_pretrained(tmp_path)
  want = {k: v.float().numpy() for k, v in bf16.state_dict().items()}
  _assert_trees_equal(checkpoints.params_to_state_dict(params), want)


# ------------------------------------------------------------------------------------------------
# Clear errors


def _write_variant(siglip_dir, dst, edit) -> str:
  """A copy of the siglip checkpoint whose tensors went through `edit(dict) -> dict`."""
  path = _copy_config(siglip_dir, dst)
  tensors = {k: np.array(v) for k, v in _file_tensors(siglip_dir).items()}
  save_file(edit(tensors), os.path.join(path, checkpoints.SINGLE_FILE), metadata={'format': 'pt'})
  return path


def test_error_directory_does_not_exist(tmp_path):
  missing = os.fspath(tmp_path / 'no_such_checkpoint')
  with pytest.raises(CheckpointNotFoundError, match=f'checkpoint directory .{missing}. does not exist'):
    checkpoints.load_pretrained(missing)


def test_error_hub_id_unreachable_names_the_id(monkeypatch):
  def offline(repo_id, **_):
    raise OSError('network is unreachable')

  monkeypatch.setattr(checkpoints, 'snapshot_download', offline)
  with pytest.raises(CheckpointNotFoundError, match='google/siglip-tiny-nonexistent.*network is unreachable'):
    checkpoints.load_pretrained('google/siglip-tiny-nonexistent')


def test_hub_id_is_downloaded_when_not_local(siglip_dir, monkeypatch):
  calls = []

  def fake_download(repo_id, **kw):
    calls.append((repo_id, kw))
    return siglip_dir

  monkeypatch.setattr(checkpoints, 'snapshot_download', fake_download)
  _, params, _ = checkpoints.load_pretrained('google/siglip-tiny')
  assert calls[0][0] == 'google/siglip-tiny'
  assert '*.safetensors' in calls[0][1]['allow_patterns']
  assert 'logit_scale' in params


def test_error_missing_tensor(siglip_dir, tmp_path):
  def drop(t):
    del t['vision_model.encoder.layers.1.mlp.fc1.weight']
    return t

  path = _write_variant(siglip_dir, tmp_path / 'missing', drop)
  with pytest.raises(
    TensorSetError,
    match=r'missing tensors: vision_model.encoder.layers.1.mlp.fc1.weight '
    r'\(expected shape \(24, 16\)\)',
  ):
    checkpoints.load_pretrained(path)


def test_error_wrong_shape(siglip_dir, tmp_path):
  def shrink(t):
    t['text_model.head.weight'] = t['text_model.head.weight'][:, :8].copy()
    return t

  path = _write_variant(siglip_dir, tmp_path / 'shape', shrink)
  with pytest.raises(ShapeMismatchError, match=r"'text_model.head.weight' has shape \(16, 8\).*expects \(16, 16\)"):
    checkpoints.load_pretrained(path)


def test_error_unexpected_tensor(siglip_dir, tmp_path):
  def extra(t):
    t['vision_model.extra_projection.weight'] = np.zeros((2, 2), np.float32)
    return t

  path = _write_variant(siglip_dir, tmp_path / 'extra', extra)
  with pytest.raises(TensorSetError, match=r'unexpected tensors: vision_model.extra_projection.weight'):
    checkpoints.load_pretrained(path)


def test_error_unsupported_model_type(siglip_dir, tmp_path):
  path = _copy_config(siglip_dir, tmp_path / 'bert')
  config = json.loads(open(os.path.join(path, 'config.json')).read())
  config['model_type'] = 'bert'
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(UnsupportedModelError, match="unsupported model_type 'bert'.*siglip"):
    checkpoints.load_pretrained(path)


def test_error_no_weights_and_missing_shard(siglip_dir, tmp_path):
  path = _copy_config(siglip_dir, tmp_path / 'empty')
  with pytest.raises(CheckpointNotFoundError, match='neither model.safetensors nor'):
    checkpoints.load_pretrained(path)
  with open(os.path.join(path, checkpoints.INDEX_FILE), 'w') as f:
    json.dump({'weight_map': {'logit_scale': 'model-00001-of-00002.safetensors'}}, f)
  with pytest.raises(CheckpointNotFoundError, match="shard 'model-00001-of-00002.safetensors'"):
    checkpoints.load_pretrained(path)


def test_error_truncated_file(siglip_dir, tmp_path):
  path = _copy_config(siglip_dir, tmp_path / 'truncated')
  data = open(os.path.join(siglip_dir, checkpoints.SINGLE_FILE), 'rb').read()
  with open(os.path.join(path, checkpoints.SINGLE_FILE), 'wb') as f:
    f.write(data[:-100])
  with pytest.raises(CheckpointError, match='is truncated'):
    checkpoints.load_pretrained(path)


def _write_with_header(path: str, header, payload: bytes = b'\0' * 16) -> None:
  raw = json.dumps(header).encode()
  with open(os.path.join(path, checkpoints.SINGLE_FILE), 'wb') as f:
    f.write(len(raw).to_bytes(8, 'little') + raw + payload)


@pytest.mark.parametrize(
  'header, message',
  [
    ({'w': {'shape': [2], 'data_offsets': [0, 8]}}, "tensor 'w': header entry .* needs dtype, shape and data_offsets"),
    (
      {'w': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0]}},
      "tensor 'w': data_offsets \\[0\\] is not \\[begin, end\\]",
    ),
    (
      {'w': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 8]}},
      "tensor 'w': data_offsets \\[0, 8\\] hold 8 bytes, shape \\[3\\] of F32 needs 12",
    ),
    ({'w': {'dtype': 'F32', 'shape': 'two', 'data_offsets': [0, 8]}}, "tensor 'w': shape 'two' is not a list"),
    ({'w': 'float'}, "tensor 'w': header entry 'float' needs"),
    ([1, 2], 'the safetensors header is a JSON list, not an object'),
  ],
)
def test_error_malformed_header_names_file_and_tensor(siglip_dir, tmp_path, header, message):
  path = _copy_config(siglip_dir, tmp_path / 'bad_header')
  _write_with_header(path, header)
  with pytest.raises(CheckpointError, match=message) as e:
    checkpoints.load_pretrained(path)
  assert os.path.join(path, checkpoints.SINGLE_FILE) in str(e.value)


def test_error_wrong_model_type_for_the_caller_names_the_field(siglip_dir):
  with pytest.raises(
    checkpoints.UnsupportedModelError,
    match=f"checkpoint='{siglip_dir}' is a 'siglip' checkpoint; this field needs one of: llava_onevision",
  ):
    checkpoints.load_pretrained(siglip_dir, expect=('llava_onevision',), field='checkpoint')


# ------------------------------------------------------------------------------------------------
# LLaVA-OneVision


def _llava_hf(tie: bool) -> transformers.LlavaOnevisionForConditionalGeneration:
  torch.manual_seed(0)
  config = test_processor.llava_config()
  config.text_config.tie_word_embeddings = tie
  config.tie_word_embeddings = tie
  config.text_config.vocab_size = 64
  return _perturbed(transformers.LlavaOnevisionForConditionalGeneration(config))


def _llava_inputs(video_id: int):
  rng = np.random.default_rng(0)
  frames = 2
  ids = np.concatenate([[3, 4], [video_id] * (4 * frames + 1), [5, 6, 7]]).astype(np.int32)[None]
  pixels = rng.standard_normal((1, frames, 28, 28, 3)).astype(np.float32)  # [B, F, H, W, C]
  return ids, pixels


def _llava_torch_logits(model, ids, pixels) -> np.ndarray:
  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(ids).long(), pixel_values_videos=torch.from_numpy(pixels.transpose(0, 1, 4, 2, 3))
    )
  return out.logits.numpy()


def _llava_our_logits(lo, model, params, ids, pixels) -> np.ndarray:
  positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
  meta = qwen2.text_meta(jnp.ones(ids.shape, bool))

  def logits(params):
    out = model.apply({'params': params}, ids, pixels, positions, meta)
    return model.apply({'params': params}, out.hidden, method='logits')

  return np.asarray(jax.jit(logits)(params))


def _to_hub_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers v5 file names -> the llava-hf hub names (`vision_tower.vision_model.*`)."""
  return {
    ('vision_tower.vision_model.' + k[len('vision_tower.') :] if k.startswith('vision_tower.') else k): v
    for k, v in tensors.items()
  }


@pytest.mark.parametrize('tie', [False, True])
def test_llava_round_trip_through_transformers(tie, tmp_path):
  hf = _llava_hf(tie)
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(hf_dir)
  test_processor.make_tokenizer().save_pretrained(hf_dir)
  model, params, processor = checkpoints.load_pretrained(hf_dir)
  assert ('lm_head' in params) != tie
  assert processor.num_video_tokens(2) == model.config.num_video_tokens(2) == 9

  ids, pixels = _llava_inputs(processor.video_token_id)
  want = _llava_torch_logits(hf, ids, pixels)
  diff = np.abs(_llava_our_logits(lo, model, params, ids, pixels) - want).max()
  print(f'llava (tie={tie}) logits max abs diff {diff:.2e}')
  assert diff <= TOL

  out = tmp_path / 'ours'
  config = json.loads((hf_dir / 'config.json').read_text())
  checkpoints.export_pretrained(model, params, config, os.fspath(out), processor=processor)
  assert _file_tensors(out).keys() == _file_tensors(hf_dir).keys()
  again = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(out).eval()
  _assert_trees_equal(_state_dict(again), _state_dict(hf))
  np.testing.assert_array_equal(_llava_torch_logits(again, ids, pixels), want)
  _, _, processor_again = checkpoints.load_pretrained(out)
  q = ('What colour is the ball?', ['red', 'blue'], 2)
  np.testing.assert_array_equal(processor_again.build_prompt(*q)[1], processor.build_prompt(*q)[1])


def test_llava_hub_layout_and_tied_head_copy(tmp_path):
  hf = _llava_hf(tie=True)
  hf.save_pretrained(tmp_path / 'v5')
  _, reference, _ = checkpoints.load_pretrained(tmp_path / 'v5')
  tensors = _to_hub_layout({k: np.array(v) for k, v in _file_tensors(tmp_path / 'v5').items()})
  # Hub checkpoints of tied models may store the head as a copy of the embedding.
  tensors['language_model.lm_head.weight'] = tensors['language_model.model.embed_tokens.weight'].copy()
  hub = _copy_config(tmp_path / 'v5', tmp_path / 'hub')
  save_file(tensors, os.path.join(hub, checkpoints.SINGLE_FILE), metadata={'format': 'pt'})
  _, params, _ = checkpoints.load_pretrained(hub)
  _assert_trees_equal(params, reference)

  tensors['language_model.lm_head.weight'] += 1.0
  save_file(tensors, os.path.join(hub, checkpoints.SINGLE_FILE), metadata={'format': 'pt'})
  with pytest.raises(TensorSetError, match="'lm_head.weight' that differs"):
    checkpoints.load_pretrained(hub)


def test_llava_key_layouts_map_to_one_tree(tmp_path):
  """Hub, v5 save_pretrained and v5 in-memory names all give our keys (= in-memory names without the
  `model.` prefix), and `to_hf` gives back exactly what save_pretrained writes."""
  hf = _llava_hf(tie=False)
  hf.save_pretrained(tmp_path)
  family = checkpoints.FAMILIES['llava_onevision']
  in_memory = list(hf.state_dict())
  ours = {k[len('model.') :] if k.startswith('model.') else k for k in in_memory}
  saved = list(_file_tensors(tmp_path))
  for layout in (saved, list(_to_hub_layout(dict.fromkeys(saved))), in_memory):
    assert {family.to_ours(k) for k in layout} == ours
  assert {family.to_hf(k) for k in ours} == set(saved)


def test_embedded_default_resolves_from_any_directory(tmp_path, monkeypatch):
  """'assets/NAME' is the local directory when there is one, else the shipped embedded default."""
  monkeypatch.chdir(tmp_path)
  assert not os.path.exists('assets')
  resolved = checkpoints.resolve_checkpoint_dir('assets/llava_ov_tiny')
  assert os.path.isfile(os.path.join(resolved, 'model.safetensors'))
  assert checkpoints.embedded_dir('assets/no_such_model') is None
  os.makedirs('assets/llava_ov_tiny')  # a local directory of that name wins
  assert checkpoints.resolve_checkpoint_dir('assets/llava_ov_tiny') == 'assets/llava_ov_tiny'
