"""Writes the synthetic video-QA world: train/val/test splits of H.264 videos, MVBench-style
annotations with evidence frames, and per-frame captions.

  python -m experiments.make_synthetic --out=DIR --num=N --seed=S [--num_eval=M]
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags

from jaxvlm.data import synthetic

_OUT = flags.DEFINE_string('out', None, 'Output directory; one subdirectory per split.',
                           required=True)
_NUM = flags.DEFINE_integer('num', 1000, 'Items in the train split.')
_NUM_EVAL = flags.DEFINE_integer('num_eval', None, 'Items in val and test each '
                                 '(default: num // 5, at least 5).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed; splits derive distinct streams from it.')
_SPLITS = flags.DEFINE_list('splits', list(synthetic.SPLITS), 'Splits to write.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 32, 'Frames per video.')
_SIZE = flags.DEFINE_integer('size', 64, 'Frame height and width (even).')
_FPS = flags.DEFINE_integer('fps', 8, 'Frame rate written into the mp4.')


def main(argv):
  del argv
  num_eval = _NUM_EVAL.value if _NUM_EVAL.value is not None else max(_NUM.value // 5, 5)
  for split in _SPLITS.value:
    num = _NUM.value if split == 'train' else num_eval
    start = time.perf_counter()
    synthetic.generate(os.path.join(_OUT.value, split), num, _SEED.value, _NUM_FRAMES.value,
                       _SIZE.value, split=split, fps=_FPS.value)
    seconds = time.perf_counter() - start
    print(f'{split}: {num} videos in {seconds:.1f} s ({num / max(seconds, 1e-9):.1f} videos/s) '
          f'-> {os.path.join(_OUT.value, split)}')


if __name__ == '__main__':
  app.run(main)
