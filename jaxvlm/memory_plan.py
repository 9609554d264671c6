"""Memory plan: bytes per device of a Video-LLM forward on a TPU slice, with no real memory, host RAM
while loading, and a recommended mesh and launch (`python -m experiments.plan` prints it).

Host RAM at load: the sharded loader (`load_pretrained(..., mesh=...)`, what `--config.mesh.devices=global`
uses) holds on the host at most about two per-device blocks of the largest parameter (the block being
filled and its transfer to the chip); the whole-model path (`load_pretrained(path)`) builds a float32 copy
of every parameter plus the stacked copy of the layers on every host (2.1x a float32 copy, measured by
benchmarks/sharded_load_memory.py).

Recommendation: every (data, fsdp, tensor) with tensor within one host and dividing the KV heads, data
dividing the batch; the first that fits HBM and host RAM in the order (least tensor parallelism, then most
data parallelism), else the smallest. One process per host; more than one host needs the global mesh.

Parameters come from jax.eval_shape of the model and are split by the logical axis rules of
jaxvlm/sharding.py exactly as `shard_params` would place them; the KV cache, the sweep's per-layer
states and the activations are sized from the same rules (batch over data x fsdp, heads and MLP over
tensor, indivisible axes replicated). Activations are an estimate: model inputs plus the larger of one
SigLIP layer over all frames and one decoder layer over the prompt (attention scores per key block,
float32 accumulators); XLA may fuse below it or keep a few buffers more.

Qwen2.5-VL (config.family 'qwen2_5_vl'): F frames at config.frame_size make T = ceil(F / 2) temporal
patches of P = (H / 14)(W / 14) patches; the vision layer counted is a full-attention block (over one
temporal patch: the tower's peak), and the prompt holds T x P / 4 video pads + vision_start / vision_end.

Letters: B batch, F frames, T temporal patches, P patches per frame (Qwen: per temporal patch), S prompt
slots, D / Dv text / vision width.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxvlm import config_checks as cc
from jaxvlm import sharding
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2_5_vl as qv


GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  hbm_gib: float  # per chip
  chips_per_host: int
  cores_per_chip: int  # the accelerator-type suffix counts TensorCores on v4/v5p, chips on v5e/v6e
  host_ram_gb: float  # RAM (10^9 bytes) of one TPU VM host of a multi-chip slice (its machine type)


GENERATIONS = {
  'v4': Generation(32, 4, 2, 407),
  'v5e': Generation(16, 8, 1, 384),  # ct5lp-hightpu-8t: 224 vCPUs, 384 GB
  'v5p': Generation(95, 4, 2, 448),  # 208 vCPUs, 448 GB
  'v6e': Generation(32, 8, 1, 1440),  # ct6e-standard-8t
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  name: str
  chips: int
  hosts: int
  hbm_bytes_per_chip: int
  host_ram_bytes: int = 0

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts


def tpu_slice(name: str) -> TpuSlice:
  """'v5e-8' / 'v5litepod-8' / 'v5p-32' / 'v4-16' / 'v6e-64' -> chips, hosts, HBM per chip."""
  m = re.fullmatch(r'(v4|v5e|v5litepod|v5p|v6e)-(\d+)', name)
  if not m:
    raise ValueError(f'unknown TPU type {name!r}; expected e.g. v5e-8, v5p-32 ({", ".join(GENERATIONS)})')
  gen_name = 'v5e' if m.group(1) == 'v5litepod' else m.group(1)
  gen = GENERATIONS[gen_name]
  count = int(m.group(2))
  if count % gen.cores_per_chip:
    raise ValueError(f'{name}: {gen_name} counts {gen.cores_per_chip} TensorCores per chip')
  chips = count // gen.cores_per_chip
  return TpuSlice(
    name, chips, math.ceil(chips / gen.chips_per_host), int(gen.hbm_gib * GiB), int(gen.host_ram_gb * 1e9)
  )


def llava_config(config) -> lo.LlavaOnevisionConfig:
  text = config.text.to_dict()
  return lo.LlavaOnevisionConfig.from_hf(
    dict(
      vision_config=config.vision.to_dict(),
      text_config=text,
      video_token_index=151647,
      image_token_index=151646,
      tie_word_embeddings=text['tie_word_embeddings'],
    )
  )


def qwen2_5_vl_config(config) -> qv.Qwen25VLConfig:
  return qv.Qwen25VLConfig.from_hf(
    dict(
      vision_config=config.vision.to_dict(),
      text_config=config.text.to_dict(),
      tie_word_embeddings=config.text.tie_word_embeddings,
    )
  )


class _Sizer:
  """Per-device bytes of arrays named by logical axes, on a mesh of `axis_sizes`."""

  def __init__(self, axis_sizes: dict[str, int]):
    self.axis_sizes = axis_sizes

  def __call__(self, shape, names, dtype) -> float:
    spec = sharding.logical_to_spec(names, shape, self.axis_sizes)
    return math.prod(shape) * jnp.dtype(dtype).itemsize / sharding.shard_count(spec, self.axis_sizes)


def param_plan(shapes, axis_sizes: dict[str, int], param_dtype) -> dict:
  """Parameter count, bytes per device and {shard count: parameter count} of a param-shape tree."""
  specs = sharding.param_partition_specs(shapes, axis_sizes)
  by_shards: dict[int, int] = {}
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for leaf, spec in zip(jax.tree.leaves(shapes), leaves):
    n = sharding.shard_count(spec, axis_sizes)
    by_shards[n] = by_shards.get(n, 0) + math.prod(leaf.shape)
  itemsize = jnp.dtype(param_dtype).itemsize
  largest_block = max(
    math.prod(leaf.shape) * itemsize / sharding.shard_count(spec, axis_sizes)
    for leaf, spec in zip(jax.tree.leaves(shapes), leaves)
  )
  return {
    'count': sum(by_shards.values()),
    'bytes_per_device': sum(count * itemsize / n for n, count in by_shards.items()),
    'count_by_shard_count': dict(sorted(by_shards.items())),
    'largest_block_bytes': largest_block,
  }


def host_load_bytes(params: dict) -> dict:
  """Peak host RAM while loading, per host: the sharded loader vs the whole-model float32 path."""
  return {'sharded': 2 * params['largest_block_bytes'], 'whole_model_float32': 2 * params['count'] * 4}


def decoder_layer_bytes(t, size: _Sizer, b: int, s: int, dtype) -> float:
  """One Qwen2 decoder layer over [B, S] (per device): hidden states, q/k/v, blockwise scores, MLP."""
  f32 = jnp.float32
  block = min(t.attention_block_size, s)
  return (
    4 * size((b, s, t.hidden_size), ('batch', 'length', 'act_embed'), dtype)
    + size((b, s, t.num_attention_heads, t.head_dim), ('batch', 'length', 'act_heads', 'head_dim'), dtype)
    + 2 * size((b, s, t.num_key_value_heads, t.head_dim), ('batch', 'length', 'act_kv_heads', 'head_dim'), dtype)
    + 2 * size((b, t.num_attention_heads, s, block), ('batch', 'act_heads', 'length', None), f32)
    + size((b, t.num_attention_heads, s, t.head_dim), ('batch', 'act_heads', 'length', 'head_dim'), f32)
    + 3 * size((b, s, t.intermediate_size), ('batch', 'length', 'act_mlp'), dtype)
  )


def qwen_activation_bytes(
  cfg: qv.Qwen25VLConfig, size: _Sizer, b: int, t_patches: int, hw: tuple[int, int], s: int, dtype
) -> dict:
  """Inputs, one full-attention vision block over all B*T temporal patches, one decoder layer (per device)."""
  v = cfg.vision
  f32 = jnp.float32
  n, p = b * t_patches, (hw[0] // v.patch_size) * (hw[1] // v.patch_size)
  inputs = size((b, t_patches, p, v.patch_dim), ('batch', None, None, None), f32)
  vision = (
    3 * size((n, p, v.hidden_size), ('batch', 'length', 'act_embed'), dtype)
    + 3 * size((n, p, v.num_heads, v.head_dim), ('batch', 'length', 'act_heads', 'head_dim'), dtype)
    + size((n, v.num_heads, p, p), ('batch', 'act_heads', 'length', None), f32)
    + size((n, v.num_heads, p, p), ('batch', 'act_heads', 'length', None), dtype)
    + 3 * size((n, p, v.intermediate_size), ('batch', 'length', 'act_mlp'), dtype)
    + size((n, p // v.spatial_merge_size**2, cfg.text.hidden_size), ('batch', 'length', 'act_embed'), dtype)
  )  # merger output
  decoder = decoder_layer_bytes(cfg.text, size, b, s, dtype)
  return {'inputs': inputs, 'vision_layer': vision, 'decoder_layer': decoder, 'total': inputs + max(vision, decoder)}


def activation_bytes(cfg: lo.LlavaOnevisionConfig, size: _Sizer, b: int, f: int, s: int, dtype) -> dict:
  """Inputs, one vision layer over all B*F frames, one decoder layer over [B, S] (per device)."""
  v, t = cfg.vision, cfg.text
  n, p = b * f, cfg.vision.num_patches
  f32 = jnp.float32
  inputs = size((b, f, v.image_size, v.image_size, v.num_channels), ('batch', None, None, None, None), f32)
  vision = (
    3 * size((n, p, v.hidden_size), ('batch', 'length', 'act_embed'), dtype)
    + 3
    * size(
      (n, p, v.num_attention_heads, v.hidden_size // v.num_attention_heads),
      ('batch', 'length', 'act_heads', 'head_dim'),
      dtype,
    )
    + size((n, v.num_attention_heads, p, p), ('batch', 'act_heads', 'length', None), f32)
    + size((n, v.num_attention_heads, p, p), ('batch', 'act_heads', 'length', None), dtype)
    + 2 * size((n, p, v.intermediate_size), ('batch', 'length', 'act_mlp'), dtype)
    + size((n, p, t.hidden_size), ('batch', 'length', 'act_embed'), dtype)
  )  # projector output
  decoder = decoder_layer_bytes(t, size, b, s, dtype)
  return {'inputs': inputs, 'vision_layer': vision, 'decoder_layer': decoder, 'total': inputs + max(vision, decoder)}


def _tpu_problem(name) -> str | None:
  try:
    tpu_slice(name)
  except (ValueError, TypeError) as e:
    return str(e)
  return None


def _plan_relations(config) -> list[str]:
  out = []
  # The tower's and the decoder's fields differ by family: every integer among them is a size >= 1.
  for group in ('vision', 'text'):
    for key, value in config[group].items():
      if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        out.append(f'{group}.{key}={value}: out of range; expected an integer >= 1')
  t = config.text
  if t.hidden_size % t.num_attention_heads:
    out.append(f'text.hidden_size={t.hidden_size}: not a multiple of text.num_attention_heads={t.num_attention_heads}')
  if t.num_attention_heads % t.num_key_value_heads:
    out.append(
      f'text.num_attention_heads={t.num_attention_heads}: not a multiple of '
      f'text.num_key_value_heads={t.num_key_value_heads}'
    )
  if config.family == 'llava_onevision':
    v = config.vision
    if v.hidden_size % v.num_attention_heads:
      out.append(
        f'vision.hidden_size={v.hidden_size}: not a multiple of vision.num_attention_heads={v.num_attention_heads}'
      )
    if v.patch_size > v.image_size:
      out.append(f'vision.patch_size={v.patch_size}: larger than vision.image_size={v.image_size}')
  # exit_layer / intra_frame_layers / frames against the model: costs.config_plan, run next, names them.
  try:
    sharding.mesh_shape(tpu_slice(config.tpu).chips, config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  except ValueError as e:
    out.append(f'mesh={dict(config.mesh)} on tpu={config.tpu!r}: {e}')
  return out


_POSITIVE = cc.integer(1)
CONFIG_FIELDS = cc.Spec(
  'plan',
  'configs/plan.py[:preset]',
  {
    'model': cc.text(nonempty=True),
    'family': cc.one_of('llava_onevision', 'qwen2_5_vl'),
    'frame_size': cc.optional(cc.frame_size()),
    **{
      f'text.{k}': _POSITIVE
      for k in (
        'hidden_size',
        'intermediate_size',
        'num_hidden_layers',
        'num_attention_heads',
        'num_key_value_heads',
        'vocab_size',
      )
    },
    'text.tie_word_embeddings': cc.boolean(),
    'num_frames': _POSITIVE,
    'prompt_tokens': cc.integer(0),
    'batch_size': _POSITIVE,
    'param_dtype': cc.one_of(*cc.DTYPES),
    'dtype': cc.one_of(*cc.DTYPES),
    'sweep_states': cc.boolean(),
    'tpu': cc.Field(_tpu_problem, 'a TPU type such as v5e-8, v5p-32, v4-16, v6e-64'),
    'exit_layer': cc.integer(0),
    'intra_frame_layers': cc.integer(0),
    'frames': cc.integer(0),
    'prompt_prefix_tokens': cc.integer(0),
    'host_ram_gib': cc.number(0),
    'recommend': cc.boolean(),
    'output': cc.one_of('text', 'launch_flags'),
    **cc.mesh_fields(devices=False),
  },
  relations=(_plan_relations,),
  open_groups={'vision': True, 'text': True},
)


def plan(config) -> dict:
  """The memory plan of `config` (configs/plan.py) as a dict of bytes per device and the verdict.
  Every field is checked first (`CONFIG_FIELDS`): a bad one raises config_checks.ConfigError."""
  cc.check(config, CONFIG_FIELDS)
  tpu = tpu_slice(config.tpu)
  mesh = dict(
    zip(sharding.MESH_AXES, sharding.mesh_shape(tpu.chips, config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
  )
  size = _Sizer(mesh)
  b, f = config.batch_size, config.num_frames
  if config.get('family', 'llava_onevision') == 'qwen2_5_vl':
    qcfg = qwen2_5_vl_config(config)
    qmodel = qv.Qwen25VLForConditionalGeneration(qcfg, dtype=jnp.dtype(config.dtype))
    params = param_plan(qv.param_shapes(qmodel), mesh, config.param_dtype)
    h, w = (int(x) for x in config.frame_size.split(','))
    hm, wm = qcfg.merged_grid(h, w)
    t_patches = -(-f // qcfg.vision.temporal_patch_size)
    s = qcfg.num_video_pads(t_patches, hm, wm) + 2 + config.prompt_tokens
    acts = qwen_activation_bytes(qcfg, size, b, t_patches, (h, w), s, config.dtype)
    t = qcfg.text
  else:
    lcfg = llava_config(config)
    lmodel = lo.LlavaOnevisionForConditionalGeneration(lcfg, dtype=jnp.dtype(config.dtype))
    params = param_plan(lo.param_shapes(lmodel), mesh, config.param_dtype)
    s = lcfg.num_video_tokens(f) + config.prompt_tokens
    acts = activation_bytes(lcfg, size, b, f, s, config.dtype)
    t = lcfg.text
  kv = 2 * size(
    (t.num_hidden_layers, b, s, t.num_key_value_heads, t.head_dim),
    ('layers', 'batch', 'length', 'act_kv_heads', 'head_dim'),
    config.dtype,
  )
  states = (
    size((t.num_hidden_layers + 1, b, s, t.hidden_size), ('layers', 'batch', 'length', 'act_embed'), config.dtype)
    if config.sweep_states
    else 0.0
  )
  total = params['bytes_per_device'] + kv + states + acts['total']
  host = host_load_bytes(params)
  ram = int(config.get('host_ram_gib', 0) * GiB) or tpu.host_ram_bytes
  return {
    'model': config.model,
    'tpu': {**dataclasses.asdict(tpu), 'host_ram_bytes': ram},
    'mesh': mesh,
    'num_frames': f,
    'batch_size': b,
    'prompt_slots': s,
    'param_dtype': str(config.param_dtype),
    'dtype': str(config.dtype),
    'params': params,
    'kv_cache_bytes_per_device': kv,
    'sweep_states_bytes_per_device': states,
    'activations': acts,
    'total_bytes_per_device': total,
    'fits_hbm': total <= tpu.hbm_bytes_per_chip,
    'host_load_bytes': host,
    'fits_host_ram': host['sharded'] <= ram,
    'whole_model_load_fits_host_ram': host['whole_model_float32'] <= ram,
    'fits': total <= tpu.hbm_bytes_per_chip and host['sharded'] <= ram,
  }


def candidate_meshes(config, tpu: TpuSlice) -> list[dict[str, int]]:
  """(data, fsdp, tensor) over all chips: tensor within one host and dividing the KV heads (a split KV
  head would be replicated), data dividing the batch; least tensor first, then most data."""
  kv_heads = config.text.num_key_value_heads
  out = []
  for tensor in (t for t in range(1, tpu.chips_per_host + 1) if tpu.chips % t == 0 and kv_heads % t == 0):
    for data in sorted(
      (d for d in range(1, tpu.chips // tensor + 1) if (tpu.chips // tensor) % d == 0 and config.batch_size % d == 0),
      reverse=True,
    ):
      out.append({'data': data, 'fsdp': tpu.chips // tensor // data, 'tensor': tensor})
  return out


def recommend(config) -> dict:
  """The recommended mesh (the first candidate that fits, else the one with the fewest bytes per device),
  its plan, the plan without sweep-state reuse when that is what stops a fit, and the launch."""
  tpu = tpu_slice(config.tpu)
  plans = []
  for mesh in candidate_meshes(config, tpu):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.mesh = dict(mesh)
    plans.append(plan(c))
  best = next((p for p in plans if p['fits']), None)
  out: dict[str, Any] = {
    'plan': best or min(plans, key=lambda p: p['total_bytes_per_device']),
    'candidates': len(plans),
  }
  if best is None and config.sweep_states:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.sweep_states = False
    lean = recommend(c)['plan']
    out['without_sweep_states'] = lean if lean['fits'] else None
  chosen = out['plan']
  out['launch'] = {
    'hosts': tpu.hosts,
    'chips_per_host': tpu.chips_per_host,
    'processes': tpu.hosts,
    'mesh_devices': 'global' if tpu.hosts > 1 else 'local',
    'mesh': chosen['mesh'],
  }
  return out


def format_plan(p: dict) -> str:
  gib = lambda x: f'{x / GiB:10.3f} GiB'
  tpu, params = p['tpu'], p['params']
  split = ', '.join(f'{n}-way: {c / params["count"]:.4%}' for n, c in params['count_by_shard_count'].items())
  lines = [
    f"{p['model']}: {params['count']:,} parameters ({p['param_dtype']}), {p['num_frames']} frames, "
    f"batch {p['batch_size']}, {p['prompt_slots']} prompt slots, compute {p['dtype']}",
    f"{tpu['name']}: {tpu['chips']} chips on {tpu['hosts']} host(s), {gib(tpu['hbm_bytes_per_chip']).strip()} "
    f"HBM per chip; mesh {p['mesh']}",
    f'parameters split {split}',
    'per device:',
    f"  parameters       {gib(params['bytes_per_device'])}",
    f"  KV cache         {gib(p['kv_cache_bytes_per_device'])}",
    f"  sweep states     {gib(p['sweep_states_bytes_per_device'])}",
    f"  activations      {gib(p['activations']['total'])}   (inputs {p['activations']['inputs'] / GiB:.3f}, "
    f"vision layer {p['activations']['vision_layer'] / GiB:.3f}, decoder layer "
    f"{p['activations']['decoder_layer'] / GiB:.3f})",
    f"  total            {gib(p['total_bytes_per_device'])}",
    f"host RAM at load (per host, {gib(tpu['host_ram_bytes']).strip()} each): sharded loader "
    f"{p['host_load_bytes']['sharded'] / GiB:.3f} GiB ({'fits' if p['fits_host_ram'] else 'DOES NOT FIT'}); "
    f"whole-model float32 path {p['host_load_bytes']['whole_model_float32'] / GiB:.1f} GiB "
    f"({'fits' if p['whole_model_load_fits_host_ram'] else 'does not fit'})",
    f"fits {tpu['name']}: {'yes' if p['fits'] else 'NO'} "
    f"({p['total_bytes_per_device'] / tpu['hbm_bytes_per_chip']:.0%} of HBM"
    f"{'' if p['fits_host_ram'] else ', host RAM exceeded at load'})",
  ]
  return '\n'.join(lines)


def launch_command(p: dict, launch: dict, experiment: str = 'knockout') -> str:
  return (
    f"tpu/launch.sh --name=NAME --zone=ZONE --accelerator-type={p['tpu']['name']} "
    f"--experiment={experiment} --preset={p['model']}   # runs on every host: python -m "
    f"experiments.{experiment} --config=configs/{experiment}.py:{p['model']} {mesh_flags(p, launch)}"
  )


def format_recommendation(r: dict) -> str:
  p, launch = r['plan'], r['launch']
  m = p['mesh']
  lines = [
    f"recommended on {p['tpu']['name']} (best of {r['candidates']} meshes): data={m['data']} "
    f"fsdp={m['fsdp']} tensor={m['tensor']}, {p['total_bytes_per_device'] / GiB:.3f} GiB per chip "
    f"({p['total_bytes_per_device'] / p['tpu']['hbm_bytes_per_chip']:.0%} of HBM), "
    f"host RAM at load {p['host_load_bytes']['sharded'] / GiB:.3f} GiB per host: "
    f"{'fits' if p['fits'] else 'does NOT fit'}",
    f"launch: {launch['hosts']} host(s) x {launch['chips_per_host']} chips, one process per host, "
    f"mesh.devices={launch['mesh_devices']}",
  ]
  if 'without_sweep_states' in r:
    lean = r['without_sweep_states']
    lines.append(
      'without the sweep\'s per-layer states (plan --config.sweep_states=False: forwards with no '
      'knockout sweep, e.g. experiments.score): '
      + (
        f"fits with data={lean['mesh']['data']} fsdp={lean['mesh']['fsdp']} "
        f"tensor={lean['mesh']['tensor']}, {lean['total_bytes_per_device'] / GiB:.3f} GiB "
        f"per chip"
        if lean
        else 'does not fit either'
      )
    )
  if p['fits']:
    lines.append('  ' + launch_command(p, launch))
  return '\n'.join(lines)


def mesh_flags(p: dict, launch: dict) -> str:
  mesh = p['mesh']
  return (
    f"--config.mesh.devices={launch['mesh_devices']} --config.mesh.data={mesh['data']} "
    f"--config.mesh.fsdp={mesh['fsdp']} --config.mesh.tensor={mesh['tensor']}"
  )
