"""The knockout sweep engine on Qwen2.5-VL (M-RoPE positions [3, B, S] in the layout): reuse of the clean
run == full recompute, and new windows / types do not recompile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout
from tests import test_qwen2_5_vl as tq

OPTION_IDS = np.asarray([11, 12, 13, 14], np.int32)
NUM_LAYERS = 3


@pytest.fixture(scope='module')
def tiny():
  _, model, params = tq.build(seed=2, layers=NUM_LAYERS)
  ids, layout, answer, flats = tq.qa_batch(model)
  return model, params, ids, layout, jnp.asarray(answer, jnp.int32), tq.our_pixels(flats)


def test_reuse_equals_full_recompute(tiny):
  model, params, ids, layout, answer, pixels = tiny
  f = tq.GRID[0]
  specs = [
    knockout.knockout_spec(kind, layers, f)
    for kind in knockout.KINDS
    for layers in (
      knockout.all_layers(NUM_LAYERS),
      knockout.layers_from(NUM_LAYERS, 1),
      knockout.window(NUM_LAYERS, 1, 2),
    )
  ]
  specs.append(knockout.knockout_spec('frames', knockout.window(NUM_LAYERS, 0, 2), f, frames=[1]))
  specs.append(knockout.clean_spec(NUM_LAYERS, f))
  clean = sweep.clean_run(model, params, ids, pixels, layout, answer, OPTION_IDS)
  reused = np.asarray(
    sweep.run_sweep(
      model,
      params,
      clean,
      layout,
      answer,
      OPTION_IDS,
      jax.tree.map(jnp.asarray, knockout.stack_specs(specs)),
      tail_multiple=8,
    )
  )
  full = np.asarray(sweep.full_recompute(model, params, ids, pixels, layout, answer, OPTION_IDS, specs))
  err = np.abs(reused - full).max()
  print(f'qwen2.5-vl sweep reuse vs full recompute over {len(specs)} specs: {err:.2e}')
  assert err <= 1e-5
  # The sweep changes the answer distribution (else equality above proves little).
  assert np.abs(full - np.asarray(clean.option_logprobs)[None]).max() > 1e-4


def test_new_windows_and_types_do_not_recompile(tiny):
  model, params, ids, layout, answer, pixels = tiny
  clean = sweep.clean_run(model, params, ids, pixels, layout, answer, OPTION_IDS)
  run = lambda sw: sweep.run_sweep(
    model, params, clean, layout, answer, OPTION_IDS, jax.tree.map(jnp.asarray, sw.specs), tail_multiple=8, spec_chunk=4
  )
  steps = (sweep._layer_step, sweep._answer_step)  # pylint: disable=protected-access
  compiled = lambda: sum(f._cache_size() for f in steps)
  run(knockout.build_sweep(NUM_LAYERS, tq.GRID[0], settings=('fine',), kinds=('LV', 'VT'), window_size=1))
  before = compiled()
  run(knockout.build_sweep(NUM_LAYERS, tq.GRID[0], settings=('fine',), kinds=('VT', 'LV'), window_size=2))
  assert compiled() == before
