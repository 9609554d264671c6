"""Inference cost of the learned keyframe selector next to the SigLIP features it reads.

  python -m benchmarks.selector_cost [--siglip=assets/siglip_tiny --frames=32 --repeats=5 \
      --width=128 --depth=2]

Per sample: SigLIP embeds the N candidate frames and the question + options text (the features every
SigLIP-guided selector needs anyway); the selector then scores the N frames from those embeddings.
Timed in one process after a warm-up, interleaved in each of --repeats rounds so load from other
processes hits both alike; medians. Prints frames scored per second by each and the ratio
selector time / SigLIP feature time (the selector's overhead on top of SigLIP top-k).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import checkpoints
from jaxvlm.keyframes import selector_model, teacher


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--siglip', default='assets/siglip_tiny')
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--depth', type=int, default=2)
  args = parser.parse_args()

  sig_model, sig_params, sig_processor = checkpoints.load_pretrained(args.siglip)
  vision = sig_model.config.vision_config
  frames = np.random.default_rng(0).integers(
    0, 256, size=(args.frames, vision.image_size, vision.image_size, 3), dtype=np.uint8
  )
  text = 'What happens right after the red ball enters? A. it stops B. it bounces C. it splits D. it fades'
  image, txt = teacher.siglip_features(sig_model, sig_params, sig_processor, frames, text)
  model = selector_model.FrameSelector(selector_model.SelectorConfig(width=args.width, depth=args.depth))
  params = selector_model.init_params(model, args.frames, image.shape[-1])
  fns = {
    'siglip': lambda: teacher.siglip_features(sig_model, sig_params, sig_processor, frames, text),
    'selector': lambda: selector_model.batch_scores(
      model, params, jnp.asarray(image)[None], jnp.asarray(txt)[None]
    ).block_until_ready(),
  }
  times = {name: [] for name in fns}
  for fn in fns.values():
    fn()
  for _ in range(args.repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  med = {name: float(np.median(t)) for name, t in times.items()}
  num_params = sum(x.size for x in jax.tree.leaves(params))
  print(
    f'{args.frames} candidates, SigLIP {args.siglip} (width {image.shape[-1]}), selector width '
    f'{args.width} depth {args.depth} ({num_params} params), {args.repeats} rounds, backend '
    f'{jax.default_backend()}'
  )
  for name in fns:
    print(f'  {name:>8}: {med[name] * 1e3:9.3f} ms per sample  {args.frames / med[name]:12.0f} frames/s')
  print(f'  selector / SigLIP features time ratio: {med["selector"] / med["siglip"]:.4f}')


if __name__ == '__main__':
  main()
