"""Efficiency plans (jaxvlm.models.efficient) are their equivalent knockouts with the work skipped:
option log-probs equal the masked forward and the sweep engine under the equivalent spec, greedy decoding
with the plan's cache equals greedy decoding under that spec, and the cache holds no video above the exit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.knockout import engine
from jaxvlm.models import efficient
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models.attention import Group
from jaxvlm.prompts import TokenLayout
from tests import test_llava_onevision as tl

OPTION_IDS = np.asarray([11, 12, 13, 14], np.int32)
# frames k -> (exit_layer e, intra_frame_layers m) of the 3-layer tiny decoder (e counts the layers that
# see video: 1-based "exit after layer e"); every combination compiles once, so the list stays short.
PLANS = {3: [(2, 1), (1, 1), (3, 3), (3, 0)], 2: [(0, 0), (2, 0), (2, 2)]}


def batch(model, num_frames: int, texts=((3, 4, 6, 3), (3, 7, 5, 2)), seed: int = 0):
  """Right-padded prompts with the real group structure; the prefix (system) is as long in every row."""
  cfg = model.config
  n_video = cfg.num_video_tokens(num_frames)
  rows = []
  rng = np.random.default_rng(seed)
  for n_system, n_question, n_options, n_last in texts:
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
    rows.append((ids, group, frame))
  b, s = len(rows), max(len(r[0]) for r in rows)
  ids = np.zeros((b, s), np.int32)
  group = np.full((b, s), Group.LAST, np.int32)
  frame = np.full((b, s), -1, np.int32)
  valid = np.zeros((b, s), bool)
  for i, (x, g, f) in enumerate(rows):
    ids[i, : len(x)], group[i, : len(x)], frame[i, : len(x)], valid[i, : len(x)] = x, g, f, True
  positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
  layout = TokenLayout(
    group=jnp.asarray(group), frame=jnp.asarray(frame), positions=jnp.asarray(positions), valid=jnp.asarray(valid)
  )
  pixels = np.random.default_rng(seed + 1).normal(size=(b, num_frames, 35, 35, 3)).astype(np.float32)
  return ids, pixels, layout, jnp.asarray(valid.sum(1) - 1, jnp.int32)


@pytest.fixture(scope='module')
def tiny():
  _, model, params = tl.build(False, seed=3)
  return model, params


@pytest.mark.parametrize('frames', sorted(PLANS))
def test_plan_logprobs_equal_the_equivalent_knockout(tiny, frames):
  model, params = tiny
  ids, px, layout, answer = batch(model, frames, seed=frames)
  num_layers = model.config.text.num_hidden_layers
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  plans = [efficient.InferencePlan(e, m) for e, m in PLANS[frames]]
  specs = [efficient.equivalent_spec(p, num_layers, frames) for p in plans]
  masked = np.asarray(engine.full_recompute(model, params, ids, px, layout, answer, OPTION_IDS, specs))
  clean = engine.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)
  by_engine = np.asarray(
    engine.run_sweep(
      model, params, clean, layout, answer, OPTION_IDS, jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *specs)
    )
  )
  for plan, ref, ref_engine in zip(plans, masked, by_engine):
    ours = np.asarray(
      efficient.option_logprobs(model, params, ids, px, layout.positions, layout.meta(), answer, OPTION_IDS, plan, span)
    )
    err = max(np.abs(ours - ref).max(), np.abs(ours - ref_engine).max())
    print(f'{frames} frames, {plan}: max |plan - knockout| = {err:.1e}')
    assert err <= 1e-5, (plan, err)
  # The plans differ from clean (otherwise the comparison proves nothing).
  changes = np.abs(masked - clean.option_logprobs[None]).max(axis=(1, 2))
  for plan, change in zip(plans, changes):
    assert change > 1e-4 or plan == efficient.InferencePlan(num_layers, 0), (plan, change)


def test_prefill_skips_the_video_above_the_exit(tiny):
  model, params = tiny
  ids, px, layout, answer = batch(model, 2)
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  hidden, cache = efficient.prefill(
    model, params, ids, px, layout.positions, layout.meta(), efficient.InferencePlan(1, 1), span, max_new_tokens=4
  )
  s, s_text = ids.shape[1], ids.shape[1] - span.num_tokens
  assert hidden.shape == (2, s_text, model.config.text.hidden_size)
  assert cache.low.k.shape[:3] == (1, 2, s + 4)
  assert cache.high.k.shape[:3] == (2, 2, s_text + 4)  # layers 2-3 hold the text slots only
  np.testing.assert_array_equal(efficient.output_slots(efficient.InferencePlan(1, 1), span, 3), span.text_slots)


@pytest.mark.parametrize('exit_layer,intra', [(1, 1), (0, 0)])
def test_greedy_decoding_with_the_plan_cache_equals_the_knockout(tiny, exit_layer, intra):
  model, params = tiny
  ids, px, layout, _ = batch(model, 2, seed=7)
  plan = efficient.InferencePlan(exit_layer, intra)
  spec = jax.tree.map(jnp.asarray, efficient.equivalent_spec(plan, model.config.text.num_hidden_layers, 2))
  ref = np.asarray(lo.generate(model, params, ids, px, layout.positions, layout.meta(), 8, spec=spec))
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  ours = np.asarray(efficient.generate(model, params, ids, px, layout.positions, layout.meta(), plan, span, 8))
  np.testing.assert_array_equal(ours, ref)
  clean = np.asarray(lo.generate(model, params, ids, px, layout.positions, layout.meta(), 8))
  print(f'{plan}: plan tokens {ours.tolist()}, clean {clean.tolist()}')
  assert (ours != clean).any()  # the plan changes the answer here, so equality is not trivial


def test_bad_plans_and_layouts_are_rejected(tiny):
  model, _ = tiny
  with pytest.raises(ValueError, match='outside the decoder stack'):
    efficient.InferencePlan(4, 0).validate(3)
  with pytest.raises(ValueError, match='intra_frame_layers 3 must lie in 0..exit_layer=2'):
    efficient.InferencePlan(2, 3).validate(3)
  _, _, layout, _ = batch(model, 2, texts=((3, 4, 6, 3), (4, 7, 5, 2)))
  with pytest.raises(ValueError, match='video span differs between rows'):
    efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  _, _, layout, _ = batch(model, 2)
  group = np.asarray(layout.group).copy()
  group[0, 5] = Group.QUESTION
  with pytest.raises(ValueError, match='row 0: the video tokens are not one contiguous span'):
    efficient.video_span(group, np.asarray(layout.frame), model.config.tokens_per_frame)
