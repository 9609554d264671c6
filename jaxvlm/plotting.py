"""matplotlib set up once for every plot the library writes: the Agg backend (no display needed on a
TPU VM or in CI) and one way to save a figure."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ['plt', 'save_figure']


def save_figure(fig, workdir: str, name: str, dpi: int = 120) -> str:
  """Lays out, writes workdir/name as PNG, closes the figure; returns the path."""
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
