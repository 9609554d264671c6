"""Hugging Face checkpoints <-> Flax params: strict loading, export, and orbax helpers.

The Flax param tree mirrors the transformers `state_dict()` key path, except that
  1. repeated blocks `...layers.{i}.<rest>` are one stacked subtree `...['layers'][<rest>]` with a
     leading layer axis L (built with `nn.scan`);
  2. leaf names: Dense/Conv 'kernel', LayerNorm 'scale' and Embed 'embedding' are HF `weight`;
     a Dense kernel is the HF weight transposed ([in, out]), a Conv kernel is OIHW -> HWIO;
  3. every other leaf keeps its HF name and layout.

"Our keys" below are the HF keys of our own module tree (what `params_to_state_dict` returns); the
keys stored in a checkpoint file differ per family and format and are renamed by a `Family`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from huggingface_hub import snapshot_download
from safetensors.numpy import save_file

STACKED = 'layers'
_HF_LEAF_NAME = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
CONFIG_FILE = 'config.json'
# Files a snapshot download fetches: configs, weights, tokenizer and chat template (no .bin/.pt/onnx).
_HUB_PATTERNS = ['*.json', '*.safetensors', '*.jinja', '*.model', '*.txt']
_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')


class CheckpointError(ValueError):
  """A checkpoint does not fit the model: names the tensor and the shapes involved."""


class CheckpointNotFoundError(CheckpointError):
  """The directory, hub id, config or weight file does not exist."""


class UnsupportedModelError(CheckpointError):
  """config.json names a `model_type` this library has no port of."""


class ShapeMismatchError(CheckpointError):
  """A checkpoint tensor has a shape the model does not expect."""


class TensorSetError(CheckpointError):
  """The checkpoint lacks tensors the model needs, or holds tensors the model does not use."""


# ----------------------------------------------------------------------------------------------
# The param-tree convention.


def _hf_key(path: tuple[str, ...], layer: int | None) -> str:
  parts = list(path[:-1]) + [_HF_LEAF_NAME.get(path[-1], path[-1])]
  if layer is not None:
    at = parts.index(STACKED)
    parts.insert(at + 1, str(layer))
  return '.'.join(parts)


def _to_flax(path: tuple[str, ...], hf: np.ndarray) -> np.ndarray:
  if path[-1] != 'kernel':
    return hf
  if hf.ndim == 2:
    return hf.T
  if hf.ndim == 4:  # OIHW -> HWIO
    return hf.transpose(2, 3, 1, 0)
  raise CheckpointError(f'{path}: kernel of unsupported rank {hf.ndim}')


def _to_hf(path: tuple[str, ...], leaf: np.ndarray) -> np.ndarray:
  if path[-1] != 'kernel':
    return leaf
  if leaf.ndim == 2:
    return leaf.T
  return leaf.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _hf_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(_to_hf(path, np.empty(flax_shape, np.uint8)).shape)


def _layer_count(path: tuple[str, ...], shape: tuple[int, ...]) -> int | None:
  return shape[0] if STACKED in path else None


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], target: Any) -> dict:
  """Builds a param tree shaped like `target` (arrays or ShapeDtypeStructs) from HF tensors.

  Strict: every target leaf must be filled with the right shape and every tensor must be used,
  otherwise a `CheckpointError` names the offending tensors and shapes. Leaves are float32 numpy.
  """
  flat_target = traverse_util.flatten_dict(target)
  used: set[str] = set()
  missing: list[str] = []
  out = {}
  for path, leaf in flat_target.items():
    shape = tuple(leaf.shape)
    n_layers = _layer_count(path, shape)
    layers = [None] if n_layers is None else range(n_layers)
    per_layer_shape = shape if n_layers is None else shape[1:]
    slices = []
    for layer in layers:
      key = _hf_key(path, layer)
      if key not in state_dict:
        missing.append(f'{key} (expected shape {_hf_shape(path, per_layer_shape)})')
        continue
      value = _to_flax(path, np.asarray(state_dict[key]))
      if value.shape != per_layer_shape:
        raise ShapeMismatchError(
            f'tensor {key!r} has shape {tuple(np.asarray(state_dict[key]).shape)} in the checkpoint, '
            f'the model expects {_hf_shape(path, per_layer_shape)} '
            f'(param {"/".join(path)} {shape})')
      used.add(key)
      slices.append(value.astype(np.float32, copy=False))
    if len(slices) == len(layers):
      out[path] = slices[0] if n_layers is None else np.stack(slices)
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected:
    raise TensorSetError(
        'checkpoint does not match the model:' +
        (f'\n  missing tensors: {", ".join(missing)}' if missing else '') +
        (f'\n  unexpected tensors: {", ".join(unexpected)}' if unexpected else ''))
  return traverse_util.unflatten_dict(out)


def params_to_state_dict(params: Any) -> dict[str, np.ndarray]:
  """The inverse of `state_dict_to_params`: HF key -> numpy tensor (float32)."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    leaf = np.asarray(leaf)
    n_layers = _layer_count(path, leaf.shape)
    if n_layers is None:
      out[_hf_key(path, None)] = _to_hf(path, leaf)
    else:
      for layer in range(n_layers):
        out[_hf_key(path, layer)] = np.ascontiguousarray(_to_hf(path, leaf[layer]))
  return out


# ----------------------------------------------------------------------------------------------
# Finding a checkpoint and reading its files.


# The embedded default ships in the clone's assets/ and, in an installed jaxvlm, as package data
# (jaxvlm/assets/, see pyproject.toml): so that `assets/llava_ov_tiny` names it from any directory.
_EMBEDDED_PREFIX = 'assets/'
_EMBEDDED_ROOTS = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets'),
                   os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets'))


def embedded_dir(path: str) -> str | None:
  """'assets/NAME' -> the embedded default's directory NAME (the clone's assets/, else the installed
  package's), or None when `path` names no shipped checkpoint."""
  if not path.startswith(_EMBEDDED_PREFIX):
    return None
  name = path[len(_EMBEDDED_PREFIX):].rstrip('/')
  found = [os.path.join(root, name) for root in _EMBEDDED_ROOTS if os.path.isdir(os.path.join(root, name))]
  return found[0] if name and found else None


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> str:
  """A local directory as is; `assets/NAME` that is no directory here is the shipped embedded default
  (from any working directory); an `org/name` hub id that is not a local path is downloaded."""
  path = os.path.expanduser(os.fspath(name_or_path))
  if os.path.isdir(path):
    return path
  embedded = embedded_dir(path)
  if embedded is not None:
    return embedded
  if os.path.exists(path):
    raise CheckpointNotFoundError(f'{path!r} is a file, not a checkpoint directory')
  if not _HUB_ID.fullmatch(path):
    raise CheckpointNotFoundError(f'checkpoint directory {path!r} does not exist')
  try:
    return snapshot_download(path, allow_patterns=_HUB_PATTERNS)
  except Exception as e:  # offline, unknown repo, gated, ...: all mean "cannot get it"
    raise CheckpointNotFoundError(
        f'{path!r} is not a local directory and could not be fetched from the Hugging Face Hub '
        f'({type(e).__name__}: {e})') from e


def read_json(ckpt_dir: str, name: str) -> dict | None:
  """The parsed json file `name` of `ckpt_dir`, or None if absent."""
  path = os.path.join(ckpt_dir, name)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f'{path} is not valid json: {e}') from e


def read_config(ckpt_dir: str) -> dict:
  config = read_json(ckpt_dir, CONFIG_FILE)
  if config is None:
    raise CheckpointNotFoundError(f'{ckpt_dir} has no {CONFIG_FILE}')
  return config


_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only memory-mapped numpy arrays.

  Parses the (documented) header directly rather than through `safetensors.numpy`, which cannot
  represent bfloat16: here bfloat16/float8 come out as `ml_dtypes` arrays, converted exactly to
  float32 later, and nothing is read from disk until a tensor is used.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    try:
      (n,) = struct.unpack('<Q', f.read(8))
      if n > size - 8:
        raise ValueError(f'header of {n} bytes in a file of {size}')
      header = json.loads(f.read(n))
    except (struct.error, ValueError) as e:   # UnicodeDecodeError is a ValueError
      raise CheckpointError(f'{path} is not a safetensors file: {e}') from e
  if not isinstance(header, dict):
    raise CheckpointError(f'{path}: the safetensors header is a JSON {type(header).__name__}, not an object')
  begin = 8 + n
  data = np.memmap(path, np.uint8, 'r', offset=begin) if size > begin else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    out[name] = _header_tensor(path, name, info, data)
  return out


def _header_tensor(path: str, name: str, info: Any, data: np.ndarray) -> np.ndarray:
  """One header entry {dtype, shape, data_offsets} -> its array view; a malformed entry names the
  file, the tensor and what is wrong."""
  where = f'{path}: tensor {name!r}'
  if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(info):
    raise CheckpointError(f'{where}: header entry {info!r} needs dtype, shape and data_offsets')
  if info['dtype'] not in _SAFETENSORS_DTYPES:
    raise CheckpointError(f'{where} has unsupported dtype {info["dtype"]}')
  shape, offsets = info['shape'], info['data_offsets']
  if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
    raise CheckpointError(f'{where}: shape {shape!r} is not a list of sizes')
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1]):
    raise CheckpointError(f'{where}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end')
  start, end = offsets
  if end > data.size:
    raise CheckpointError(f'{path} is truncated: tensor {name!r} ends at byte {end} of {data.size}')
  dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
  if (end - start) != int(np.prod(shape)) * dtype.itemsize:
    raise CheckpointError(f'{where}: data_offsets {offsets} hold {end - start} bytes, shape {shape} of '
                          f'{info["dtype"]} needs {int(np.prod(shape)) * dtype.itemsize}')
  return data[start:end].view(dtype).reshape(shape)


def read_state_dict(ckpt_dir: str) -> dict[str, np.ndarray]:
  """File key -> tensor from `model.safetensors` or from the shards of `model.safetensors.index.json`."""
  single = os.path.join(ckpt_dir, SINGLE_FILE)
  if os.path.isfile(single):
    return read_safetensors(single)
  index = read_json(ckpt_dir, INDEX_FILE)
  if index is None:
    raise CheckpointNotFoundError(
        f'{ckpt_dir} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors weights are supported)')
  weight_map = index.get('weight_map') if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise CheckpointError(f'{os.path.join(ckpt_dir, INDEX_FILE)} has no weight_map object (tensor -> shard file)')
  out: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(ckpt_dir, shard)
    if not os.path.isfile(path):
      raise CheckpointNotFoundError(f'{INDEX_FILE} lists shard {shard!r}, which is not in {ckpt_dir}')
    for name, tensor in read_safetensors(path).items():
      if name in out:
        raise CheckpointError(f'tensor {name!r} is stored in more than one shard (again in {shard})')
      out[name] = tensor
  for name, shard in weight_map.items():
    if name not in out:
      raise TensorSetError(f'{INDEX_FILE} maps tensor {name!r} to {shard}, which does not contain it')
  return out


def write_state_dict(state_dict: Mapping[str, np.ndarray], out_dir: str,
                     max_shard_bytes: int | None = None) -> list[str]:
  """Writes tensors as `model.safetensors`, or as shards plus an index when they exceed
  `max_shard_bytes`. Returns the file names written."""
  os.makedirs(out_dir, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  shard_bytes = 0
  for name in sorted(state_dict):
    tensor = np.ascontiguousarray(state_dict[name])
    if max_shard_bytes and shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][name] = tensor
    shard_bytes += tensor.nbytes
  metadata = {'format': 'pt'}  # transformers refuses files whose metadata names no known format
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, SINGLE_FILE), metadata=metadata)
    return [SINGLE_FILE]
  names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  weight_map = {}
  for file_name, shard in zip(names, shards):
    save_file(shard, os.path.join(out_dir, file_name), metadata=metadata)
    weight_map.update({k: file_name for k in shard})
  total = sum(t.nbytes for t in state_dict.values())
  with open(os.path.join(out_dir, INDEX_FILE), 'w') as f:
    json.dump({'metadata': {'total_size': int(total)}, 'weight_map': weight_map}, f, indent=2)
  return names + [INDEX_FILE]


# ----------------------------------------------------------------------------------------------
# Model families: how to build the module and how checkpoint keys map to our keys.


@dataclasses.dataclass(frozen=True)
class Family:
  """build(config_dict, dtype) -> module; param_shapes(module) -> ShapeDtypeStruct tree;
  to_ours / to_hf rename one key between a checkpoint file and our tree;
  tied: (head key, embedding key) of our tree, dropped from a tied checkpoint if equal;
  tensor_to_ours / tensor_to_hf(model, our key, tensor) -> tensor: layout changes beyond the generic
  convention (e.g. a Conv3d weight that our tree holds as a Dense kernel), after / before renaming."""
  architecture: str
  build: Callable[[dict, Any], Any]
  param_shapes: Callable[[Any], Any]
  to_ours: Callable[[str], str]
  to_hf: Callable[[str], str]
  tied: tuple[str, str] | None = None
  tensor_to_ours: Callable[[Any, str, np.ndarray], np.ndarray] | None = None
  tensor_to_hf: Callable[[Any, str, np.ndarray], np.ndarray] | None = None


def _build_siglip(config: dict, dtype: Any):
  from jaxvlm.models import siglip
  return siglip.SiglipModel(siglip.SiglipConfig.from_hf(config), dtype=dtype)


def _siglip_param_shapes(model) -> Any:
  vision, text = model.config.vision_config, model.config.text_config
  pixels = jnp.zeros((1, vision.image_size, vision.image_size, vision.num_channels), jnp.float32)
  ids = jnp.zeros((1, text.max_position_embeddings), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), pixels, ids))['params']


def _build_llava_onevision(config: dict, dtype: Any):
  from jaxvlm.models import llava_onevision as lo
  return lo.LlavaOnevisionForConditionalGeneration(lo.LlavaOnevisionConfig.from_hf(config), dtype=dtype)


def _llava_param_shapes(model) -> Any:
  from jaxvlm.models import llava_onevision as lo
  return lo.param_shapes(model)


_LLAVA_PARTS = ('language_model', 'vision_tower', 'multi_modal_projector', 'image_newline')


def _llava_to_ours(key: str) -> str:
  """Accepts the llava-hf hub layout (`vision_tower.vision_model.*`, `language_model.model.*`,
  `language_model.lm_head.*`), what transformers v5 `save_pretrained` writes (the same with
  `vision_tower.*`) and v5's in-memory names (`model.language_model.*`, `lm_head.*`)."""
  if key.startswith('model.') and key.split('.')[1] in _LLAVA_PARTS:
    key = key[len('model.'):]
  for old, new in (('language_model.model.', 'language_model.'),
                   ('language_model.lm_head.', 'lm_head.'),
                   ('vision_tower.vision_model.', 'vision_tower.')):
    if key.startswith(old):
      return new + key[len(old):]
  return key


def _llava_to_hf(key: str) -> str:
  """Our key -> the key transformers v5 `save_pretrained` writes for LLaVA-OneVision."""
  if key.startswith('language_model.'):
    return 'language_model.model.' + key[len('language_model.'):]
  if key.startswith('lm_head.'):
    return 'language_model.' + key
  return key


def _build_qwen2_5_vl(config: dict, dtype: Any):
  from jaxvlm.models import qwen2_5_vl as qv
  return qv.Qwen25VLForConditionalGeneration(qv.Qwen25VLConfig.from_hf(config), dtype=dtype)


def _qwen2_5_vl_param_shapes(model) -> Any:
  from jaxvlm.models import qwen2_5_vl as qv
  return qv.param_shapes(model)


def _qwen2_5_vl_to_ours(key: str) -> str:
  """Accepts the hub layout (`visual.*`, `model.*` = the decoder, `lm_head.*`; also what transformers v5
  `save_pretrained` writes) and v5's in-memory names (`model.visual.*`, `model.language_model.*`).
  Vision blocks `blocks.{i}` are our stacked `layers`."""
  for old, new in (('model.visual.', 'visual.'), ('model.language_model.', 'language_model.'),
                   ('model.', 'language_model.')):
    if key.startswith(old):
      key = new + key[len(old):]
      break
  if key.startswith('visual.blocks.'):
    key = 'visual.layers.' + key[len('visual.blocks.'):]
  return key


def _qwen2_5_vl_to_hf(key: str) -> str:
  """Our key -> the hub layout (what transformers v5 `save_pretrained` writes for Qwen2.5-VL)."""
  if key.startswith('language_model.'):
    return 'model.' + key[len('language_model.'):]
  if key.startswith('visual.layers.'):
    return 'visual.blocks.' + key[len('visual.layers.'):]
  return key


_PATCH_EMBED = 'visual.patch_embed.proj.weight'


def _conv3d_shape(model) -> tuple[int, ...]:
  v = model.config.vision
  return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


def _qwen2_5_vl_tensor_to_ours(model, key: str, tensor: np.ndarray) -> np.ndarray:
  """The Conv3d patch embedding [D, C, tp, p, p] (kernel = stride) is a Dense of the flattened patch."""
  if key != _PATCH_EMBED:
    return tensor
  want = _conv3d_shape(model)
  if tuple(tensor.shape) != want:
    raise ShapeMismatchError(f'tensor {key!r} has shape {tuple(tensor.shape)} in the checkpoint, the model '
                             f'expects the Conv3d weight {want}')
  return np.asarray(tensor).reshape(want[0], -1)


def _qwen2_5_vl_tensor_to_hf(model, key: str, tensor: np.ndarray) -> np.ndarray:
  return tensor.reshape(_conv3d_shape(model)) if key == _PATCH_EMBED else tensor


def _same(key: str) -> str:
  return key


FAMILIES: dict[str, Family] = {
    'siglip': Family('SiglipModel', _build_siglip, _siglip_param_shapes, _same, _same),
    'llava_onevision': Family(
        'LlavaOnevisionForConditionalGeneration', _build_llava_onevision, _llava_param_shapes,
        _llava_to_ours, _llava_to_hf, tied=('lm_head.weight', 'language_model.embed_tokens.weight')),
    'qwen2_5_vl': Family(
        'Qwen2_5_VLForConditionalGeneration', _build_qwen2_5_vl, _qwen2_5_vl_param_shapes,
        _qwen2_5_vl_to_ours, _qwen2_5_vl_to_hf, tied=('lm_head.weight', 'language_model.embed_tokens.weight'),
        tensor_to_ours=_qwen2_5_vl_tensor_to_ours, tensor_to_hf=_qwen2_5_vl_tensor_to_hf),
}


def family_of(config: Mapping[str, Any]) -> Family:
  model_type = config.get('model_type')
  if model_type not in FAMILIES:
    raise UnsupportedModelError(
        f'unsupported model_type {model_type!r} in config.json; supported: {", ".join(sorted(FAMILIES))}')
  return FAMILIES[model_type]


def _rename(state_dict: Mapping[str, np.ndarray], rename: Callable[[str], str]) -> dict[str, np.ndarray]:
  out: dict[str, np.ndarray] = {}
  source: dict[str, str] = {}
  for key, tensor in state_dict.items():
    new = rename(key)
    if new in out:
      raise CheckpointError(f'tensors {source[new]!r} and {key!r} both map to {new!r}')
    out[new], source[new] = tensor, key
  return out


def _drop_tied_head(state_dict: dict[str, np.ndarray], target: Any, family: Family) -> None:
  """A tied model has no head param; a checkpoint may still store the head as a copy of the embedding."""
  if family.tied is None:
    return
  head, embedding = family.tied
  if head not in state_dict or head.split('.')[0] in target or embedding not in state_dict:
    return
  if not np.array_equal(state_dict[head], state_dict[embedding]):
    raise TensorSetError(
        f'the config ties word embeddings, but the checkpoint holds a {head!r} that differs from {embedding!r}')
  del state_dict[head]


def _convert(family: Family, state_dict: Mapping[str, np.ndarray], target: Any, model: Any = None) -> dict:
  renamed = _rename(state_dict, family.to_ours)
  if family.tensor_to_ours is not None:
    if model is None:
      raise ValueError(f'converting a {family.architecture} checkpoint needs the model (its config)')
    renamed = {k: family.tensor_to_ours(model, k, v) for k, v in renamed.items()}
  _drop_tied_head(renamed, target, family)
  return state_dict_to_params(renamed, target)


def convert_state_dict(model_type: str, state_dict: Mapping[str, np.ndarray], target: Any,
                       model: Any = None) -> dict:
  """Any supported key layout of `model_type` (hub files, v5 files, v5 in-memory `state_dict()`) ->
  our param tree shaped like `target`, strictly (numpy float32). `model` is needed by families whose
  tensors change layout (qwen2_5_vl)."""
  return _convert(family_of({'model_type': model_type}), state_dict, target, model)


def load_params(ckpt_dir: str, model: Any, family: Family) -> dict:
  """Strictly converts the checkpoint in `ckpt_dir` into `model`'s param tree (float32 jax arrays)."""
  params = _convert(family, read_state_dict(ckpt_dir), family.param_shapes(model), model)
  return jax.tree.map(jnp.asarray, params)


def load_pretrained(name_or_path: str | os.PathLike, dtype: Any = jnp.float32,
                    expect: Sequence[str] | None = None, field: str = '') -> tuple[Any, dict, Any]:
  """Loads a local Hugging Face directory or hub id -> (model, params, processor).

  `dtype` is the compute dtype given to the module; params are float32. `processor` is a
  `jaxvlm.processor` object built from the checkpoint's tokenizer and processor configs, or None
  when the directory has no tokenizer (e.g. a bare `save_pretrained` of a model).
  expect: the model types the caller can use (prefixes of config.json's model_type, e.g. 'siglip');
  another type raises UnsupportedModelError naming `field` before any weight is read.
  """
  from jaxvlm import processor as processor_lib
  ckpt_dir = resolve_checkpoint_dir(name_or_path)
  config = read_config(ckpt_dir)
  family = family_of(config)
  if expect is not None and not any(str(config.get('model_type')).startswith(e) for e in expect):
    raise UnsupportedModelError(
        f'{field + "=" if field else ""}{os.fspath(name_or_path)!r} is a {config.get("model_type")!r} checkpoint; '
        f'{"this field" if field else "the caller"} needs one of: {", ".join(expect)}')
  model = family.build(config, dtype)
  params = load_params(ckpt_dir, model, family)
  return model, params, processor_lib.from_checkpoint_dir(ckpt_dir, config)


def _check_fits(params: Any, target: Any) -> None:
  got = {'/'.join(p): tuple(x.shape) for p, x in traverse_util.flatten_dict(params).items()}
  want = {'/'.join(p): tuple(x.shape) for p, x in traverse_util.flatten_dict(target).items()}
  if set(got) != set(want):
    raise TensorSetError(f'params do not fit the model: missing {sorted(set(want) - set(got))}, '
                         f'unexpected {sorted(set(got) - set(want))}')
  for name, shape in got.items():
    if shape != want[name]:
      raise ShapeMismatchError(f'param {name} has shape {shape}, the model expects {want[name]}')


def export_pretrained(model: Any, params: Any, config_dict: Mapping[str, Any], out_dir: str,
                      processor: Any = None, max_shard_bytes: int | None = None) -> None:
  """Writes `params` as a Hugging Face checkpoint transformers v5 loads: safetensors named as its
  `save_pretrained` names them (sharded above `max_shard_bytes`), `config.json` from `config_dict`,
  and the processor's tokenizer / chat template / preprocessor files when given."""
  family = family_of(config_dict)
  _check_fits(params, family.param_shapes(model))
  state_dict = params_to_state_dict(params)
  if family.tensor_to_hf is not None:
    state_dict = {k: family.tensor_to_hf(model, k, v) for k, v in state_dict.items()}
  state_dict = _rename(state_dict, family.to_hf)
  write_state_dict({k: v.astype(np.float32, copy=False) for k, v in state_dict.items()}, out_dir,
                   max_shard_bytes)
  config = {'architectures': [family.architecture], **config_dict, 'dtype': 'float32'}
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if processor is not None:
    processor.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Orbax: params of experiments (fine-tuned selectors, trained tiny models) in native format.
