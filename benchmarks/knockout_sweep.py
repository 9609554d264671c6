"""A whole knockout sweep (global 1 + global 2 + fine-grained, LV/VT/VS) on a mid-size random
LLaVA-OneVision, three ways, timed in the same run:

  ours     jaxvlm.sweep: one clean run, then only the knocked-out tails, specs batched per compiled call
  (a)      transformers (PyTorch, eager attention) with a dense 4-D additive mask hooked into each
           knocked-out layer, one full forward per spec (how the PyTorch anchor tools work); the dense
           masks are built before the clock starts (generous to the baseline)
  (b)      our own model with one full forward per spec (compiled once; spec values change only)

  python -m benchmarks.knockout_sweep [--frames=16 --repeats=3 --only=ours,b,a]

Also prints where our time goes: the clean run and the sweep of each knockout type alone.

Every way includes the vision tower in each full forward, as the anchor tools do. Our attention
kernel runs with 64 x 64 tiles here (--attention_block_size; the config default 512 suits
accelerators), in ours and (b) alike: both are fastest with it on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from jaxvlm import checkpoints, prompts
from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models.attention import Group

VIDEO_ID = 250
OPTION_IDS = np.asarray([11, 12, 13, 14], np.int32)


def mid_size_model(num_layers: int, seed: int = 0):
  """8 layers, hidden 256; SigLIP patch 14 at 196 px -> 14 x 14 grid -> 7 x 7 = 49 tokens per frame."""
  vision = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=196,
    patch_size=14,
    vision_use_head=False,
  )
  text = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=num_layers,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=4096,
  )
  config = transformers.LlavaOnevisionConfig(
    vision_config=vision, text_config=text, video_token_index=VIDEO_ID, image_token_index=VIDEO_ID - 1
  )
  torch.manual_seed(seed)
  hf = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
  hf.model.language_model.config._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = lo.LlavaOnevisionForConditionalGeneration(lo.LlavaOnevisionConfig.from_hf(config.to_dict()))
  params = checkpoints.convert_state_dict(
    'llava_onevision', {k: v.numpy() for k, v in hf.state_dict().items()}, lo.param_shapes(model)
  )
  return hf, model, jax.tree.map(jnp.asarray, params)


TEXT = ((Group.SYSTEM, 5), (Group.QUESTION, 20), (Group.OPTIONS, 16), (Group.LAST, 4))


def prompt(model, num_frames: int, seed: int = 0, text=TEXT):
  """ids [1, S], layout, answer index [1] of one prompt: text[0], the video, then text[1:] (group, length)."""
  rng = np.random.default_rng(seed)
  n_video = model.config.num_video_tokens(num_frames)
  parts = list(text[:1]) + [(Group.VIDEO, n_video)] + list(text[1:])
  group = np.concatenate([np.full(n, g) for g, n in parts]).astype(np.int32)
  ids = rng.integers(1, 240, size=len(group)).astype(np.int32)
  ids[group == Group.VIDEO] = VIDEO_ID
  frame = np.full(len(group), -1, np.int32)
  frame[group == Group.VIDEO] = np.append(np.arange(n_video - 1) // model.config.tokens_per_frame, -1)
  s = len(ids)
  layout = prompts.TokenLayout(
    group=jnp.asarray(group)[None],
    frame=jnp.asarray(frame)[None],
    positions=jnp.arange(s, dtype=jnp.int32)[None],
    valid=jnp.ones((1, s), bool),
  )
  return ids[None], layout, jnp.asarray([s - 1], jnp.int32)


def dense_masks(layout, spec) -> list[torch.Tensor | None]:
  """Per layer: an additive [1, 1, S, S] mask for the baseline's hook (None where the layer is clean)."""
  g, f = np.asarray(layout.group[0]), np.asarray(layout.frame[0])
  s = len(g)
  q, k = np.arange(s)[:, None], np.arange(s)[None]
  video = g == Group.VIDEO
  framed = video & (f >= 0)
  masks = []
  for l in range(spec.block.shape[0]):
    if not (spec.block[l].any() or spec.cross_frame[l] or spec.same_frame[l] or spec.frames[l].any()):
      masks.append(None)
      continue
    off = spec.block[l][g[:, None], g[None]]
    pair = framed[:, None] & framed[None]
    off |= spec.cross_frame[l] & pair & (f[:, None] != f[None])
    off |= spec.same_frame[l] & pair & (f[:, None] == f[None])
    ok = (k <= q) & ~off | (k == q)
    masks.append(torch.from_numpy(np.where(ok, 0.0, np.finfo(np.float32).min)[None, None].astype(np.float32)))
  return masks


def with_attention_block(model, block_size: int):
  """`model` whose attention kernel uses block_size x block_size tiles (0: keep the config's)."""
  if not block_size:
    return model
  text = dataclasses.replace(model.config.text, attention_block_size=block_size)
  return dataclasses.replace(model, config=dataclasses.replace(model.config, text=text))


def time_it(fn, repeats: int) -> float:
  fn()  # warm-up: compile / allocate
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--frames', type=int, default=16)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--only', default='ours,b,a', help='comma-separated subset of ours,b,a to time')
  parser.add_argument(
    '--attention_block_size',
    type=int,
    default=64,
    help='query/key tile of our attention kernel, ours and (b) alike (64 suits a CPU '
    'cache; 0: the config default, 512)',
  )
  args = parser.parse_args()
  only = set(args.only.split(','))
  torch.set_num_threads(max(1, torch.get_num_threads()))
  hf, model, params = mid_size_model(args.layers)
  model = with_attention_block(model, args.attention_block_size)
  ids, layout, answer = prompt(model, args.frames)
  px = np.random.default_rng(1).normal(size=(1, args.frames, 196, 196, 3)).astype(np.float32)
  sw = knockout.build_sweep(args.layers, args.frames)
  specs = jax.tree.map(jnp.asarray, sw.specs)
  print(
    f'prompt S = {ids.shape[1]} ({args.frames} frames x {model.config.tokens_per_frame} tokens), '
    f'{args.layers} layers, hidden 256; sweep of {len(sw)} specs'
  )

  def ours():
    clean = sweep.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)
    return np.asarray(sweep.run_sweep(model, params, clean, layout, answer, OPTION_IDS, specs))

  @jax.jit
  def full_forward(params, ids, px, spec):
    out = model.apply({'params': params}, ids, px, layout.positions, layout.meta(), spec=spec)
    return prompts.option_logprobs(model, params, out.hidden[0, -1], OPTION_IDS)

  def ours_one_per_spec():
    return np.stack(
      [np.asarray(full_forward(params, ids, px, jax.tree.map(lambda x: x[n], specs))) for n in range(len(sw))]
    )

  per_spec_masks = [dense_masks(layout, jax.tree.map(lambda x: np.asarray(x)[n], sw.specs)) for n in range(len(sw))]
  layers = hf.model.language_model.layers
  tids, tpx = torch.from_numpy(ids).long(), torch.from_numpy(px.transpose(0, 1, 4, 2, 3).copy())

  def transformers_hooks():
    out = []
    for masks in per_spec_masks:
      handles = []
      for layer, mask in zip(layers, masks):
        if mask is not None:

          def hook(module, a, kw, mask=mask):
            kw['attention_mask'] = mask
            return a, kw

          handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
      with torch.no_grad():
        logits = hf(input_ids=tids, pixel_values_videos=tpx).logits[0, -1]
      for h in handles:
        h.remove()
      out.append(torch.log_softmax(logits, -1)[OPTION_IDS].numpy())
    return np.stack(out)

  if {'a', 'ours'} <= only:
    reference = transformers_hooks()
    print(f'max |ours - transformers| over the sweep: {np.abs(ours()[:, 0] - reference).max():.2e}')
  times = {}
  if 'ours' in only:
    times['ours'] = time_it(ours, args.repeats)
    print(f'ours (reuse, batched specs):            {times["ours"]:8.3f} s')
    print_breakdown(model, params, ids, px, layout, answer, sw, args.repeats)
  if 'b' in only:
    times['b'] = time_it(ours_one_per_spec, args.repeats)
    print(f'(b) ours, one full forward per spec:    {times["b"]:8.3f} s')
  if 'a' in only:
    times['a'] = time_it(transformers_hooks, max(1, args.repeats - 2))
    print(f'(a) transformers dense-mask hooks:      {times["a"]:8.3f} s')
  for key, goal in (('b', 3), ('a', 10)):
    if 'ours' in times and key in times:
      print(f'ratio ({key}) / ours: {times[key] / times["ours"]:6.1f}x (goal >= {goal}x)')


def print_breakdown(model, params, ids, px, layout, answer, sw, repeats: int):
  """Times the clean run and, from it, the sweep of each knockout type alone."""
  clean = sweep.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)
  t_clean = time_it(
    lambda: jax.block_until_ready(sweep.clean_run(model, params, ids, px, layout, answer, OPTION_IDS)), repeats
  )
  parts = [f'clean run {t_clean:.3f} s']
  for kind in knockout.KINDS:
    chosen = np.asarray([e.kind == kind for e in sw.entries])
    specs = jax.tree.map(lambda x: jnp.asarray(x[chosen]), sw.specs)
    t = time_it(
      lambda: jax.block_until_ready(sweep.run_sweep(model, params, clean, layout, answer, OPTION_IDS, specs)), repeats
    )
    parts.append(f'{kind} ({chosen.sum()} specs) {t:.3f} s')
  print('  of which: ' + ', '.join(parts))


if __name__ == '__main__':
  main()
