"""Clean vs efficiency-plan prefill, timed in the same run, next to the analytical FLOP speedup.

  python -m benchmarks.efficient_prefill [--frames=16,64 --repeats=3 --skip_tiny --skip_xla]

Models: the mid-size random LLaVA-OneVision of benchmarks/knockout_sweep.py (8 layers, hidden 256,
49 tokens per frame) at each --frames, and the embedded default (assets/llava_ov_tiny: 8 layers, 4 tokens
per frame, 32 frames). One prefill = vision tower on every frame + the decoder over the prompt + the
option scores at the answer slot.
  clean  the model's own masked forward (`model.apply`, no knockout rule)
  plan   jaxvlm.models.efficient.option_logprobs: video rows stop after the exit layer, within-frame layers
         run block-diagonally
Plans scale the paper's LLaVA-OV-7B plan (exit after 18 of 28 layers, within-frame 1-8) to 8 layers:
exit after 5, within-frame 1-2; plus the exit alone and a harsher exit after 3.

"analytical" is jaxvlm.costs' total-FLOP ratio clean / plan counting the tiles the kernel visits with
this run's tile size; "paper" the same with the paper's attention convention. Goal: measured >= 0.8x
analytical at 64 frames on the mid-size model. Times are the fastest of --repeats runs, clean and plan
alternated, so a busy machine's load hits both alike. Unless --skip_xla it also prints XLA's FLOP count
(cost_analysis of the compiled prefill, one-tile attention) against the analytical one at the first
--frames. Our attention kernel runs with 64 x 64 tiles (--attention_block_size), as in knockout_sweep.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import knockout_sweep as ks
from jaxvlm import checkpoints, costs
from jaxvlm.prompts import TokenLayout
from jaxvlm.models import efficient
from jaxvlm.models.attention import Group
from jaxvlm.models.efficient import InferencePlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = (InferencePlan(5, 2), InferencePlan(5, 0), InferencePlan(3, 0))


def tiny_prompt(model, num_frames: int, seed: int = 0):
  """ids [1, S], layout, answer index [1] of a prompt for the embedded default (its vocabulary)."""
  rng = np.random.default_rng(seed)
  n_video = model.config.num_video_tokens(num_frames)
  parts = [(Group.SYSTEM, ks.TEXT[0][1]), (Group.VIDEO, n_video)] + list(ks.TEXT[1:])
  group = np.concatenate([np.full(n, g) for g, n in parts]).astype(np.int32)
  ids = rng.integers(2, model.config.video_token_id - 1, size=len(group)).astype(np.int32)
  ids[group == Group.VIDEO] = model.config.video_token_id
  frame = np.full(len(group), -1, np.int32)
  frame[group == Group.VIDEO] = np.append(np.arange(n_video - 1) // model.config.tokens_per_frame, -1)
  s = len(ids)
  layout = TokenLayout(
    group=jnp.asarray(group)[None],
    frame=jnp.asarray(frame)[None],
    positions=jnp.arange(s, dtype=jnp.int32)[None],
    valid=jnp.ones((1, s), bool),
  )
  return ids[None], layout, jnp.asarray([s - 1], jnp.int32)


def time_pair(a, b, repeats: int) -> tuple[float, float]:
  """Fastest of `repeats` runs of a and of b, alternated (a shared machine's load hits both alike)."""
  a(), b()  # warm-up: compile / allocate
  ta, tb = [], []
  for _ in range(repeats):
    for fn, out in ((a, ta), (b, tb)):
      t = time.perf_counter()
      fn()
      out.append(time.perf_counter() - t)
  return min(ta), min(tb)


def compare(name: str, model, params, ids, layout, answer, pixels, option_ids, repeats: int, block: int):
  """Times clean and every plan on one prompt; prints one line per plan."""
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  shape = costs.PromptShape(
    span.start, ids.shape[1] - span.start - span.num_tokens, span.num_frames, model.config.tokens_per_frame
  )
  num_layers = model.config.text.num_hidden_layers
  clean_plan = InferencePlan(num_layers)

  @jax.jit
  def clean(params, ids, px):
    out = model.apply({'params': params}, ids, px, layout.positions, layout.meta())
    last = jnp.take_along_axis(out.hidden, answer[:, None, None], axis=1)[:, 0]
    logits = model.apply({'params': params}, last, method='logits')
    return jnp.take(jax.nn.log_softmax(logits, axis=-1), option_ids, axis=-1)

  run_clean = lambda: jax.block_until_ready(clean(params, ids, pixels))
  full = costs.prefill_cost(model.config, clean_plan, shape, block_size=block)
  full_paper = costs.prefill_cost(model.config, clean_plan, shape)
  print(
    f'{name}: S = {ids.shape[1]} ({span.num_frames} frames x {model.config.tokens_per_frame} tokens), '
    f'clean prefill {full.total / 1e9:.2f} GFLOPs '
    f'(attention {full.attention / full.total:.0%}, vision {full.vision / full.total:.0%})'
  )
  reference = np.asarray(clean(params, ids, pixels))
  for plan in PLANS:
    run = lambda: jax.block_until_ready(
      efficient.option_logprobs(
        model, params, ids, pixels, layout.positions, layout.meta(), answer, option_ids, plan, span
      )
    )
    t_clean, t_plan = time_pair(run_clean, run, repeats)
    cost = costs.prefill_cost(model.config, plan, shape, block_size=block)
    paper = costs.prefill_cost(model.config, plan, shape)
    measured, analytical = t_clean / t_plan, full.total / cost.total
    change = np.abs(np.asarray(run()) - reference).max()
    print(
      f'  {plan.name(num_layers):32s} clean {t_clean * 1e3:8.1f} ms  plan {t_plan * 1e3:8.1f} ms   measured {measured:5.2f}x   analytical '
      f'{analytical:5.2f}x (paper {full_paper.total / paper.total:5.2f}x)   measured/analytical '
      f'{measured / analytical:4.2f}   attention FLOPs {100 * paper.attention / full_paper.attention:5.1f} % '
      f'of full   max |dlogp| vs clean {change:.2f}'
    )


def xla_check(model, params, ids, layout, answer, pixels, option_ids):
  """XLA's FLOP count of the compiled prefill against the analytical one (one-tile attention)."""
  block = ids.shape[1]
  model = ks.with_attention_block(model, block)
  span = efficient.video_span(np.asarray(layout.group), np.asarray(layout.frame), model.config.tokens_per_frame)
  shape = costs.PromptShape(
    span.start, ids.shape[1] - span.start - span.num_tokens, span.num_frames, model.config.tokens_per_frame
  )
  print(f'XLA cost_analysis vs analytical FLOPs ({span.num_frames} frames, attention in one tile of {block}):')
  for plan in (InferencePlan(model.config.text.num_hidden_layers),) + PLANS:
    xla = costs.xla_prefill_flops(
      model, params, ids, pixels, layout.positions, layout.meta(), answer, option_ids, plan, span
    )
    ours = costs.prefill_cost(model.config, plan, shape, block_size=block)
    print(
      f'  {plan.name(model.config.text.num_hidden_layers):32s} XLA {xla["total"] / 1e9:8.3f} GFLOPs, '
      f'analytical {ours.total / 1e9:8.3f} GFLOPs, XLA / analytical {xla["total"] / ours.total:.3f} '
      f'(decoder {xla["decoder"] / (ours.attention + ours.linear):.3f}, vision {xla["vision"] / ours.vision:.3f})'
    )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--frames', default='16,64')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--attention_block_size', type=int, default=64)
  parser.add_argument('--skip_tiny', action='store_true')
  parser.add_argument('--skip_xla', action='store_true')
  args = parser.parse_args()
  frame_counts = [int(f) for f in args.frames.split(',')]
  _, mid, mid_params = ks.mid_size_model(8)
  if not args.skip_xla:
    ids, layout, answer = ks.prompt(mid, frame_counts[0])
    px = np.random.default_rng(1).normal(size=(1, frame_counts[0], 196, 196, 3)).astype(np.float32)
    xla_check(mid, mid_params, ids, layout, answer, px, ks.OPTION_IDS)
  model = ks.with_attention_block(mid, args.attention_block_size)
  for frames in frame_counts:
    ids, layout, answer = ks.prompt(model, frames)
    px = np.random.default_rng(1).normal(size=(1, frames, 196, 196, 3)).astype(np.float32)
    compare(
      f'mid-size, {frames} frames',
      model,
      mid_params,
      ids,
      layout,
      answer,
      px,
      ks.OPTION_IDS,
      args.repeats,
      args.attention_block_size,
    )
  if not args.skip_tiny:
    tiny, tiny_params, _ = checkpoints.load_pretrained(os.path.join(REPO, 'assets', 'llava_ov_tiny'))
    tiny = ks.with_attention_block(tiny, args.attention_block_size)
    ids, layout, answer = tiny_prompt(tiny, 32)
    size = tiny.config.vision.image_size
    px = np.random.default_rng(2).normal(size=(1, 32, size, size, 3)).astype(np.float32)
    compare(
      'embedded default (assets/llava_ov_tiny), 32 frames',
      tiny,
      tiny_params,
      ids,
      layout,
      answer,
      px,
      jnp.asarray([3, 4, 5, 6], jnp.int32),
      args.repeats,
      args.attention_block_size,
    )


if __name__ == '__main__':
  main()
