"""PNG plots of a knockout summary: global 1, global 2 and fine-grained windows (layers 1-based)."""
from __future__ import annotations

from matplotlib.ticker import MaxNLocator

from jaxvlm.plotting import plt, save_figure

KIND_COLOURS = {'LV': 'tab:red', 'VT': 'tab:blue', 'VS': 'tab:green'}
KIND_NAMES = {'LV': 'Language-to-Video', 'VT': 'Video Temporal', 'VS': 'Video Spatial'}


def knockout_plots(rows: list[dict], header: dict, workdir: str) -> list[str]:
  """global1: performance ratio vs layer ratio; global2: per-type bars; fine: per-window accuracy
  change. Layers are 1-based. Returns the written paths."""
  written = []
  by_setting = lambda s: [r for r in rows if r['setting'] == s]
  kinds = list(dict.fromkeys(r['kind'] for r in rows))
  title = f"clean accuracy {header.get('clean_accuracy') or 0:.3f}, n={header.get('num_samples')}"

  if by_setting('global1'):
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in kinds:
      pts = sorted((r['layer_ratio'], r['performance_ratio']) for r in by_setting('global1') if r['kind'] == kind)
      if pts:
        ax.plot(*zip(*pts), marker='o', color=KIND_COLOURS.get(kind), label=KIND_NAMES.get(kind, kind))
    ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.set(xlabel='layer ratio (layers left clean / L)', ylabel='performance ratio (acc / clean acc)',
           title=f'Global 1: knockout from layer i up\n{title}')
    ax.legend()
    written.append(save_figure(fig, workdir, 'global1_performance_ratio.png'))

  if by_setting('global2'):
    fig, ax = plt.subplots(figsize=(5, 4))
    g2 = by_setting('global2')
    ax.bar([KIND_NAMES.get(r['kind'], r['kind']) for r in g2], [r['performance_ratio'] for r in g2],
           color=[KIND_COLOURS.get(r['kind']) for r in g2])
    ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.set(ylabel='performance ratio', title=f'Global 2: one type in all layers\n{title}')
    written.append(save_figure(fig, workdir, 'global2_performance_ratio.png'))

  if by_setting('fine'):
    fig, ax = plt.subplots(figsize=(7, 4))
    clean = header.get('clean_accuracy') or 0.0
    for kind in kinds:
      pts = sorted((r['first_layer'], r['accuracy'] - clean) for r in by_setting('fine') if r['kind'] == kind)
      if pts:
        ax.plot(*zip(*pts), marker='o', color=KIND_COLOURS.get(kind), label=KIND_NAMES.get(kind, kind))
    ax.axhline(0.0, color='grey', lw=0.8, ls='--')
    width = by_setting('fine')[0]['last_layer'] - by_setting('fine')[0]['first_layer'] + 1
    ax.set(xlabel=f'first layer of the {width}-layer window (1-based)', ylabel='accuracy change',
           title=f'Fine-grained: sliding window\n{title}')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.legend()
    written.append(save_figure(fig, workdir, 'fine_accuracy_change.png'))
  return written
