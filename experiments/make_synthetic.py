"""Writes the synthetic video-QA world: train/val/test splits of H.264 videos, MVBench-style
annotations with evidence frames, and per-frame captions.

  python -m experiments.make_synthetic --out=DIR --num=N --seed=S [--num_eval=M]
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from jaxvlm.data import synthetic


def main(argv):
  del argv
  f = flags.FLAGS
  num_eval = f.num_eval if f.num_eval is not None else max(f.num // 5, 5)
  for split in f.splits:
    num = f.num if split == 'train' else num_eval
    start = time.perf_counter()
    synthetic.generate(os.path.join(f.out, split), num, f.seed, f.num_frames, f.size, split=split, fps=f.fps)
    seconds = time.perf_counter() - start
    print(
      f'{split}: {num} videos in {seconds:.1f} s ({num / max(seconds, 1e-9):.1f} videos/s) '
      f'-> {os.path.join(f.out, split)}'
    )


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'Output directory; one subdirectory per split.', required=True)
  flags.DEFINE_integer('num', 1000, 'Items in the train split.')
  flags.DEFINE_integer('num_eval', None, 'Items in val and test each (default: num // 5, at least 5).')
  flags.DEFINE_integer('seed', 0, 'Seed; splits derive distinct streams from it.')
  flags.DEFINE_list('splits', list(synthetic.SPLITS), 'Splits to write.')
  flags.DEFINE_integer('num_frames', 32, 'Frames per video.')
  flags.DEFINE_integer('size', 64, 'Frame height and width (even).')
  flags.DEFINE_integer('fps', 8, 'Frame rate written into the mp4.')
  app.run(main)
