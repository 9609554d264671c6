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

import collections
import dataclasses
import json
import math
import os
import re
import struct
from typing import Any, Callable, Mapping, Sequence, TypeVar

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

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


def match_tensors(shapes: Mapping[str, tuple[int, ...]], target: Any) -> dict[tuple[str, ...], list[str]]:
  """Pairs every leaf of `target` with the checkpoint keys that fill it, strictly, from shapes alone.

  `shapes` maps our (renamed) checkpoint keys to their HF shapes. Returns {param path: [key]} for a plain
  leaf and {param path: [key of layer 0, ..., key of layer L-1]} for a stacked one. Raises
  `ShapeMismatchError` naming the tensor and both shapes, or `TensorSetError` listing every missing
  and every unexpected tensor, before anything is read.
  """
  used: set[str] = set()
  missing: list[str] = []
  out = {}
  for path, leaf in traverse_util.flatten_dict(target).items():
    shape = tuple(leaf.shape)
    n_layers = _layer_count(path, shape)
    layers = [None] if n_layers is None else range(n_layers)
    want = _hf_shape(path, shape if n_layers is None else shape[1:])
    keys = []
    for layer in layers:
      key = _hf_key(path, layer)
      if key not in shapes:
        missing.append(f'{key} (expected shape {want})')
        continue
      if tuple(shapes[key]) != want:
        raise ShapeMismatchError(
          f'tensor {key!r} has shape {tuple(shapes[key])} in the checkpoint, the model expects {want} '
          f'(param {"/".join(path)} {shape})'
        )
      used.add(key)
      keys.append(key)
    out[path] = keys
  unexpected = sorted(set(shapes) - used)
  if missing or unexpected:
    raise TensorSetError(
      'checkpoint does not match the model:'
      + (f'\n  missing tensors: {", ".join(missing)}' if missing else '')
      + (f'\n  unexpected tensors: {", ".join(unexpected)}' if unexpected else '')
    )
  return out


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], target: Any, dtype: Any = np.float32) -> dict:
  """Builds a param tree shaped like `target` (arrays or ShapeDtypeStructs) from HF tensors.

  Strict (see `match_tensors`): every target leaf must be filled with the right shape and every tensor
  must be used. Leaves are numpy arrays of `dtype` (default float32), converted tensor by tensor.
  """
  plan = match_tensors({k: np.shape(v) for k, v in state_dict.items()}, target)
  out = {}
  for path, keys in plan.items():
    slices = [_to_flax(path, np.asarray(state_dict[k])).astype(dtype, copy=False) for k in keys]
    out[path] = np.stack(slices) if STACKED in path else slices[0]
  return traverse_util.unflatten_dict(out)


def params_to_state_dict(params: Any) -> dict[str, np.ndarray]:
  """The inverse of `state_dict_to_params`: HF key -> numpy tensor (the leaves' dtype)."""
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
_EMBEDDED_ROOTS = (
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets'),
  os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets'),
)


def embedded_dir(path: str) -> str | None:
  """'assets/NAME' -> the embedded default's directory NAME (the clone's assets/, else the installed
  package's), or None when `path` names no shipped checkpoint."""
  if not path.startswith(_EMBEDDED_PREFIX):
    return None
  name = path[len(_EMBEDDED_PREFIX) :].rstrip('/')
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
      f'{path!r} is not a local directory and could not be fetched from the Hugging Face Hub ({type(e).__name__}: {e})'
    ) from e


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
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'F8_E4M3': ml_dtypes.float8_e4m3fn,
  'F8_E5M2': ml_dtypes.float8_e5m2,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """Where one checkpoint tensor lives (nothing read): file, name inside it, safetensors dtype, shape."""

  path: str
  name: str
  dtype: str
  shape: tuple[int, ...]


def _read_header(path: str) -> tuple[dict, int]:
  """The tensor entries of a .safetensors header (validated: known dtypes, no tensor past the end of
  the file) and the byte offset where the data begins."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    try:
      (n,) = struct.unpack('<Q', f.read(8))
      if n > size - 8:
        raise ValueError(f'header of {n} bytes in a file of {size}')
      header = json.loads(f.read(n))
    except (struct.error, ValueError) as e:  # UnicodeDecodeError is a ValueError
      raise CheckpointError(f'{path} is not a safetensors file: {e}') from e
  if not isinstance(header, dict):
    raise CheckpointError(f'{path}: the safetensors header is a JSON {type(header).__name__}, not an object')
  begin = 8 + n
  header.pop('__metadata__', None)
  for name, info in header.items():
    _check_entry(path, name, info, size - begin)
  return header, begin


def _check_entry(path: str, name: str, info: Any, data_size: int) -> None:
  """One header entry {dtype, shape, data_offsets}, checked against the file's `data_size` bytes of
  tensor data; a malformed entry names the file, the tensor and what is wrong."""
  where = f'{path}: tensor {name!r}'
  if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(info):
    raise CheckpointError(f'{where}: header entry {info!r} needs dtype, shape and data_offsets')
  if info['dtype'] not in _SAFETENSORS_DTYPES:
    raise CheckpointError(f'{where} has unsupported dtype {info["dtype"]}')
  shape, offsets = info['shape'], info['data_offsets']
  if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
    raise CheckpointError(f'{where}: shape {shape!r} is not a list of sizes')
  if (
    not isinstance(offsets, list)
    or len(offsets) != 2
    or not all(isinstance(o, int) for o in offsets)
    or not 0 <= offsets[0] <= offsets[1]
  ):
    raise CheckpointError(f'{where}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end')
  start, end = offsets
  if end > data_size:
    raise CheckpointError(f'{path} is truncated: tensor {name!r} ends at byte {end} of {max(data_size, 0)}')
  itemsize = np.dtype(_SAFETENSORS_DTYPES[info['dtype']]).itemsize
  if (end - start) != math.prod(shape) * itemsize:
    raise CheckpointError(
      f'{where}: data_offsets {offsets} hold {end - start} bytes, shape {shape} of '
      f'{info["dtype"]} needs {math.prod(shape) * itemsize}'
    )


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only memory-mapped numpy arrays.

  Parses the (documented) header directly rather than through `safetensors.numpy`, which cannot
  represent bfloat16: here bfloat16/float8 come out as `ml_dtypes` arrays, converted exactly to
  float32 later, and nothing is read from disk until a tensor is used.
  """
  header, begin = _read_header(path)
  size = os.path.getsize(path)
  data = np.memmap(path, np.uint8, 'r', offset=begin) if size > begin else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    start, end = info['data_offsets']
    out[name] = data[start:end].view(_SAFETENSORS_DTYPES[info['dtype']]).reshape(info['shape'])
  return out


def read_tensor_refs(path: str) -> dict[str, TensorRef]:
  """Name -> TensorRef of every tensor of one .safetensors file, from its header alone."""
  header, _ = _read_header(path)
  return {name: TensorRef(path, name, info['dtype'], tuple(info['shape'])) for name, info in header.items()}


def _collect(ckpt_dir: str, read_file: Callable[[str], Mapping[str, Any]]) -> dict[str, Any]:
  """File key -> read_file's value for it, over `model.safetensors` or the shards of the index file."""
  single = os.path.join(ckpt_dir, SINGLE_FILE)
  if os.path.isfile(single):
    return dict(read_file(single))
  index = read_json(ckpt_dir, INDEX_FILE)
  if index is None:
    raise CheckpointNotFoundError(
      f'{ckpt_dir} has neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors weights are supported)'
    )
  weight_map = index.get('weight_map') if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise CheckpointError(f'{os.path.join(ckpt_dir, INDEX_FILE)} has no weight_map object (tensor -> shard file)')
  out: dict[str, Any] = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(ckpt_dir, shard)
    if not os.path.isfile(path):
      raise CheckpointNotFoundError(f'{INDEX_FILE} lists shard {shard!r}, which is not in {ckpt_dir}')
    for name, tensor in read_file(path).items():
      if name in out:
        raise CheckpointError(f'tensor {name!r} is stored in more than one shard (again in {shard})')
      out[name] = tensor
  for name, shard in weight_map.items():
    if name not in out:
      raise TensorSetError(f'{INDEX_FILE} maps tensor {name!r} to {shard}, which does not contain it')
  return out


def read_state_dict(ckpt_dir: str) -> dict[str, np.ndarray]:
  """File key -> tensor from `model.safetensors` or from the shards of `model.safetensors.index.json`."""
  return _collect(ckpt_dir, read_safetensors)


def read_tensor_index(ckpt_dir: str) -> dict[str, TensorRef]:
  """File key -> TensorRef, like `read_state_dict` but from the headers only (no tensor data read)."""
  return _collect(ckpt_dir, read_tensor_refs)


def write_state_dict(
  state_dict: Mapping[str, np.ndarray], out_dir: str, max_shard_bytes: int | None = None
) -> list[str]:
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
  relaid: tuple[str, ...] = ()  # our keys tensor_to_ours changes (the sharded loader reads them whole)


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
    key = key[len('model.') :]
  for old, new in (
    ('language_model.model.', 'language_model.'),
    ('language_model.lm_head.', 'lm_head.'),
    ('vision_tower.vision_model.', 'vision_tower.'),
  ):
    if key.startswith(old):
      return new + key[len(old) :]
  return key


def _llava_to_hf(key: str) -> str:
  """Our key -> the key transformers v5 `save_pretrained` writes for LLaVA-OneVision."""
  if key.startswith('language_model.'):
    return 'language_model.model.' + key[len('language_model.') :]
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
  for old, new in (
    ('model.visual.', 'visual.'),
    ('model.language_model.', 'language_model.'),
    ('model.', 'language_model.'),
  ):
    if key.startswith(old):
      key = new + key[len(old) :]
      break
  if key.startswith('visual.blocks.'):
    key = 'visual.layers.' + key[len('visual.blocks.') :]
  return key


def _qwen2_5_vl_to_hf(key: str) -> str:
  """Our key -> the hub layout (what transformers v5 `save_pretrained` writes for Qwen2.5-VL)."""
  if key.startswith('language_model.'):
    return 'model.' + key[len('language_model.') :]
  if key.startswith('visual.layers.'):
    return 'visual.blocks.' + key[len('visual.layers.') :]
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
    raise ShapeMismatchError(
      f'tensor {key!r} has shape {tuple(tensor.shape)} in the checkpoint, the model expects the Conv3d weight {want}'
    )
  return np.asarray(tensor).reshape(want[0], -1)


def _qwen2_5_vl_tensor_to_hf(model, key: str, tensor: np.ndarray) -> np.ndarray:
  return tensor.reshape(_conv3d_shape(model)) if key == _PATCH_EMBED else tensor


def _same(key: str) -> str:
  return key


FAMILIES: dict[str, Family] = {
  'siglip': Family('SiglipModel', _build_siglip, _siglip_param_shapes, _same, _same),
  'llava_onevision': Family(
    'LlavaOnevisionForConditionalGeneration',
    _build_llava_onevision,
    _llava_param_shapes,
    _llava_to_ours,
    _llava_to_hf,
    tied=('lm_head.weight', 'language_model.embed_tokens.weight'),
  ),
  'qwen2_5_vl': Family(
    'Qwen2_5_VLForConditionalGeneration',
    _build_qwen2_5_vl,
    _qwen2_5_vl_param_shapes,
    _qwen2_5_vl_to_ours,
    _qwen2_5_vl_to_hf,
    tied=('lm_head.weight', 'language_model.embed_tokens.weight'),
    tensor_to_ours=_qwen2_5_vl_tensor_to_ours,
    tensor_to_hf=_qwen2_5_vl_tensor_to_hf,
    relaid=(_PATCH_EMBED,),
  ),
}


def family_of(config: Mapping[str, Any]) -> Family:
  model_type = config.get('model_type')
  if model_type not in FAMILIES:
    raise UnsupportedModelError(
      f'unsupported model_type {model_type!r} in config.json; supported: {", ".join(sorted(FAMILIES))}'
    )
  return FAMILIES[model_type]


_T = TypeVar('_T')  # a tensor: an array, or a TensorRef into a safetensors file


def _rename(state_dict: Mapping[str, _T], rename: Callable[[str], str]) -> dict[str, _T]:
  out: dict[str, _T] = {}
  source: dict[str, str] = {}
  for key, tensor in state_dict.items():
    new = rename(key)
    if new in out:
      raise CheckpointError(f'tensors {source[new]!r} and {key!r} both map to {new!r}')
    out[new], source[new] = tensor, key
  return out


def _drop_tied_head(
  state_dict: dict[str, Any], target: Any, family: Family, equal: Callable[[Any, Any], bool] = np.array_equal
) -> None:
  """A tied model has no head param; a checkpoint may still store the head as a copy of the embedding.
  `state_dict` values are tensors or TensorRefs (then `equal` compares what they point to)."""
  if family.tied is None:
    return
  head, embedding = family.tied
  if head not in state_dict or head.split('.')[0] in target or embedding not in state_dict:
    return
  if not equal(state_dict[head], state_dict[embedding]):
    raise TensorSetError(
      f'the config ties word embeddings, but the checkpoint holds a {head!r} that differs from {embedding!r}'
    )
  del state_dict[head]


def _convert(
  family: Family, state_dict: Mapping[str, np.ndarray], target: Any, model: Any = None, dtype: Any = np.float32
) -> dict:
  renamed = _rename(state_dict, family.to_ours)
  if family.tensor_to_ours is not None:
    if model is None:
      raise ValueError(f'converting a {family.architecture} checkpoint needs the model (its config)')
    renamed = {k: family.tensor_to_ours(model, k, v) for k, v in renamed.items()}
  _drop_tied_head(renamed, target, family)
  return state_dict_to_params(renamed, target, dtype)


def convert_state_dict(model_type: str, state_dict: Mapping[str, np.ndarray], target: Any, model: Any = None) -> dict:
  """Any supported key layout of `model_type` (hub files, v5 files, v5 in-memory `state_dict()`) ->
  our param tree shaped like `target`, strictly (numpy float32). `model` is needed by families whose
  tensors change layout (qwen2_5_vl)."""
  return _convert(family_of({'model_type': model_type}), state_dict, target, model)


def load_params(ckpt_dir: str, model: Any, family: Family, dtype: Any = np.float32) -> dict:
  """Strictly converts the checkpoint in `ckpt_dir` into `model`'s param tree: jax arrays of `dtype`
  (default float32) on the default device, the whole model on this host."""
  params = _convert(family, read_state_dict(ckpt_dir), family.param_shapes(model), model, np.dtype(dtype))
  return jax.tree.map(jnp.asarray, params)


# ----------------------------------------------------------------------------------------------
# Sharded loading: each process reads only the slices its own devices hold.


def _flax_axes(path: tuple[str, ...], ndim: int) -> tuple[int, ...]:
  """perm with flax_leaf = hf_tensor.transpose(perm) (the inverse view of `_to_flax`)."""
  if path[-1] == 'kernel' and ndim == 2:
    return (1, 0)
  if path[-1] == 'kernel' and ndim == 4:
    return (2, 3, 1, 0)  # OIHW -> HWIO
  return tuple(range(ndim))


def _safe_open(path: str):
  """safe_open with the pread backend where safetensors has it (>= 0.8): reads land in fresh buffers
  instead of mapped file pages, which would count towards this process's RSS while the file is open."""
  try:
    return safe_open(path, framework='numpy', backend='pread')
  except TypeError:  # an older safetensors without `backend`: memory-mapped, closed after each read
    return safe_open(path, framework='numpy')


def read_slice(ref: TensorRef | np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
  """The block `index` (one slice per dim, () for a scalar) of checkpoint tensor `ref`, read with
  `safetensors.safe_open(...).get_slice`: only that block's bytes are copied out of the file (a tensor
  already in memory is just sliced)."""
  if isinstance(ref, np.ndarray):
    return ref[index]
  with _safe_open(ref.path) as f:
    return f.get_slice(ref.name)[index]


def _refs_equal(a: TensorRef, b: TensorRef, block_bytes: int = 64 * 2**20) -> bool:
  """Whether two checkpoint tensors hold the same values, compared in row blocks of ~block_bytes."""
  if a.shape != b.shape:
    return False
  if not a.shape:
    return bool(np.array_equal(read_slice(a, ()), read_slice(b, ())))
  row_bytes = max(1, math.prod(a.shape[1:]) * np.dtype(_SAFETENSORS_DTYPES[a.dtype]).itemsize)
  step = max(1, block_bytes // row_bytes)
  for start in range(0, a.shape[0], step):
    rows = (slice(start, min(start + step, a.shape[0])),)
    if not np.array_equal(read_slice(a, rows), read_slice(b, rows)):
      return False
  return True


def _index_key(index: tuple[slice, ...]) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _read_block(
  path: tuple[str, ...],
  keys: list[str],
  refs: Mapping[str, TensorRef | np.ndarray],
  shape: tuple[int, ...],
  index: tuple[slice, ...],
  dtype: np.dtype,
) -> np.ndarray:
  """The block `index` of flax leaf `path` [shape] as numpy `dtype`, read from the HF tensors `keys`
  (one per layer when stacked; a kernel's block is the transposed block of the HF weight). Converted
  slice by slice, so a bfloat16 checkpoint never passes through float32 unless float32 is asked for."""
  stacked = STACKED in path
  perm = _flax_axes(path, len(shape) - stacked)

  def read(key: str, flax_index: tuple[slice, ...]) -> np.ndarray:
    hf_index = [slice(None)] * len(flax_index)
    for k, sl in enumerate(flax_index):
      hf_index[perm[k]] = sl
    return read_slice(refs[key], tuple(hf_index)).transpose(perm)

  if not stacked:
    return np.ascontiguousarray(read(keys[0], index), dtype)
  block = np.empty([len(range(*sl.indices(n))) for sl, n in zip(index, shape)], dtype)
  for i, layer in enumerate(range(*index[0].indices(shape[0]))):
    block[i] = read(keys[layer], index[1:])
  return block


def _place_leaf(
  path: tuple[str, ...],
  keys: list[str],
  refs: Mapping[str, TensorRef | np.ndarray],
  shape: tuple[int, ...],
  leaf_sharding: Any,
  dtype: np.dtype,
) -> jax.Array:
  """The global array of one parameter: each of this process's devices gets its block, read and put on
  the device one at a time (a block replicated on several local devices is read once)."""
  index_map = leaf_sharding.addressable_devices_indices_map(shape)
  uses = collections.Counter(_index_key(index) for index in index_map.values())
  pending: dict[tuple, np.ndarray] = {}
  arrays = []
  for device, index in index_map.items():
    key = _index_key(index)
    block = pending.pop(key, None)
    if block is None:
      block = _read_block(path, keys, refs, shape, index, dtype)
    uses[key] -= 1
    if uses[key]:
      pending[key] = block
    arrays.append(jax.device_put(block, device))
    del block
  return jax.make_array_from_single_device_arrays(shape, leaf_sharding, arrays)


def load_sharded_params(
  ckpt_dir: str, model: Any, family: Family, mesh: Any, dtype: Any = np.float32, rules: Any = None
) -> dict:
  """Strictly loads `ckpt_dir` into `model`'s param tree as global jax arrays of `dtype` placed with
  `sharding.param_shardings(params, mesh, rules)`.

  The checkpoint is checked from its headers first (missing / unexpected / mis-shaped tensors raise
  before any data is read). Then, parameter by parameter and device by device, this process reads from
  the safetensors files only the blocks its own devices of `mesh` hold, converting each block to `dtype`
  on its own: no host ever holds the whole model, nor a float32 copy of a bfloat16 checkpoint. Every
  process of a multi-process run calls this with the same arguments.
  """
  from jaxvlm import sharding  # pylint: disable=g-import-not-at-top

  dtype = np.dtype(dtype)
  rules = sharding.DEFAULT_RULES if rules is None else rules
  refs: dict[str, TensorRef | np.ndarray] = dict(_rename(read_tensor_index(ckpt_dir), family.to_ours))
  relay = family.tensor_to_ours
  for key in family.relaid:
    if key in refs and relay is not None:  # small tensors whose layout changes (a patch embedding): read
      refs[key] = np.asarray(relay(model, key, read_slice(refs[key], ())))  # whole, changed in memory
  target = family.param_shapes(model)
  _drop_tied_head(refs, target, family, equal=_refs_equal)
  plan = match_tensors({k: r.shape for k, r in refs.items()}, target)
  shardings = traverse_util.flatten_dict(sharding.param_shardings(target, mesh, rules))
  shapes = traverse_util.flatten_dict(target)
  out = {}
  for path in tqdm(
    plan,
    desc=f'loading {os.path.basename(os.path.normpath(ckpt_dir))}',
    unit='param',
    disable=jax.process_index() != 0,
    leave=False,
  ):
    out[path] = _place_leaf(path, plan[path], refs, tuple(shapes[path].shape), shardings[path], dtype)
  return traverse_util.unflatten_dict(out)


def load_pretrained(
  name_or_path: str | os.PathLike,
  dtype: Any = jnp.float32,
  expect: Sequence[str] | None = None,
  field: str = '',
  *,
  param_dtype: Any = jnp.float32,
  mesh: Any = None,
  rules: Any = None,
) -> tuple[Any, dict, Any]:
  """Loads a local Hugging Face directory or hub id -> (model, params, processor).

  `dtype` is the compute dtype given to the module; params are `param_dtype` (default float32; a
  bfloat16 checkpoint loaded as bfloat16 is never widened). Without `mesh` the whole model is read on
  this host into arrays on the default device. With `mesh` (a `sharding.make_mesh`, which may span
  every process) params are global arrays sharded by the logical axis rules (`rules`, default
  `sharding.DEFAULT_RULES`) and each process reads only the slices its devices hold
  (`load_sharded_params`). `processor` is a `jaxvlm.processor` object built from the checkpoint's
  tokenizer and processor configs, or None when the directory has no tokenizer (e.g. a bare
  `save_pretrained` of a model).
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
      f'{"this field" if field else "the caller"} needs one of: {", ".join(expect)}'
    )
  model = family.build(config, dtype)
  if mesh is None:
    params = load_params(ckpt_dir, model, family, param_dtype)
  else:
    params = load_sharded_params(ckpt_dir, model, family, mesh, param_dtype, rules)
  return model, params, processor_lib.from_checkpoint_dir(ckpt_dir, config)


def _check_fits(params: Any, target: Any) -> None:
  got = {'/'.join(p): tuple(x.shape) for p, x in traverse_util.flatten_dict(params).items()}
  want = {'/'.join(p): tuple(x.shape) for p, x in traverse_util.flatten_dict(target).items()}
  if set(got) != set(want):
    raise TensorSetError(
      f'params do not fit the model: missing {sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}'
    )
  for name, shape in got.items():
    if shape != want[name]:
      raise ShapeMismatchError(f'param {name} has shape {shape}, the model expects {want[name]}')


def export_pretrained(
  model: Any,
  params: Any,
  config_dict: Mapping[str, Any],
  out_dir: str,
  processor: Any = None,
  max_shard_bytes: int | None = None,
  dtype: Any = np.float32,
) -> None:
  """Writes `params` as a Hugging Face checkpoint transformers v5 loads: safetensors of `dtype` (default
  float32; bfloat16 as the hub's large checkpoints are) named as its `save_pretrained` names them
  (sharded above `max_shard_bytes`), `config.json` from `config_dict`, and the processor's tokenizer /
  chat template / preprocessor files when given."""
  dtype = np.dtype(dtype)
  family = family_of(config_dict)
  _check_fits(params, family.param_shapes(model))
  state_dict = params_to_state_dict(params)
  if family.tensor_to_hf is not None:
    state_dict = {k: family.tensor_to_hf(model, k, v) for k, v in state_dict.items()}
  state_dict = _rename(state_dict, family.to_hf)
  write_state_dict({k: v.astype(dtype, copy=False) for k, v in state_dict.items()}, out_dir, max_shard_bytes)
  config = {'architectures': [family.architecture], **config_dict, 'dtype': dtype.name}
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if processor is not None:
    processor.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Orbax: params of experiments (fine-tuned selectors, trained tiny models) in native format.
