"""Sharding: mesh construction, logical axes of every full-size parameter, divisibility fallback, and on
8 simulated CPU devices (a subprocess: the device count is fixed when jax starts) a tiny LLaVA-OneVision
sharded over (data=2, fsdp=2, tensor=2) against the same model on one device.

`python -m tests.test_sharding` (with XLA_FLAGS=--xla_force_host_platform_device_count=8) runs the
8-device checks and prints their numbers as one JSON line; the tests below assert on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.plan import QWEN2, SIGLIP_SO400M_IN_LLAVA
from jaxvlm import prompts, sharding
from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2, siglip
from jaxvlm.models.attention import Group

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEO_ID = 98
NUM_FRAMES = 2
OPTION_IDS = np.asarray([11, 12, 13, 14], np.int32)

# The full-size configs of the memory planner, keyed by preset (llava_ov_0_5b, llava_ov_7b, llava_ov_72b).
FULL_TEXT = QWEN2


def llava_config(text: dict, vision: dict) -> lo.LlavaOnevisionConfig:
  return lo.LlavaOnevisionConfig.from_hf(
    dict(
      vision_config=vision,
      text_config=text,
      video_token_index=VIDEO_ID,
      image_token_index=97,
      tie_word_embeddings=text['tie_word_embeddings'],
    )
  )


def tiny_llava() -> lo.LlavaOnevisionForConditionalGeneration:
  """tests/test_llava_onevision.py tiny_config(tie=False), built without transformers."""
  vision = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=35,
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
    tie_word_embeddings=False,
    max_position_embeddings=256,
  )
  return lo.LlavaOnevisionForConditionalGeneration(llava_config(text, vision))


def siglip_so400m() -> siglip.SiglipModel:
  vision = siglip.SiglipVisionConfig(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
  )
  text = siglip.SiglipTextConfig(
    vocab_size=32000,
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    max_position_embeddings=64,
  )
  return siglip.SiglipModel(siglip.SiglipConfig(vision, text))


def siglip_shapes(model: siglip.SiglipModel) -> dict:
  v, t = model.config.vision_config, model.config.text_config
  pixels = jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
  ids = jnp.zeros((1, t.max_position_embeddings), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), pixels, ids))['params']


def rule_names() -> set[str]:
  return {name for name, _ in sharding.DEFAULT_RULES}


def assert_all_named(shapes) -> int:
  """Every leaf has a logical-name tuple of its rank, each name covered by DEFAULT_RULES."""
  axes = sharding.param_logical_axes(shapes)
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(flat_shapes) == len(flat_axes)
  for (path, leaf), names in zip(flat_shapes, flat_axes):
    assert isinstance(names, tuple) and len(names) == len(leaf.shape), (path, names, leaf.shape)
    assert {n for n in names if n is not None} <= rule_names(), (path, names)
    assert ('layers' in names) == any(getattr(k, 'key', None) == 'layers' for k in path), path
  return len(flat_axes)


# ---------------------------------------------------------------------------------------------------
# In-process tests (one CPU device).


def test_mesh_shape_fills_the_rest_and_rejects_bad_products():
  assert sharding.mesh_shape(8, -1, 2, 2) == (2, 2, 2)
  assert sharding.mesh_shape(8, 1, -1, 1) == (1, 8, 1)
  assert sharding.mesh_shape(16, -1) == (16, 1, 1)
  with pytest.raises(ValueError, match='multiple of 3 devices, have 8'):
    sharding.mesh_shape(8, -1, 3)
  with pytest.raises(ValueError, match='uses 4 devices, have 8'):
    sharding.mesh_shape(8, 2, 2, 1)
  with pytest.raises(ValueError, match='at most one -1'):
    sharding.mesh_shape(8, -1, -1)


def test_make_mesh_on_this_host():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1, 'tensor': 1}
  with pytest.raises(ValueError, match='devices'):
    sharding.make_mesh(data=1, fsdp=jax.device_count() + 1)


@pytest.mark.parametrize('size', sorted(FULL_TEXT))
def test_every_full_size_llava_parameter_has_logical_axes(size):
  model = lo.LlavaOnevisionForConditionalGeneration(llava_config(FULL_TEXT[size], SIGLIP_SO400M_IN_LLAVA))
  shapes = lo.param_shapes(model)
  n = assert_all_named(shapes)
  # On a v5p-32-like mesh (16 devices), the big matrices are split 16 ways.
  specs = sharding.param_partition_specs(shapes, {'data': 1, 'fsdp': 8, 'tensor': 2})
  q = specs['language_model']['layers']['self_attn']['q_proj']['kernel']
  assert q == P(None, 'fsdp', 'tensor')
  print(f'llava-onevision {size}: {n} leaves named')


def test_every_siglip_parameter_has_logical_axes():
  for model in (siglip_so400m(), siglip.SiglipModel(siglip.SiglipConfig())):
    assert_all_named(siglip_shapes(model))


def test_indivisible_weight_axes_are_replicated():
  sizes = {'data': 1, 'fsdp': 2, 'tensor': 8}
  assert sharding.logical_to_spec(('vocab', 'embed'), (100, 64), sizes) == P(None, 'fsdp')
  assert sharding.logical_to_spec(('vocab', 'embed'), (152128, 3584), sizes) == P('tensor', 'fsdp')
  # 0.5B: 2 kv heads x 64 = 128 divides by 8; 14 heads x 64 = 896 too; 4864 / 8 = 608.
  assert sharding.logical_to_spec(('layers', 'embed', 'kv_heads'), (24, 896, 128), sizes) == P(None, 'fsdp', 'tensor')
  assert sharding.logical_to_spec(('layers', 'embed', 'kv_heads'), (24, 895, 12), sizes) == P(None, None, None)
  assert sharding.shard_count(P(None, 'fsdp', 'tensor'), sizes) == 16


def test_unknown_parameter_is_named_in_the_error():
  with pytest.raises(ValueError, match="'encoder/mystery/kernel' has no logical axis names"):
    sharding.param_logical_axes({'encoder': {'mystery': {'kernel': jnp.zeros((2, 2))}}})
  with pytest.raises(ValueError, match="'lm_head/kernel' has 3 dims"):
    sharding.param_logical_axes({'lm_head': {'kernel': jnp.zeros((2, 2, 2))}})


def test_activation_constraints_only_under_rules():
  model = tiny_llava()
  shapes = lo.param_shapes(model)
  b, s = 2, model.config.num_video_tokens(NUM_FRAMES) + 3
  ids = jnp.full((b, s), VIDEO_ID, jnp.int32).at[:, -3:].set(5)
  px = jnp.zeros((b, NUM_FRAMES, 35, 35, 3))
  pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  meta = qwen2.text_meta(jnp.ones((b, s), bool))
  fwd = lambda p: model.apply({'params': p}, ids, px, pos, meta).hidden
  count = lambda: str(jax.make_jaxpr(fwd)(shapes)).count('sharding_constraint')
  assert count() == 0
  with sharding.activation_rules(sharding.make_mesh()):
    # vision q/k/v, mlp, layer out; projector, embeds; decoder q, k, v, mlp, layer out
    assert count() >= 10


def test_local_rows_single_process():
  mesh = sharding.make_mesh()
  n = jax.device_count()
  x = sharding.global_batch(np.arange(4.0 * n).reshape(2 * n, 2), mesh)
  np.testing.assert_array_equal(sharding.local_rows(x), np.asarray(x))


# ---------------------------------------------------------------------------------------------------
# 8 simulated devices (run in a subprocess).


def random_params(shapes, seed: int = 0):
  """Every leaf ~ N(0, 0.05^2), around 1 for norm scales (no zero-initialised leaf can hide a layout
  bug). numpy, not jax.random: no compile per leaf shape."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for path, leaf in leaves:
    name = '/'.join(str(k.key) for k in path)
    base = 1.0 if 'norm' in name and not name.endswith('bias') else 0.0
    out.append((base + 0.05 * rng.standard_normal(leaf.shape)).astype(np.float32))
  return jax.tree.unflatten(tree, out)


def video_batch(model, batch: int, seed: int):
  """Padded video-QA prompts: ids [B, S], pixels, TokenLayout, answer_index [B] (numpy)."""
  rng = np.random.default_rng(seed)
  cfg = model.config
  n_video = cfg.num_video_tokens(NUM_FRAMES)
  rows = []
  for i in range(batch):
    parts = [
      (Group.SYSTEM, 2 + i % 2),
      (Group.VIDEO, n_video),
      (Group.QUESTION, 3 + i),
      (Group.OPTIONS, 4),
      (Group.LAST, 2),
    ]
    group = np.concatenate([np.full(n, g) for g, n in parts]).astype(np.int32)
    frame = np.full(len(group), -1, np.int32)
    frame[group == Group.VIDEO] = np.append(np.arange(n_video - 1) // cfg.tokens_per_frame, -1)
    rows.append((group, frame))
  s = max(len(g) for g, _ in rows)
  ids = np.zeros((batch, s), np.int32)
  group = np.full((batch, s), Group.LAST, np.int32)
  frame = np.full((batch, s), -1, np.int32)
  valid = np.zeros((batch, s), bool)
  for i, (g, f) in enumerate(rows):
    n = len(g)
    ids[i, :n] = np.where(g == Group.VIDEO, VIDEO_ID, rng.integers(1, 90, size=n))
    group[i, :n], frame[i, :n], valid[i, :n] = g, f, True
  positions = np.broadcast_to(np.arange(s, dtype=np.int32), (batch, s)).copy()
  layout = prompts.TokenLayout(group=group, frame=frame, positions=positions, valid=valid)
  pixels = rng.normal(size=(batch, NUM_FRAMES, 35, 35, 3)).astype(np.float32)
  return ids, pixels, layout, (valid.sum(1) - 1).astype(np.int32)


def sweep_specs(num_layers: int) -> knockout.KnockoutSpec:
  """Text-query knockouts only: every spec recomputes the same text tail, so one compiled sweep call
  (VT/VS tails start inside the video and would compile more shapes; test_sweep covers them)."""
  specs = [
    knockout.knockout_spec('LV', knockout.all_layers(num_layers), NUM_FRAMES),
    knockout.knockout_spec('LV', knockout.layers_from(num_layers, 1), NUM_FRAMES),
    knockout.knockout_spec('frames', knockout.window(num_layers, 0, 2), NUM_FRAMES, frames=[1]),
    knockout.block_spec([Group.QUESTION], [Group.VIDEO], knockout.explicit(num_layers, [2]), NUM_FRAMES),
  ]
  return knockout.stack_specs(specs)


def eight_device_checks() -> dict:
  """Sharded (2, 2, 2) vs one device: logits, the knockout sweep, and where the shards live."""
  assert jax.device_count() == 8, jax.devices()
  timings = {}
  t0 = time.time()
  model = tiny_llava()
  params = random_params(lo.param_shapes(model))
  ids, pixels, layout, answer = video_batch(model, batch=4, seed=0)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  one = jax.devices()[0]

  def forward(p, ids, px, layout):
    out = model.apply({'params': p}, ids, px, layout.positions, layout.meta())
    return model.apply({'params': p}, out.hidden, method='logits')

  # One device.
  on_one = jax.device_put((params, ids, pixels, layout, answer, OPTION_IDS), one)
  ref_logits = np.asarray(jax.jit(forward)(*on_one[:4]))
  ref_clean = sweep.clean_run(model, *on_one[:4], on_one[4], on_one[5])
  specs = sweep_specs(model.config.text.num_hidden_layers)
  ref_sweep = np.asarray(
    sweep.run_sweep(
      model,
      on_one[0],
      ref_clean,
      on_one[3],
      on_one[4],
      on_one[5],
      jax.tree.map(jnp.asarray, specs),
      tail_multiple=8,
      spec_chunk=4,
    )
  )
  timings['one_device_s'] = time.time() - t0

  # Sharded: every input placed explicitly, then no implicit transfer is allowed.
  t0 = time.time()
  p_shard = sharding.param_shardings(params, mesh)
  sp = sharding.shard_params(params, mesh)
  s_ids, s_px, s_layout, s_answer = sharding.shard_batch((ids, pixels, layout, answer), mesh)
  s_options = jax.device_put(OPTION_IDS, sharding.replicated(mesh))
  batch = sharding.batch_sharding(mesh)
  fwd = sharding.jit_sharded(forward, mesh, (p_shard, batch, batch, batch), batch)
  with jax.transfer_guard('disallow'):
    logits = fwd(sp, s_ids, s_px, s_layout)
    with sharding.activation_rules(mesh):
      clean = sweep.clean_run(model, sp, s_ids, s_px, s_layout, s_answer, s_options)
  # run_sweep plans tails on the host (reads the layout, uploads spec chunks): intended transfers.
  with sharding.activation_rules(mesh):
    swept = sweep.run_sweep(
      model, sp, clean, s_layout, s_answer, s_options, jax.tree.map(jnp.asarray, specs), tail_multiple=8, spec_chunk=4
    )
  timings['sharded_s'] = time.time() - t0

  q = sp['language_model']['layers']['self_attn']['q_proj']['kernel']
  with sharding.activation_rules(mesh):
    hlo = fwd.jitted.lower(sp, s_ids, s_px, s_layout).as_text()
  return {
    'logits_max_abs_diff': float(np.abs(np.asarray(logits) - ref_logits).max()),
    'logits_spec': str(logits.sharding.spec),
    'clean_logp_max_abs_diff': float(
      np.abs(np.asarray(clean.option_logprobs) - np.asarray(ref_clean.option_logprobs)).max()
    ),
    'sweep_logp_max_abs_diff': float(np.abs(np.asarray(swept) - ref_sweep).max()),
    'sweep_knockout_effect': float(np.abs(ref_sweep - np.asarray(ref_clean.option_logprobs)).max()),
    'q_proj_shape': list(q.shape),
    'q_proj_shard_shape': list(q.addressable_shards[0].data.shape),
    'q_proj_devices': len(q.sharding.device_set),
    'hidden_states_spec': str(clean.hidden_states.sharding.spec),
    'logits_max_abs': float(np.abs(ref_logits).max()),
    'hlo_sharding_constraints': hlo.count('sharding_constraint') + hlo.count('@Sharding'),
    **timings,
  }


@pytest.fixture(scope='module')
def eight():
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  t0 = time.time()
  proc = subprocess.run(
    [sys.executable, '-m', 'tests.test_sharding'], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out['subprocess_s'] = time.time() - t0
  print('8-device checks:', json.dumps(out, indent=1))
  return out


def test_sharded_logits_equal_one_device(eight):
  assert eight['logits_max_abs_diff'] <= 1e-5
  assert eight['logits_spec'] == str(P(('data', 'fsdp')))


def test_sharded_knockout_sweep_equals_one_device(eight):
  assert eight['clean_logp_max_abs_diff'] <= 1e-5
  assert eight['sweep_logp_max_abs_diff'] <= 1e-5
  # The knockouts move the log-probs, so agreement is not trivially the clean run twice.
  assert eight['sweep_knockout_effect'] > 1e-3


def test_weights_are_split_over_fsdp_and_tensor(eight):
  # q_proj [L=3, D=64, H*Dh=64] -> ('layers', 'embed', 'q_heads') -> (None, fsdp, tensor).
  assert eight['q_proj_shape'] == [3, 64, 64]
  assert eight['q_proj_shard_shape'] == [3, 32, 32]
  assert eight['q_proj_devices'] == 8
  assert eight['hlo_sharding_constraints'] > 0


def main():
  print(json.dumps(eight_device_checks()))


if __name__ == '__main__':
  main()
