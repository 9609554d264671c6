"""experiments.plan: TPU table, parameter bytes per device against the shard count (and against jax's
own shard shapes), and the fit verdicts for LLaVA-OneVision 7B / 72B at 32 frames."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from configs import plan as plan_config
from jaxvlm import memory_plan as plan
from jaxvlm import sharding
from jaxvlm.models import llava_onevision as lo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(preset: str, tpu: str, **overrides):
  c = plan_config.get_config(preset)
  c.num_frames = 32
  c.tpu = tpu
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def plans():
  out = {}
  for preset in ('llava_ov_7b', 'llava_ov_72b'):
    for tpu in ('v5e-8', 'v5p-32'):
      out[preset, tpu] = plan.plan(config(preset, tpu))
      print(plan.format_plan(out[preset, tpu]), end='\n\n')
  return out


def test_tpu_table():
  gib = 2**30
  gb = 10**9
  assert plan.tpu_slice('v5e-8') == plan.TpuSlice('v5e-8', 8, 1, 16 * gib, 384 * gb)
  assert plan.tpu_slice('v5litepod-16').chips == 16
  assert plan.tpu_slice('v5p-32') == plan.TpuSlice('v5p-32', 16, 4, 95 * gib, 448 * gb)
  assert plan.tpu_slice('v4-16') == plan.TpuSlice('v4-16', 8, 2, 32 * gib, 407 * gb)
  assert plan.tpu_slice('v6e-64') == plan.TpuSlice('v6e-64', 64, 8, 32 * gib, 1440 * gb)
  assert plan.tpu_slice('v5e-32').chips_per_host == 8 and plan.tpu_slice('v5p-8').chips_per_host == 4
  with pytest.raises(ValueError, match='unknown TPU type'):
    plan.tpu_slice('v3-8')
  with pytest.raises(ValueError, match='TensorCores per chip'):
    plan.tpu_slice('v5p-3')


@pytest.mark.parametrize('preset', ['llava_ov_7b', 'llava_ov_72b'])
@pytest.mark.parametrize('tpu', ['v5e-8', 'v5p-32'])
def test_parameter_bytes_are_count_times_dtype_over_shards(plans, preset, tpu):
  p = plans[preset, tpu]
  chips = plan.tpu_slice(tpu).chips
  params = p['params']
  model = lo.LlavaOnevisionForConditionalGeneration(plan.llava_config(config(preset, tpu)))
  shapes = lo.param_shapes(model)
  assert params['count'] == lo.count_params(shapes)
  groups = params['count_by_shard_count']
  # Every evenly divisible weight is split over all chips (fsdp = -1); only norm vectors and the
  # SigLIP position/conv leftovers stay whole (< 0.01 % of the parameters).
  assert set(groups) == {1, chips}
  assert groups[1] / params['count'] < 1e-4
  assert params['bytes_per_device'] == groups[chips] * 2 / chips + groups[1] * 2
  # Independently: the shard shapes jax itself derives from the same specs on a mesh of that size.
  mesh = AbstractMesh(tuple(p['mesh'][a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
  specs = sharding.param_partition_specs(shapes, p['mesh'])
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  by_jax = sum(
    math.prod(NamedSharding(mesh, s).shard_shape(x.shape)) * 2 for x, s in zip(jax.tree.leaves(shapes), spec_leaves)
  )
  assert by_jax == params['bytes_per_device']


def test_72b_does_not_fit_v5e_8_in_bfloat16_but_7b_does(plans):
  assert plans['llava_ov_7b', 'v5e-8']['fits']
  assert not plans['llava_ov_72b', 'v5e-8']['fits']
  # The weights alone exceed 16 GiB per chip; the 16-chip v5p slice holds everything.
  assert plans['llava_ov_72b', 'v5e-8']['params']['bytes_per_device'] > 16 * 2**30
  assert plans['llava_ov_72b', 'v5p-32']['fits']
  for p in plans.values():
    assert p['total_bytes_per_device'] == pytest.approx(
      p['params']['bytes_per_device']
      + p['kv_cache_bytes_per_device']
      + p['sweep_states_bytes_per_device']
      + p['activations']['total']
    )


def test_tensor_axis_splits_the_kv_cache_and_batch_splits_activations():
  base = plan.plan(config('llava_ov_7b', 'v5e-8'))
  tp = plan.plan(config('llava_ov_7b', 'v5e-8', mesh=dict(data=1, fsdp=2, tensor=4)))
  dp = plan.plan(config('llava_ov_7b', 'v5e-8', batch_size=8))
  # 4 KV heads x 128 over tensor=4: a quarter of the cache per device.
  assert tp['kv_cache_bytes_per_device'] == pytest.approx(base['kv_cache_bytes_per_device'] / 4)
  # 8 samples over data x fsdp = 8: the same per-device cache as 1 sample replicated.
  assert dp['kv_cache_bytes_per_device'] == pytest.approx(base['kv_cache_bytes_per_device'])
  assert tp['params']['bytes_per_device'] == pytest.approx(base['params']['bytes_per_device'], rel=1e-3)


def test_cli_prints_the_plan():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.plan',
      '--config=configs/plan.py:llava_ov_0_5b',
      '--config.num_frames=8',
      '--config.tpu=v6e-8',
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'llava_ov_0_5b: 893,' in out.stdout and '8 frames' in out.stdout
  assert 'fits v6e-8: yes' in out.stdout


@pytest.fixture(scope='module')
def recommended():
  out = {}
  for tpu in ('v5e-16', 'v5e-32', 'v5p-8'):
    out[tpu] = plan.recommend(config('llava_ov_72b', tpu))
    print(plan.format_plan(out[tpu]['plan']), plan.format_recommendation(out[tpu]), sep='\n', end='\n\n')
  return out


def test_host_ram_at_load_is_two_blocks_of_the_largest_parameter(plans):
  p = plans['llava_ov_72b', 'v5p-32']
  model = lo.LlavaOnevisionForConditionalGeneration(plan.llava_config(config('llava_ov_72b', 'v5p-32')))
  shapes = lo.param_shapes(model)
  # The largest per-chip block: the stacked MLP weights [80, 8192, 29568], mlp split over the 16 chips.
  mlp = shapes['language_model']['layers']['mlp']['gate_proj']['kernel']
  assert mlp.shape == (80, 8192, 29568)
  assert p['params']['largest_block_bytes'] == math.prod(mlp.shape) * 2 / 16
  assert p['host_load_bytes']['sharded'] == 2 * p['params']['largest_block_bytes']
  # The whole-model path (float32 tree + the stacked copy) cannot load 72B on any TPU host.
  assert p['host_load_bytes']['whole_model_float32'] == 2 * 4 * p['params']['count'] > 448 * 10**9
  assert p['fits_host_ram'] and not p['whole_model_load_fits_host_ram']
  tiny_ram = plan.plan(config('llava_ov_72b', 'v5p-32', host_ram_gib=4.0))
  assert tiny_ram['fits_hbm'] and not tiny_ram['fits_host_ram'] and not tiny_ram['fits']


def test_candidate_meshes_keep_tensor_within_a_host_and_dividing_the_kv_heads():
  meshes = plan.candidate_meshes(config('llava_ov_72b', 'v5e-32'), plan.tpu_slice('v5e-32'))
  assert [m['tensor'] for m in meshes] == [1, 2, 4, 8]  # 8 KV heads, 8 chips per host
  assert all(m['data'] == 1 and m['data'] * m['fsdp'] * m['tensor'] == 32 for m in meshes)
  batched = plan.candidate_meshes(config('llava_ov_72b', 'v5e-32', batch_size=4), plan.tpu_slice('v5e-32'))
  assert batched[0] == {'data': 4, 'fsdp': 8, 'tensor': 1}


def test_72b_recommendations(recommended):
  # v5e-32: fsdp alone replicates the KV cache and activations (batch 1); tensor=2 brings it under 16 GiB.
  r = recommended['v5e-32']
  assert r['plan']['fits'] and r['plan']['mesh'] == {'data': 1, 'fsdp': 16, 'tensor': 2}
  assert r['launch'] == {
    'hosts': 4,
    'chips_per_host': 8,
    'processes': 4,
    'mesh_devices': 'global',
    'mesh': r['plan']['mesh'],
  }
  assert (
    '--config.mesh.devices=global --config.mesh.data=1 --config.mesh.fsdp=16 --config.mesh.tensor=2'
    in plan.format_recommendation(r)
  )
  # v5e-16: no mesh holds the sweep's per-layer states too; without them fsdp=16 fits.
  r = recommended['v5e-16']
  assert not r['plan']['fits'] and r['launch']['hosts'] == 2
  assert r['without_sweep_states']['fits'] and r['without_sweep_states']['sweep_states_bytes_per_device'] == 0
  # v5p-8: one host, 4 chips of 95 GiB: fsdp over the host's chips.
  r = recommended['v5p-8']
  assert r['plan']['fits'] and r['plan']['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert r['launch']['hosts'] == 1 and r['launch']['mesh_devices'] == 'local'


def test_unknown_preset_is_rejected():
  with pytest.raises(ValueError, match='unknown preset'):
    plan_config.get_config('llava_ov_13b')
  assert jnp.dtype(plan_config.get_config().dtype) == jnp.bfloat16


def test_qwen2_5_vl_7b_preset():
  """Qwen2.5-VL-7B at the runs' 448 x 448: 32 frames -> 16 temporal patches of 16 x 16 merged tokens."""
  p = plan.plan(config('qwen2_5_vl_7b', 'v5e-8'))
  print(plan.format_plan(p))
  assert p['params']['count'] == 8_292_166_656  # transformers' meta-device model (test_qwen2_5_vl_checkpoints)
  assert p['prompt_slots'] == 16 * 16 * 16 + 2 + 256
  groups = p['params']['count_by_shard_count']
  assert set(groups) == {1, 8} and groups[1] / p['params']['count'] < 1e-3
  assert p['fits'] and p['activations']['vision_layer'] > 0
  # Twice the frames: twice the KV cache (the prompt is almost all video).
  longer = plan.plan(config('qwen2_5_vl_7b', 'v5e-8', num_frames=64))
  assert longer['kv_cache_bytes_per_device'] / p['kv_cache_bytes_per_device'] == pytest.approx(
    (32 * 256 + 2 + 256) / (16 * 256 + 2 + 256)
  )
