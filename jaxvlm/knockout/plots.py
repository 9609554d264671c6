"""PNG plots of a knockout summary: global 1, global 2 and fine-grained windows (layers 1-based)."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from jaxvlm.plotting import plt, save_figure

KIND_COLOURS = {'LV': 'tab:red', 'VT': 'tab:blue', 'VS': 'tab:green'}
KIND_NAMES = {'LV': 'Language-to-Video', 'VT': 'Video Temporal', 'VS': 'Video Spatial'}


def _band(ax, xs, lows, highs, colour) -> None:
  """The 95 % interval around a line (skipped where a summary has no intervals)."""
  if all(v is not None for v in (*lows, *highs)):
    ax.fill_between(xs, lows, highs, color=colour, alpha=0.18, lw=0)


def _kind_curves(ax, rows: list[dict], kinds: list[str], point) -> None:
  """One line per knockout kind through point(row) = (x, y, low, high) of its rows, sorted by x, with
  the interval band."""
  for kind in kinds:
    pts = sorted(point(r) for r in rows if r['kind'] == kind)
    if pts:
      x, y, lo, hi = zip(*pts)
      ax.plot(x, y, marker='o', color=KIND_COLOURS.get(kind), label=KIND_NAMES.get(kind, kind))
      _band(ax, x, lo, hi, KIND_COLOURS.get(kind))


def knockout_plots(rows: list[dict], header: dict, workdir: str) -> list[str]:
  """global1: performance ratio vs layer ratio; global2: per-type bars; fine: per-window accuracy
  change; fine_task_change: the per-task heatmap. Shaded bands and error bars are bootstrap 95 %
  intervals (paired with clean). Layers are 1-based. Returns the written paths."""
  written = []
  by_setting = lambda s: [r for r in rows if r['setting'] == s]
  kinds = list(dict.fromkeys(r['kind'] for r in rows))
  title = f"clean accuracy {header.get('clean_accuracy') or 0:.3f}, n={header.get('num_samples')}"

  if by_setting('global1'):
    fig, ax = plt.subplots(figsize=(6, 4))
    point = lambda r: (
      r['layer_ratio'],
      r['performance_ratio'],
      r.get('performance_ratio_low'),
      r.get('performance_ratio_high'),
    )
    _kind_curves(ax, by_setting('global1'), kinds, point)
    ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.set(
      xlabel='layer ratio (layers left clean / L)',
      ylabel='performance ratio (acc / clean acc)',
      title=f'Global 1: knockout from layer i up (bands: 95 % CI)\n{title}',
    )
    ax.legend()
    written.append(save_figure(fig, workdir, 'global1_performance_ratio.png'))

  if by_setting('global2'):
    fig, ax = plt.subplots(figsize=(5, 4))
    g2 = by_setting('global2')
    ratios = [r['performance_ratio'] for r in g2]
    err = None
    if all(r.get('performance_ratio_low') is not None for r in g2):
      err = [
        [v - r['performance_ratio_low'] for v, r in zip(ratios, g2)],
        [r['performance_ratio_high'] - v for v, r in zip(ratios, g2)],
      ]
    ax.bar(
      [KIND_NAMES.get(r['kind'], r['kind']) for r in g2],
      ratios,
      yerr=err,
      capsize=4,
      color=[KIND_COLOURS.get(r['kind']) for r in g2],
    )
    ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.set(ylabel='performance ratio', title=f'Global 2: one type in all layers (bars: 95 % CI)\n{title}')
    written.append(save_figure(fig, workdir, 'global2_performance_ratio.png'))

  if by_setting('fine'):
    fig, ax = plt.subplots(figsize=(7, 4))
    clean = header.get('clean_accuracy') or 0.0
    point = lambda r: (r['first_layer'], r['accuracy'] - clean, r.get('change_low'), r.get('change_high'))
    _kind_curves(ax, by_setting('fine'), kinds, point)
    ax.axhline(0.0, color='grey', lw=0.8, ls='--')
    width = by_setting('fine')[0]['last_layer'] - by_setting('fine')[0]['first_layer'] + 1
    ax.set(
      xlabel=f'first layer of the {width}-layer window (1-based)',
      ylabel='accuracy change',
      title=f'Fine-grained: sliding window (bands: 95 % CI)\n{title}',
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.legend()
    written.append(save_figure(fig, workdir, 'fine_accuracy_change.png'))
    heatmap = fine_task_heatmap(rows, header, workdir)
    if heatmap:
      written.append(heatmap)
  return written


def fine_task_heatmap(rows: list[dict], header: dict, workdir: str) -> str | None:
  """Accuracy change against clean per (fine-grained layer window x task), one panel per knockout
  type; a dot marks McNemar p < 0.05. Needs header['scores'] (per-task rows); None without them."""
  fine = [r for r in rows if r['setting'] == 'fine']
  scores = [s for s in header.get('scores', []) if s['group_kind'] == 'task' and 'change' in s]
  if not fine or not scores:
    return None
  tasks = list(dict.fromkeys(s['group'] for s in scores))
  by_key = {(s['condition'], s['group']): s for s in scores}
  kinds = list(dict.fromkeys(r['kind'] for r in fine))
  panels = []
  for kind in kinds:
    windows = sorted((r for r in fine if r['kind'] == kind), key=lambda r: r['first_layer'])
    change = np.array(
      [[by_key[(w['name'], t)]['change'] if (w['name'], t) in by_key else np.nan for t in tasks] for w in windows]
    )
    p = np.array(
      [[by_key[(w['name'], t)]['mcnemar_p'] if (w['name'], t) in by_key else np.nan for t in tasks] for w in windows]
    )
    panels.append((kind, windows, change, p))
  limit = max(float(np.nanmax(np.abs(c))) if np.isfinite(c).any() else 0.0 for _, _, c, _ in panels) or 1.0
  fig, axes = plt.subplots(
    1,
    len(panels),
    figsize=(
      1.2 + 0.45 * len(tasks) * len(panels) + 1.5 * len(panels),
      1.5 + 0.35 * max(len(w) for _, w, _, _ in panels),
    ),
    squeeze=False,
  )
  for ax, (kind, windows, change, p) in zip(axes[0], panels):
    image = ax.imshow(change, cmap='RdBu', vmin=-limit, vmax=limit, aspect='auto')
    rows_i, cols_i = np.nonzero(p < 0.05)
    ax.scatter(cols_i, rows_i, s=8, c='k', marker='o')
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha='right', fontsize=7)
    ax.set_yticks(range(len(windows)), [f"{w['first_layer']}-{w['last_layer']}" for w in windows], fontsize=7)
    ax.set(title=KIND_NAMES.get(kind, kind), ylabel='layers knocked out (1-based)')
    fig.colorbar(image, ax=ax, label='accuracy change vs clean')
  fig.suptitle(f"Fine-grained windows per task (dot: McNemar p < 0.05), n={header.get('num_samples')}")
  return save_figure(fig, workdir, 'fine_task_change.png')
