"""Mask algebra: spec constructors, layer selections, sweeps, and the first affected position."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.knockout import specs as knockout
from jaxvlm.models.attention import Group, TokenMeta, allowed


def random_layout(rng, num_frames=3, per_frame=2):
  """group/frame/valid [S] of a prompt: system, frames, newline, question, options, last, padding."""
  parts = [(Group.SYSTEM, rng.integers(1, 4), -1)]
  parts += [(Group.VIDEO, per_frame, f) for f in range(num_frames)] + [(Group.VIDEO, 1, -1)]
  parts += [
    (Group.QUESTION, rng.integers(1, 4), -1),
    (Group.OPTIONS, rng.integers(1, 4), -1),
    (Group.LAST, rng.integers(1, 3), -1),
  ]
  group = np.concatenate([np.full(n, g) for g, n, _ in parts]).astype(np.int32)
  frame = np.concatenate([np.full(n, f) for _, n, f in parts]).astype(np.int32)
  pad = rng.integers(0, 3)
  valid = np.concatenate([np.ones(len(group), bool), np.zeros(pad, bool)])
  return (
    np.concatenate([group, np.full(pad, Group.LAST)]).astype(np.int32),
    np.concatenate([frame, np.full(pad, -1)]).astype(np.int32),
    valid,
  )


def dense_allowed(group, frame, valid, rule) -> np.ndarray:
  s = len(group)
  meta = TokenMeta(
    index=jnp.arange(s)[None],
    valid=jnp.asarray(valid)[None],
    group=jnp.asarray(group)[None],
    frame=jnp.asarray(frame)[None],
  )
  return np.asarray(allowed(meta, meta, rule))[0]


def rule_at(spec, l):
  return knockout.KnockoutSpec(
    *(jnp.asarray(x[l]) for x in (spec.block, spec.cross_frame, spec.same_frame, spec.frames))
  )


@pytest.mark.parametrize('seed', range(6))
def test_first_affected_position_is_the_first_row_that_loses_an_edge(seed):
  rng = np.random.default_rng(seed)
  group, frame, valid = random_layout(rng)
  num_layers = 3
  specs = [knockout.knockout_spec(k, knockout.window(num_layers, 1, 2), 3) for k in knockout.KINDS]
  specs.append(knockout.knockout_spec('frames', knockout.all_layers(num_layers), 3, frames=[int(rng.integers(3))]))
  specs.append(knockout.block_spec([Group.OPTIONS], [Group.QUESTION], knockout.all_layers(num_layers), 3))
  clean = dense_allowed(group, frame, valid, None)
  for spec in specs:
    changed = np.zeros(len(group), bool)
    for l in range(num_layers):
      changed |= (dense_allowed(group, frame, valid, rule_at(spec, l)) != clean).any(axis=1) & valid
    expected = int(np.flatnonzero(changed)[0]) if changed.any() else len(group)
    assert knockout.first_affected_position(group, frame, valid, spec) == expected


def test_paper_conventions_on_the_newline_token():
  group = np.array(
    [Group.SYSTEM, Group.VIDEO, Group.VIDEO, Group.VIDEO, Group.VIDEO, Group.VIDEO, Group.QUESTION, Group.LAST],
    np.int32,
  )
  frame = np.array([-1, 0, 0, 1, 1, -1, -1, -1], np.int32)
  valid = np.ones(8, bool)
  layers = knockout.all_layers(1)
  lv = dense_allowed(group, frame, valid, rule_at(knockout.knockout_spec('LV', layers, 2), 0))
  assert not lv[6, 5] and not lv[7, 1:6].any() and lv[6, 0]  # text -> every video key, newline too
  vt = dense_allowed(group, frame, valid, rule_at(knockout.knockout_spec('VT', layers, 2), 0))
  assert not vt[3, 1] and vt[4, 3] and vt[5, 1] and vt[5, 4]  # newline's edges untouched
  vs = dense_allowed(group, frame, valid, rule_at(knockout.knockout_spec('VS', layers, 2), 0))
  assert not vs[2, 1] and vs[2, 2] and vs[3, 1] and vs[5, 4]  # own frame blocked, itself kept


def test_layer_selections():
  assert knockout.layers_from(6, 2).tolist() == [False, False, True, True, True, True]
  assert knockout.window(6, 1, 4).tolist() == [False, True, True, True, True, False]
  assert knockout.explicit(4, [0, 3]).tolist() == [True, False, False, True]
  for bad in (
    lambda: knockout.window(6, 3, 4),
    lambda: knockout.layers_from(6, 6),
    lambda: knockout.explicit(4, [4]),
    lambda: knockout.window(6, 0, 0),
  ):
    with pytest.raises(ValueError):
      bad()


def test_build_sweep_counts_names_and_errors():
  sw = knockout.build_sweep(8, 4, global1_step=2, window_size=4, window_stride=2)
  # global1: i = 0, 2, 4, 6; global2: 1; fine: starts 0, 2, 4 -> 8 selections x 3 types
  assert len(sw) == 24 and sw.specs.block.shape == (24, 8, 5, 5)
  assert len({e.name for e in sw.entries}) == 24
  fine_lv = [e for e in sw.entries if e.setting == 'fine' and e.kind == 'LV']
  assert [e.layers for e in fine_lv] == [(0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7)]
  with pytest.raises(ValueError, match='unknown knockout type'):
    knockout.build_sweep(8, 4, kinds=('LV', 'VX'))
  with pytest.raises(ValueError, match='outside the 8 layers'):
    knockout.build_sweep(8, 4, window_size=9)
  with pytest.raises(ValueError, match='explicit_layers'):
    knockout.build_sweep(8, 4, settings=('explicit',))


def test_first_knocked_layer():
  assert knockout.first_knocked_layer(knockout.knockout_spec('VS', knockout.window(6, 3, 2), 2)) == 3
  assert knockout.first_knocked_layer(knockout.clean_spec(6, 2)) == 6
