"""Cost of the keyframe oracles relative to one clean forward of the same sample.

  python -m benchmarks.causal_oracle_cost [--frames=32 --layers=8 --repeats=3]

Model: the mid-size random LLaVA-OneVision of benchmarks.knockout_sweep (8 layers, hidden 256, 8 query
/ 2 KV heads; SigLIP patch 14 at 196 px -> 49 tokens per frame, as LLaVA-Video's 7 x 7 pooled grid at
this scale). Prompt: 14 system tokens, 32 x 49 + 1 video slots, then the text of a typical
multiple-choice question: 28 question tokens, 4 options of 9 tokens, 12 tokens of answer instruction
and assistant header (76 text tokens after the video; about 95 % of the prompt is video, as in
LLaVA-Video prompts).

Timed in the same process after a warm-up, the three interleaved in each of --repeats rounds (so load
from other processes hits them alike); medians, and the median of the per-round ratios:
  forward   one plain forward with the option log-probs (vision tower included);
  causal    the causal oracle for every candidate frame: sweep.clean_run (the forward, keeping each
            layer's inputs and KV cache) + one text-tail recompute per frame knockout;
  attention the attention oracle on top of the same clean run.
The goal is causal / forward <= 3; N full forwards would cost about N + 1.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks.knockout_sweep import OPTION_IDS, mid_size_model, prompt, with_attention_block
from jaxvlm import prompts
from jaxvlm.knockout import engine as sweep
from jaxvlm.keyframes import relevance
from jaxvlm.models.attention import Group

TEXT = [(Group.SYSTEM, 14), (Group.QUESTION, 28), (Group.OPTIONS, 36), (Group.LAST, 12)]


def interleaved_times(fns: dict, repeats: int) -> dict[str, np.ndarray]:
  """Seconds [repeats] per function, one call of each per round after one warm-up call each."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: np.asarray(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument(
    '--attention_block_size',
    type=int,
    default=0,
    help='query/key tile of the attention kernel, forward and oracle alike (0: the '
    'config default, 512; measured ratios 2.3x at 512, 2.6x at 128, 3.4x at 64)',
  )
  args = parser.parse_args()
  _, model, params = mid_size_model(args.layers)
  model = with_attention_block(model, args.attention_block_size)
  ids, layout, answer = prompt(model, args.frames, text=TEXT)
  px = np.random.default_rng(1).normal(size=(1, args.frames, 196, 196, 3)).astype(np.float32)
  target = np.asarray([0])
  text_after = int(sum(n for _, n in TEXT[1:]))
  print(
    f'prompt S = {ids.shape[1]} ({args.frames} frames x {model.config.tokens_per_frame} tokens + newline, '
    f'{text_after} text tokens after the video), {args.layers} layers, hidden 256'
  )

  @jax.jit
  def forward(params, ids, px):
    out = model.apply({'params': params}, ids, px, layout.positions, layout.meta())
    return prompts.option_logprobs(model, params, out.hidden[0, -1], OPTION_IDS)

  def causal():
    clean = sweep.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)
    oracle = relevance.causal_relevance(model, params, clean, layout, answer, OPTION_IDS, args.frames, target)
    return oracle.relevance

  def attention():
    clean = sweep.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)
    return relevance.attention_relevance(model, params, clean, layout, answer, args.frames).last

  t = interleaved_times(
    {'forward': lambda: np.asarray(forward(params, ids, px)), 'causal': causal, 'attention': attention}, args.repeats
  )
  ratio = lambda name: float(np.median(t[name] / t['forward']))
  print(f"one clean forward:                        {np.median(t['forward']):8.3f} s")
  print(
    f"causal oracle, {args.frames} frames (reuse path):    {np.median(t['causal']):8.3f} s   "
    f"ratio {ratio('causal'):5.2f}x (goal <= 3x; {args.frames} full forwards ~ {args.frames + 1}x)"
  )
  print(
    f"attention oracle (clean run + text tail): {np.median(t['attention']):8.3f} s   ratio {ratio('attention'):5.2f}x"
  )
  print('per-round causal / forward ratios:', np.round(t['causal'] / t['forward'], 2).tolist())


if __name__ == '__main__':
  main()
