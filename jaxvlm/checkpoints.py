"""Hugging Face state dicts <-> Flax params, by one naming convention shared by every model here.

The Flax param tree mirrors the transformers `state_dict()` key path, except that
  1. repeated blocks `...layers.{i}.<rest>` are one stacked subtree `...['layers'][<rest>]` with a
     leading layer axis L (built with `nn.scan`);
  2. leaf names: Dense/Conv 'kernel', LayerNorm 'scale' and Embed 'embedding' are HF `weight`;
     a Dense kernel is the HF weight transposed ([in, out]), a Conv kernel is OIHW -> HWIO;
  3. every other leaf keeps its HF name and layout.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

STACKED = 'layers'
_HF_LEAF_NAME = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}


class CheckpointError(ValueError):
  """A checkpoint does not fit the model: names the tensor and the shapes involved."""


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
  otherwise `CheckpointError` names the offending tensors and shapes.
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
        raise CheckpointError(
            f'tensor {key!r} has shape {tuple(np.asarray(state_dict[key]).shape)} in the checkpoint, '
            f'the model expects {_hf_shape(path, per_layer_shape)} '
            f'(param {"/".join(path)} {shape})')
      used.add(key)
      slices.append(value.astype(np.float32, copy=False))
    if len(slices) == len(layers):
      out[path] = slices[0] if n_layers is None else np.stack(slices)
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected:
    raise CheckpointError(
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
