"""Device mesh, logical axis names of every parameter, and rules mapping them to mesh axes.

Mesh axes: `data` (samples), `fsdp` (weights sharded, and samples too: FSDP gathers each weight just in
time and splits the batch), `tensor` (heads, MLP width and vocabulary split across devices).

Parameters stay plain arrays (no boxed metadata, so the strict checkpoint converter sees the Hugging
Face tree): their logical axis names come from `param_logical_axes`, a table keyed by parameter path.
Activations carry names through `flax.linen.with_logical_constraint` in the model files; those are
no-ops unless `activation_rules` (or `jit_sharded`) puts rules and a mesh in context.

Divisibility: a dimension whose size is not a multiple of the product of its mesh axes is replicated
on those axes (e.g. a 100-word vocabulary on tensor=8) instead of failing. Batch arrays must divide
evenly (`shard_batch` says so); pad the batch instead.

Meshes over every process (`mesh_from_config` with devices='global'): arrays are global (each process
holds the blocks of its own devices). `put` builds one from a host value every process holds alike, and
`to_host` gives every process the whole value back (a collective, so every process calls it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence, cast

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxvlm import cpu_threads

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LogicalAxes = tuple[str | None, ...]
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Logical name -> mesh axes, first applicable rule wins (flax semantics: a mesh axis is used at most
# once per array). Parameter names first, then activation names (used in jaxvlm/models).
DEFAULT_RULES: Rules = (
  ('layers', None),  # stacked layer axis: scanned over, never split
  ('vocab', 'tensor'),
  ('embed', 'fsdp'),  # model width of a weight
  ('vision_embed', 'fsdp'),  # SigLIP width entering the projector
  ('mlp', 'tensor'),
  ('q_heads', 'tensor'),  # H * Dh output of q (input of o_proj / out_proj)
  ('kv_heads', 'tensor'),  # K * Dh output of k, v
  ('qkv', 'tensor'),  # stacked [q; k; v] rows of the SigLIP pooling head
  ('proj', 'tensor'),  # SigLIP text head output
  ('norm', None),
  ('position', None),
  ('conv_height', None),
  ('conv_width', None),
  ('conv_in', None),
  # activations
  ('batch', BATCH_AXES),
  ('length', None),
  ('act_embed', None),  # hidden states are replicated over fsdp/tensor (batch-split instead)
  ('act_heads', 'tensor'),
  ('act_kv_heads', 'tensor'),
  ('act_mlp', 'tensor'),
  ('head_dim', None),
)

# Parameter path patterns (matched against the end of the '/'-joined path, fnmatch syntax, first match
# wins) -> logical names of the UNSTACKED leaf. Leaves under a 'layers' subtree get a leading 'layers'.
_PARAM_AXES: tuple[tuple[str, LogicalAxes], ...] = (
  ('embed_tokens/embedding', ('vocab', 'embed')),
  ('token_embedding/embedding', ('vocab', 'embed')),
  ('position_embedding/embedding', ('position', 'embed')),
  ('patch_embedding/kernel', ('conv_height', 'conv_width', 'conv_in', 'embed')),
  ('patch_embedding/bias', ('embed',)),
  ('*norm*/scale', ('norm',)),  # LayerNorm (layer_norm1, post_layernorm, head/layernorm, ...)
  ('*norm*/bias', ('norm',)),
  ('*norm*/weight', ('norm',)),  # Qwen2 RMSNorm (input_layernorm, norm, ...)
  ('q_proj/kernel', ('embed', 'q_heads')),
  ('q_proj/bias', ('q_heads',)),
  ('k_proj/kernel', ('embed', 'kv_heads')),
  ('k_proj/bias', ('kv_heads',)),
  ('v_proj/kernel', ('embed', 'kv_heads')),
  ('v_proj/bias', ('kv_heads',)),
  ('o_proj/kernel', ('q_heads', 'embed')),
  ('out_proj/kernel', ('q_heads', 'embed')),
  ('out_proj/bias', ('embed',)),
  ('attention/in_proj_weight', ('qkv', 'embed')),  # torch layout [3D, D]
  ('attention/in_proj_bias', ('qkv',)),
  ('gate_proj/kernel', ('embed', 'mlp')),
  ('up_proj/kernel', ('embed', 'mlp')),
  ('down_proj/kernel', ('mlp', 'embed')),
  ('fc1/kernel', ('embed', 'mlp')),
  ('fc1/bias', ('mlp',)),
  ('fc2/kernel', ('mlp', 'embed')),
  ('fc2/bias', ('embed',)),
  ('multi_modal_projector/linear_1/kernel', ('vision_embed', 'mlp')),
  ('multi_modal_projector/linear_1/bias', ('mlp',)),
  ('multi_modal_projector/linear_2/kernel', ('mlp', 'embed')),
  ('multi_modal_projector/linear_2/bias', ('embed',)),
  ('lm_head/kernel', ('embed', 'vocab')),
  ('image_newline', ('embed',)),
  ('head/probe', (None, None, 'embed')),
  ('text_model/head/kernel', ('embed', 'proj')),
  ('text_model/head/bias', ('proj',)),
  ('logit_scale', (None,)),
  ('logit_bias', (None,)),
  # Qwen2.5-VL vision tower (models/qwen2_5_vl_vision.py): fused qkv, biased MLP, patch merger.
  ('visual/patch_embed/proj/kernel', ('conv_in', 'embed')),  # flattened Conv3d [C*tp*p*p, D]
  ('attn/qkv/kernel', ('embed', 'qkv')),
  ('attn/qkv/bias', ('qkv',)),
  ('attn/proj/kernel', ('q_heads', 'embed')),
  ('attn/proj/bias', ('embed',)),
  ('gate_proj/bias', ('mlp',)),
  ('up_proj/bias', ('mlp',)),
  ('down_proj/bias', ('embed',)),
  ('merger/ln_q/weight', ('norm',)),
  ('merger/mlp/0/kernel', ('vision_embed', 'mlp')),
  ('merger/mlp/0/bias', ('mlp',)),
  ('merger/mlp/2/kernel', ('mlp', 'embed')),
  ('merger/mlp/2/bias', ('embed',)),
)


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes for `num_devices`; one size may be -1 (all remaining devices)."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be >= 1, at most one -1')
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} needs a multiple of {known} devices, have {num_devices}')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f'mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, '
      f'have {num_devices} (use -1 on one axis to fill the rest)'
    )
  return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes).

  Axes are Auto (GSPMD propagates shardings from the inputs and the logical constraints).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(len(devices), data, fsdp, tensor)
  here = jax.process_index()
  cpu_threads.warn_if_short(sum(d.platform == 'cpu' and d.process_index == here for d in devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


MESH_DEVICES = ('local', 'global')


def mesh_devices(kind: str) -> list:
  """'local': this process's devices (each process its own mesh, whole model per process);
  'global': every process's devices (one mesh: weights split across hosts)."""
  if kind == 'local':
    return list(jax.local_devices())
  if kind == 'global':
    return list(jax.devices())
  raise ValueError(f'mesh.devices={kind!r}: expected one of {", ".join(MESH_DEVICES)}')


def mesh_from_config(mesh_config: Mapping[str, Any]) -> Mesh:
  """The mesh of an experiment's `config.mesh` {devices: 'local'|'global', data, fsdp, tensor}; a
  shape that does not fit the devices names the devices and the process count."""
  fields = dict(mesh_config)
  kind = fields.pop('devices', 'local')
  unknown = set(fields) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh has unknown fields {sorted(unknown)}; expected devices, {", ".join(MESH_AXES)}')
  devices = mesh_devices(kind)
  try:
    return make_mesh(**fields, devices=devices)
  except ValueError as e:
    raise ValueError(
      f'config.mesh (devices={kind}: {len(devices)} devices, {jax.process_count()} process(es), '
      f'{jax.local_device_count()} devices each): {e}'
    ) from e


def put(x: Any, sharding: NamedSharding) -> jax.Array:
  """Host value `x` placed with `sharding`. On a mesh spanning processes every process must pass the same
  value; each transfers only the blocks of its own devices."""
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: Any) -> np.ndarray:
  """The whole value of `x` as numpy on this process, also for a global array whose blocks live on other
  processes (then gathered: a collective, every process must call it at the same point)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _matches(path: str, pattern: str) -> bool:
  return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, '*/' + pattern)


def logical_axes_of(path: str, ndim: int) -> LogicalAxes:
  """Logical names of the leaf at '/'-joined `path` with `ndim` dimensions (ValueError if unknown)."""
  for pattern, names in _PARAM_AXES:
    if _matches(path, pattern):
      if 'layers' in path.split('/'):
        names = ('layers',) + names
      if len(names) != ndim:
        raise ValueError(f'parameter {path!r} has {ndim} dims but its logical axes are {names}')
      return names
  raise ValueError(f'parameter {path!r} has no logical axis names (add it to sharding._PARAM_AXES)')


def param_logical_axes(params: Any) -> Any:
  """The params tree (arrays or ShapeDtypeStructs) with each leaf replaced by its logical names."""
  return jax.tree_util.tree_map_with_path(lambda p, x: logical_axes_of(_path_str(p), len(x.shape)), params)


def _axis_product(mesh_axes, axis_sizes: Mapping[str, int]) -> int:
  if mesh_axes is None:
    return 1
  names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
  return math.prod(axis_sizes[n] for n in names)


def logical_to_spec(
  names: LogicalAxes, shape: Sequence[int], axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
  """PartitionSpec of an array of `shape` with logical `names`; dims that do not divide evenly by
  their mesh axes are replicated."""
  mesh_axes = cast(PartitionSpec, nn.logical_to_mesh_axes(names, rules))  # None only for names=None
  spec = [None if size % _axis_product(axes, axis_sizes) else axes for axes, size in zip(mesh_axes, shape)]
  return PartitionSpec(*spec)


def param_partition_specs(params: Any, axis_sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES) -> Any:
  """Tree of PartitionSpecs for params on a mesh with `axis_sizes` (no devices needed: planning)."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x: logical_to_spec(logical_axes_of(_path_str(p), len(x.shape)), x.shape, axis_sizes, rules), params
  )


def shard_count(spec: PartitionSpec, axis_sizes: Mapping[str, int]) -> int:
  """Number of distinct shards an array is split into under `spec` (1 = fully replicated)."""
  return math.prod(_axis_product(axes, axis_sizes) for axes in spec)


def param_shardings(params: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """Tree of NamedShardings for params on `mesh`."""
  specs = param_partition_specs(params, dict(mesh.shape), rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(params: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """params placed on `mesh` (an explicit transfer: allowed under transfer_guard('disallow'))."""
  return jax.device_put(params, param_shardings(params, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays with a leading sample axis: samples split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Every leaf [B, ...] placed with `batch_sharding`; B must be a multiple of data * fsdp. On a mesh
  spanning processes, every process passes the whole batch (see `put`)."""
  n = mesh.shape['data'] * mesh.shape['fsdp']
  for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if not x.shape or x.shape[0] % n:
      raise ValueError(
        f'batch leaf {_path_str(path) or "<root>"} has shape {x.shape}: the leading '
        f'sample axis must be a multiple of data * fsdp = {n} (pad the batch)'
      )
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: put(x, sharding), batch)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
  """Makes the models' logical activation constraints live: code traced inside this context shards its
  activations by `rules` on `mesh`. The mesh is part of jit's cache key, so a function traced here is
  never confused with its unconstrained trace outside."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def jit_sharded(
  fn: Callable, mesh: Mesh, in_shardings: Any, out_shardings: Any, rules: Rules = DEFAULT_RULES, **jit_kwargs
) -> Callable:
  """jax.jit(fn) with explicit in/out shardings, traced and run under `activation_rules(mesh, rules)`.

  Arguments must already be placed (shard_params / shard_batch / device_put): with explicit shardings
  nothing is copied implicitly, so calls work under jax.transfer_guard('disallow').
  """
  jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, **jit_kwargs)

  @functools.wraps(fn)
  def call(*args):
    with activation_rules(mesh, rules):
      return jitted(*args)

  call.jitted = jitted  # type: ignore[attr-defined]  # a function attribute: the jit itself, for .lower()
  return call


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Multi-host: each process passes ITS rows [b, ...]; returns global arrays [b * processes, ...] with
  `batch_sharding` (process p's rows at [p * b, (p + 1) * b)). Single-process: a plain shard_batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that live on this process, in order, as numpy."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas over tensor hold the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)
