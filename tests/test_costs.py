"""The prefill cost model (jaxvlm.costs): the paper's 37.5 % for LLaVA-OneVision-7B, the kernel's tile
count, agreement with XLA's own FLOP count of the compiled plan prefill, and `experiments.plan` printing it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import knockout_sweep as ks
from configs import plan as plan_config
from jaxvlm import costs, memory_plan
from jaxvlm.models import efficient
from jaxvlm.models.efficient import InferencePlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llava_ov_7b():
  return memory_plan.llava_config(plan_config.get_config('llava_ov_7b'))


def test_paper_share_for_llava_ov_7b_at_32_frames():
  cfg = llava_ov_7b()
  assert cfg.tokens_per_frame == 196 and cfg.text.num_hidden_layers == 28
  # Exit after layer 18, within-frame attention in layers 1-8 (1-based): Gou et al.'s Table 1 setting.
  share = costs.paper_attention_share(cfg, InferencePlan(18, 8), 32)
  assert f'{100 * share:.1f}' == '37.5'
  # Each part alone: the exit keeps 18 of 28 layers; within-frame layers alone keep 20 + 8 * 2 / 32.
  assert costs.paper_attention_share(cfg, InferencePlan(18, 0), 32) == pytest.approx(18 / 28, abs=1e-3)
  assert costs.paper_attention_share(cfg, InferencePlan(28, 8), 32) == pytest.approx((20 + 8 * 2 / 32) / 28, abs=2e-3)
  assert costs.paper_attention_share(cfg, InferencePlan(28, 0), 32) == 1.0


def test_linear_vision_and_cache_follow_the_plan():
  cfg = llava_ov_7b()
  shape = costs.PromptShape(prefix=14, suffix=100, frames=32, tokens_per_frame=196, new_tokens=8)
  full = costs.prefill_cost(cfg, InferencePlan(28), shape)
  cut = costs.prefill_cost(cfg, InferencePlan(18, 8), shape)
  head = 2 * cfg.text.hidden_size * cfg.text.vocab_size
  # Linear work is per row: 18 layers of S rows + 10 of the S' text rows instead of 28 of S.
  assert (cut.linear - head) / (full.linear - head) == pytest.approx(
    (18 * shape.slots + 10 * shape.text) / (28 * shape.slots)
  )
  assert cut.vision == full.vision > 0
  assert cut.kv_cache_bytes / full.kv_cache_bytes == pytest.approx(
    (18 * (shape.slots + 8) + 10 * (shape.text + 8)) / (28 * (shape.slots + 8))
  )
  # A frame budget cuts the vision tower proportionally; exit after layer 0 removes it.
  eight = costs.prefill_cost(cfg, InferencePlan(18, 8), costs.PromptShape(14, 100, 8, 196))
  assert eight.vision == pytest.approx(full.vision / 4)
  assert costs.prefill_cost(cfg, InferencePlan(0), shape).vision == 0.0
  text = costs.format_cost(cut, full, 'plan')
  assert 'attention FLOPs: ' in text.splitlines()[-1] and '% of full' in text


def test_kernel_pairs_count_the_visited_tiles():
  s = 10
  # Tiles of one pair: exactly the causal triangle; one tile: everything; 4 x 4 tiles of 10 (padded
  # to 12): 6 of 9 tiles are at or below the diagonal.
  assert costs.kernel_pairs(np.arange(s), np.arange(s), 1) == s * (s + 1) // 2
  assert costs.kernel_pairs(np.arange(s), np.arange(s + 3), 64) == s * (s + 3)
  assert costs.kernel_pairs(np.arange(s), np.arange(s), 4) == 6 * 16


def test_analytical_flops_agree_with_xla_on_the_mid_size_model():
  frames = 4
  _, model, params = ks.mid_size_model(8)
  ids, layout, answer = ks.prompt(model, frames)
  block = ids.shape[1]  # one tile: XLA counts a loop body once, so the kernel's loops must run once
  model = ks.with_attention_block(model, block)
  px = np.random.default_rng(1).normal(size=(1, frames, 196, 196, 3)).astype(np.float32)
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  shape = costs.PromptShape(
    span.start, ids.shape[1] - span.start - span.num_tokens, frames, model.config.tokens_per_frame
  )
  for plan in (InferencePlan(8), InferencePlan(5, 2)):
    xla = costs.xla_prefill_flops(
      model, params, ids, px, layout.positions, layout.meta(), answer, ks.OPTION_IDS, plan, span
    )
    ours = costs.prefill_cost(model.config, plan, shape, block_size=block)
    print(f'{plan}: XLA {xla["total"] / 1e9:.3f} GFLOPs, analytical {ours.total / 1e9:.3f} GFLOPs')
    assert xla['decoder'] == pytest.approx(ours.attention + ours.linear, rel=0.05)
    assert xla['vision'] == pytest.approx(ours.vision, rel=0.05)


def test_plan_cli_prints_the_cost_and_rejects_bad_plans():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = lambda *flags: subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.plan',
      '--config=configs/plan.py:llava_ov_7b',
      '--config.prompt_tokens=0',
      *flags,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = run('--config.exit_layer=18', '--config.intra_frame_layers=8', '--config.frames=32')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'attention FLOPs: 37.5 % of full' in out.stdout
  assert 'within-frame x8, full x10, text-only x10' in out.stdout
  for flags, message in (
    (('--config.exit_layer=29',), 'exit_layer 29 is outside the 28 decoder layers'),
    (('--config.exit_layer=4', '--config.intra_frame_layers=6'), 'intra_frame_layers 6 must lie in 0..exit_layer=4'),
    (('--config.frames=33',), 'frames 33 must lie in 1..num_frames=32'),
  ):
    out = run(*flags)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert 'fits' not in out.stdout  # rejected before the memory plan is computed
