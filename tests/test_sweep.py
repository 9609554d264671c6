"""Knockout sweeps: parity with transformers driven by dense per-layer masks (the way the PyTorch
anchor tools do it), exactness of the clean-run reuse, and no recompilation across windows/types."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout
from jaxvlm.prompts import TokenLayout
from jaxvlm.models.attention import Group
from tests import test_llava_onevision as tl

OPTION_IDS = np.asarray([11, 12, 13, 14], np.int32)


def layout_prompt(model, n_system: int, n_question: int, n_options: int, n_last: int, seed: int):
  """ids, group, frame [S] of a video QA prompt with the real group structure."""
  rng = np.random.default_rng(seed)
  cfg = model.config
  n_video = cfg.num_video_tokens(tl.NUM_FRAMES)
  parts = [
    (Group.SYSTEM, n_system),
    (Group.VIDEO, n_video),
    (Group.QUESTION, n_question),
    (Group.OPTIONS, n_options),
    (Group.LAST, n_last),
  ]
  group = np.concatenate([np.full(n, g) for g, n in parts]).astype(np.int32)
  ids = rng.integers(1, 90, size=len(group)).astype(np.int32)
  ids[group == Group.VIDEO] = tl.VIDEO_ID
  frame = np.full(len(group), -1, np.int32)
  frame[group == Group.VIDEO] = np.append(np.arange(n_video - 1) // cfg.tokens_per_frame, -1)
  return ids, group, frame


def padded_batch(model):
  prompts = [layout_prompt(model, 3, 4, 6, 3, 0), layout_prompt(model, 2, 7, 5, 2, 1)]
  s = max(len(p[0]) for p in prompts)
  ids = np.zeros((2, s), np.int32)
  group = np.full((2, s), Group.LAST, np.int32)
  frame = np.full((2, s), -1, np.int32)
  valid = np.zeros((2, s), bool)
  for i, (x, g, f) in enumerate(prompts):
    ids[i, : len(x)], group[i, : len(x)], frame[i, : len(x)], valid[i, : len(x)] = x, g, f, True
  positions = np.broadcast_to(np.arange(s, dtype=np.int32), (2, s)).copy()
  layout = TokenLayout(
    group=jnp.asarray(group), frame=jnp.asarray(frame), positions=jnp.asarray(positions), valid=jnp.asarray(valid)
  )
  answer = jnp.asarray(valid.sum(1) - 1, jnp.int32)
  return ids, layout, answer


def specs_under_test(num_layers: int) -> list[tuple[str, knockout.KnockoutSpec]]:
  f = tl.NUM_FRAMES
  out = []
  for kind in knockout.KINDS:
    out.append((f'{kind}/all', knockout.knockout_spec(kind, knockout.all_layers(num_layers), f)))
    out.append((f'{kind}/from1', knockout.knockout_spec(kind, knockout.layers_from(num_layers, 1), f)))
    out.append((f'{kind}/win1-2', knockout.knockout_spec(kind, knockout.window(num_layers, 1, 2), f)))
  out.append(('frames/1', knockout.knockout_spec('frames', knockout.window(num_layers, 0, 2), f, frames=[1])))
  out.append(
    (
      'block/question->system',
      knockout.block_spec([Group.QUESTION], [Group.SYSTEM], knockout.explicit(num_layers, [2]), f),
    )
  )
  out.append(('clean', knockout.clean_spec(num_layers, f)))
  return out


@pytest.fixture(scope='module')
def tiny():
  hf, model, params = tl.build(False, seed=2)
  ids, layout, answer = padded_batch(model)
  pixels = tl.pixels(9, 2)
  return hf, model, params, ids, layout, answer, pixels


def dense_mask(group, frame, valid, spec_l) -> np.ndarray:
  """Additive [B, 1, S, S] mask of one layer, written independently of jaxvlm's kernel."""
  b, s = group.shape
  out = np.zeros((b, 1, s, s), np.float32)
  text = lambda g: g != Group.VIDEO
  for i in range(b):
    for q in range(s):
      for k in range(s):
        ok = k <= q and valid[i, k]
        gq, gk, fq, fk = group[i, q], group[i, k], frame[i, q], frame[i, k]
        if spec_l['block'][gq, gk]:
          ok = False
        video_pair = gq == Group.VIDEO and gk == Group.VIDEO and fq >= 0 and fk >= 0
        if spec_l['cross_frame'] and video_pair and fq != fk:
          ok = False
        if spec_l['same_frame'] and video_pair and fq == fk:
          ok = False
        if text(gq) and fk >= 0 and spec_l['frames'][fk]:
          ok = False
        if k == q:
          ok = True
        out[i, 0, q, k] = 0.0 if ok else torch.finfo(torch.float32).min
  return out


def transformers_knockout_logp(hf, ids, layout, answer, pixels, spec) -> np.ndarray:
  """Option log-probs from transformers with a dense mask injected into every knocked-out layer."""
  group, frame, valid = (np.asarray(x) for x in (layout.group, layout.frame, layout.valid))
  layers = hf.model.language_model.layers
  handles = []
  clean = {
    'block': np.zeros_like(spec.block[0]),
    'cross_frame': False,
    'same_frame': False,
    'frames': np.zeros_like(spec.frames[0]),
  }
  for l, layer in enumerate(layers):
    spec_l = {
      'block': spec.block[l],
      'cross_frame': spec.cross_frame[l],
      'same_frame': spec.same_frame[l],
      'frames': spec.frames[l],
    }
    mask = torch.from_numpy(
      dense_mask(group, frame, valid, spec_l if any(np.any(v) for v in spec_l.values()) else clean)
    )

    def hook(module, args, kwargs, mask=mask):
      kwargs['attention_mask'] = mask
      return args, kwargs

    handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
  try:
    with torch.no_grad():
      logits = hf(
        input_ids=torch.from_numpy(ids).long(),
        attention_mask=torch.from_numpy(valid.copy()).long(),
        pixel_values_videos=torch.from_numpy(pixels.transpose(0, 1, 4, 2, 3)),
      ).logits
  finally:
    for h in handles:
      h.remove()
  logp = torch.log_softmax(logits[torch.arange(len(ids)), torch.from_numpy(np.asarray(answer)).long()], -1)
  return logp[:, OPTION_IDS].numpy()


def test_knockouts_match_transformers_dense_masks(tiny):
  hf, model, params, ids, layout, answer, pixels = tiny
  hf.config.text_config._attn_implementation = 'eager'
  hf.model.language_model.config._attn_implementation = 'eager'
  named = specs_under_test(model.config.text.num_hidden_layers)
  ours = sweep.full_recompute(model, params, ids, pixels, layout, answer, OPTION_IDS, [s for _, s in named])
  worst = 0.0
  for (name, spec), got in zip(named, np.asarray(ours)):
    ref = transformers_knockout_logp(hf, ids, layout, answer, pixels, spec)
    err = float(np.abs(got - ref).max())
    worst = max(worst, err)
    assert err <= 1e-4, (name, err)
  print(f'max |ours - transformers dense-mask| over {len(named)} specs: {worst:.2e}')
  # The knockouts must actually change something, or the comparison above proves little.
  clean = np.asarray(ours)[-1]
  assert np.abs(np.asarray(ours)[0] - clean).max() > 1e-3


@pytest.mark.parametrize('attention_block_size', [None, 8])
def test_reuse_equals_full_recompute(tiny, attention_block_size):
  """Also with tiles much smaller than S: then the states' per-row rules (folded into the batch) let
  the attention skip tiles, which must change nothing."""
  _, model, params, ids, layout, answer, pixels = tiny
  if attention_block_size:
    text = dataclasses.replace(model.config.text, attention_block_size=attention_block_size)
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, text=text))
  named = specs_under_test(model.config.text.num_hidden_layers)
  specs = knockout.stack_specs([s for _, s in named])
  clean = sweep.clean_run(model, params, ids, pixels, layout, answer, OPTION_IDS)
  reused = np.asarray(
    sweep.run_sweep(model, params, clean, layout, answer, OPTION_IDS, jax.tree.map(jnp.asarray, specs), tail_multiple=8)
  )
  full = np.asarray(sweep.full_recompute(model, params, ids, pixels, layout, answer, OPTION_IDS, [s for _, s in named]))
  err = np.abs(reused - full).max(axis=(1, 2))
  print('reuse vs full recompute, max abs diff per spec:', dict(zip([n for n, _ in named], err.round(9))))
  assert err.max() <= 1e-5
  np.testing.assert_allclose(np.asarray(clean.option_logprobs), full[-1], atol=1e-5)


def test_language_to_video_recomputes_only_the_text_tail(tiny):
  _, model, _, _, layout, _, _ = tiny
  lv = knockout.stack_specs([knockout.knockout_spec('LV', knockout.all_layers(3), tl.NUM_FRAMES)])
  layout_np = {k: np.asarray(getattr(layout, k)) for k in ('group', 'frame', 'valid')}
  first_layer, tails, starts = sweep.plan_tails(layout_np, lv, tail_multiple=1)
  text_after_video = [
    int(
      (
        (layout_np['group'][b] != Group.VIDEO)
        & layout_np['valid'][b]
        & (np.arange(layout_np['group'].shape[1]) > np.flatnonzero(layout_np['group'][b] == Group.VIDEO).max())
      ).sum()
    )
    for b in range(2)
  ]
  assert first_layer.tolist() == [0]
  assert tails[0] == max(text_after_video)


def test_sweep_over_all_windows_and_types_does_not_recompile(tiny):
  _, model, params, ids, layout, answer, pixels = tiny
  num_layers = model.config.text.num_hidden_layers
  clean = sweep.clean_run(model, params, ids, pixels, layout, answer, OPTION_IDS)
  chunk = 8

  def run(sw):
    return sweep.run_sweep(
      model,
      params,
      clean,
      layout,
      answer,
      OPTION_IDS,
      jax.tree.map(jnp.asarray, sw.specs),
      tail_multiple=8,
      spec_chunk=chunk,
    )

  first = knockout.build_sweep(num_layers, tl.NUM_FRAMES, window_size=2, global1_step=1)
  steps = (sweep._layer_step, sweep._answer_step)  # pylint: disable=protected-access
  compiled = lambda: sum(f._cache_size() for f in steps)
  before = compiled()
  run(first)
  # Tail lengths: the text after the video (LV), from the second frame (VT), from the first video
  # token (VS). Per tail and step function (layers below the last, the last) at most log2(chunk) + 1
  # shapes (power-of-two state counts).
  layout_np = {k: np.asarray(getattr(layout, k)) for k in ('group', 'frame', 'valid')}
  num_tails = len(np.unique(sweep.plan_tails(layout_np, first.specs, tail_multiple=8)[1]))
  bound = num_tails * len(steps) * (int(np.log2(chunk)) + 1)
  assert compiled() - before <= bound
  # The same sweep with other window values and another selection of types: no new shapes.
  after_first = compiled()
  run(
    knockout.build_sweep(
      num_layers, tl.NUM_FRAMES, window_size=2, global1_step=1, window_stride=1, kinds=('VS', 'VT', 'LV')
    )
  )
  assert compiled() == after_first
  # Any other sweep stays within the bound.
  run(knockout.build_sweep(num_layers, tl.NUM_FRAMES, window_size=1, global1_step=1))
  run(knockout.build_sweep(num_layers, tl.NUM_FRAMES, kinds=('VS',), settings=('fine',), window_size=3))
  assert compiled() - before <= bound


def test_state_plan_shares_layers_between_windows_and_cuts():
  num_layers = 8
  sw = knockout.build_sweep(num_layers, 4, kinds=('VT',))  # global1 i=0,2,4,6; global2; fine 0..4
  plan = sweep.plan_states(jax.tree.map(np.asarray, sw.specs), np.arange(len(sw)))
  computed = sum(len(p) for p in plan.parents)
  naive = sum(num_layers - e.layers[0] for e in sw.entries)
  # Worked out by hand: 1+2+3+4+6+6+8+8 distinct states per layer instead of 58 spec-layers.
  assert (computed, naive) == (38, 58)
  names = [e.name for e in sw.entries]
  assert plan.final[names.index('global2/VT/0-7')] == plan.final[names.index('global1/VT/0-7')]
