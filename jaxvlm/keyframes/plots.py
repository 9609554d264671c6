"""PNG plots of the keyframe diagnosis: accuracy vs k and recall@k vs k per selector, and strips of
candidate frames with the causal oracle's and SigLIP's scores drawn under them."""

from __future__ import annotations

import numpy as np

from jaxvlm import video
from jaxvlm.plotting import plt, save_figure

STYLE = {
  'oracle_top': ('black', '-'),
  'oracle_bottom': ('grey', '-'),
  'answer_free_top': ('black', ':'),
  'attention_top': ('tab:brown', '-'),
  'siglip_q': ('tab:blue', '-'),
  'siglip_qo': ('tab:cyan', '-'),
  'bolt': ('tab:orange', '-'),
  'aks': ('tab:green', '-'),
  'uniform': ('tab:purple', '--'),
  'random': ('tab:pink', '--'),
  'learned': ('tab:olive', '-'),
}  # a colour of its own: None
# would take the first of the default cycle, tab:blue, which SigLIP q already has


def _by_selector(rows: list[dict], key: str) -> dict[str, list[tuple[int, float]]]:
  out: dict[str, list[tuple[int, float]]] = {}
  for r in rows:
    out.setdefault(r['selector'], []).append((r['k'], r[key]))
  return {name: sorted(pts) for name, pts in out.items()}


def _lines(ax, rows: list[dict], key: str, bands: bool = False) -> None:
  """A line per selector over k; with bands, its rows' `<key>_low` / `<key>_high` interval shaded."""
  for name, pts in _by_selector(rows, key).items():
    colour, ls = STYLE.get(name, (None, '-'))
    (line,) = ax.plot(*zip(*pts), marker='o', color=colour, ls=ls, label=name)
    own = sorted((r['k'], r.get(key + '_low'), r.get(key + '_high')) for r in rows if r['selector'] == name)
    if bands and all(lo is not None and hi is not None for _, lo, hi in own):
      band_ks, lows, highs = zip(*own)
      ax.fill_between(band_ks, lows, highs, color=line.get_color(), alpha=0.12, lw=0)
  ks = sorted({r['k'] for r in rows})
  ax.set_xscale('log', base=2)
  ax.set_xticks(ks, [str(k) for k in ks])


def accuracy_vs_k(rows: list[dict], header: dict, workdir: str) -> str:
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  _lines(ax, rows, 'accuracy', bands=True)
  ax.axhline(header['clean_accuracy'], color='black', lw=0.8, ls='--', label='all candidates')
  if 'clean_accuracy_low' in header:
    ax.axhspan(header['clean_accuracy_low'], header['clean_accuracy_high'], color='black', alpha=0.06, lw=0)
  ax.axhline(header['text_only_accuracy'], color='red', lw=0.8, ls='--', label='no frames (text only)')
  ax.set(
    xlabel='frames seen (k)',
    ylabel='accuracy',
    title=f"Video-LLM accuracy with the k selected frames (n={header['num_samples']}; bands: 95 % CI)",
  )
  ax.legend(fontsize=7, ncol=2)
  return save_figure(fig, workdir, 'accuracy_vs_k.png')


def recall_vs_k(rows: list[dict], header: dict, workdir: str) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  _lines(axes[0], rows, 'recall_oracle')
  axes[0].set(xlabel='k', ylabel='recall@k', title="vs the causal oracle's top-k")
  has_evidence = any(np.isfinite(r['recall_evidence']) for r in rows)
  if has_evidence:
    _lines(axes[1], rows, 'recall_evidence')
  axes[1].set(xlabel='k', title='vs ground-truth evidence frames' + ('' if has_evidence else ' (none)'))
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"recall@k = |selected & reference| / min(k, |reference|), n={header['num_samples']}")
  return save_figure(fig, workdir, 'recall_vs_k.png')


def _unit(x) -> np.ndarray:
  """Min-max to [0, 1] so scores of different units share an axis."""
  x = np.asarray(x, np.float64)
  span = x.max() - x.min()
  return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def frame_strips(records: list[dict], workdir: str, num: int) -> str | None:
  """For `num` successful samples (the first of each task in turn, so the strips show different
  tasks): the candidate frames in a row, and under them the causal oracle and SigLIP (question)
  scores, each min-max scaled; evidence frames marked."""
  by_task: dict[str, list[dict]] = {}
  for r in records:
    if 'error' not in r:
      by_task.setdefault(r['task'], []).append(r)
  ok = [
    r
    for rank in range(max(map(len, by_task.values()), default=0))
    for group in by_task.values()
    if rank < len(group)
    for r in [group[rank]]
  ][:num]
  if not ok:
    return None
  fig, axes = plt.subplots(2 * len(ok), 1, figsize=(12, 2.6 * len(ok)), squeeze=False)
  for i, r in enumerate(ok):
    frames = video.read_frames(r['video'], r['candidates']).pixels  # [N, h, w, 3]
    n = len(frames)
    strip, bars = axes[2 * i, 0], axes[2 * i + 1, 0]
    strip.imshow(np.concatenate(list(frames), axis=1), extent=(-0.5, n - 0.5, 0, 1), aspect='auto')
    strip.set(yticks=[], xticks=[], title=f"{r['id']} ({r['task']}): answer {'ABCDEFGHIJ'[r['answer']]}")
    x = np.arange(n)
    bars.bar(x - 0.2, _unit(r['scores']['causal']), width=0.4, color='black', label='causal oracle')
    bars.bar(x + 0.2, _unit(r['scores']['siglip_q']), width=0.4, color='tab:blue', label='SigLIP (question)')
    for e in r['evidence']:
      bars.axvspan(e - 0.5, e + 0.5, color='gold', alpha=0.3, lw=0, zorder=0)
    bars.set(xlim=(-0.5, n - 0.5), ylim=(0, 1.05), xticks=x[:: max(n // 16, 1)], ylabel='scaled score')
    if i == 0:
      bars.legend(fontsize=7, loc='upper right')
  return save_figure(fig, workdir, 'frame_strips.png')


def diagnosis_plots(summary: dict, records: list[dict], workdir: str, strip_samples: int) -> list[str]:
  """Every plot of the diagnosis; returns the written paths (none when no sample succeeded)."""
  if not summary['rows']:
    return []
  written = [
    accuracy_vs_k(summary['rows'], summary['header'], workdir),
    recall_vs_k(summary['rows'], summary['header'], workdir),
  ]
  strips = frame_strips(records, workdir, strip_samples)
  return written + ([strips] if strips else [])
