"""From knockout findings to an efficiency plan: parse and validate the plans of an efficiency run, pick
the cheapest plan a knockout run says is safe, and summarise a plan grid (accuracy, FLOPs, measured time,
memory, Pareto front).

Layers are 1-based in configs, names and tables (as the paper), 0-based in `InferencePlan`.

Choosing a plan from a knockout run (its summary.json): exit after layer e is Language-to-Video in the
layers above e, which is global-1's LV row whose first knocked layer is e + 1; within-frame layers 1..m
are Video Temporal there, which is the fine-grained VT window starting at layer 1 (m = its width) or, for
any m, global-2 VT (all layers). Candidates are the exits and within-frame depths whose knockout
accuracy is within max_drop of clean (no exit and m = 0 always qualify); the chosen plan is the cheapest
combination by analytical total prefill FLOPs (then attention FLOPs). The knockouts were measured one
at a time, so the combination's accuracy is what the efficiency run then measures, not a promise.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from jaxvlm import benchmark_scores, costs, plotting, runs, stats
from jaxvlm.models.efficient import InferencePlan


def plan_name(plan: InferencePlan, num_layers: int) -> str:
  """'exit18+wf8' style key (1-based): exit after e (L = none), within-frame layers 1..m."""
  exit_part = 'clean' if plan.exit_layer == num_layers and not plan.intra_frame_layers else f'exit{plan.exit_layer}'
  return exit_part + (f'+wf{plan.intra_frame_layers}' if plan.intra_frame_layers else '')


def parse_plans(text: str, num_layers: int) -> list[InferencePlan]:
  """'E:M,E:M' (1-based exit-after layer, within-frame layers) -> validated plans (ValueError naming
  the entry otherwise)."""
  out = []
  for item in runs.csv_list(text):
    try:
      e, m = (int(x) for x in item.split(':'))
    except ValueError:
      raise ValueError(f"plans entry {item!r}: expected 'exit_layer:intra_frame_layers', e.g. '5:2'") from None
    out.append(explicit_plan(e, m, num_layers))
  return out


def explicit_plan(exit_layer: int, intra_frame_layers: int, num_layers: int) -> InferencePlan:
  """A plan from 1-based config fields: exit after layer exit_layer (0..L), within-frame layers 1..M."""
  if not 0 <= exit_layer <= num_layers:
    raise ValueError(f'exit_layer {exit_layer} is outside the decoder stack: exit after a layer in 0..{num_layers}')
  if not 0 <= intra_frame_layers <= exit_layer:
    raise ValueError(
      f'intra_frame_layers {intra_frame_layers} lie above the exit: within-frame layers must be '
      f'in 1..exit_layer={exit_layer}'
    )
  return InferencePlan(exit_layer, intra_frame_layers).validate(num_layers)


def read_knockout_run(workdir: str, checkpoint: str, num_layers: int) -> dict:
  """summary.json of an experiments.knockout run made with `checkpoint` on a model of num_layers
  decoder layers; ValueError naming the file and both values otherwise."""
  config_path, summary_path = os.path.join(workdir, 'config.json'), os.path.join(workdir, 'summary.json')
  for path in (config_path, summary_path):
    if not os.path.exists(path):
      raise ValueError(f'knockout_workdir {workdir!r} holds no finished knockout run: {path} is missing')
  with open(config_path) as f:
    theirs = json.load(f).get('checkpoint')
  same = lambda a, b: os.path.abspath(a) == os.path.abspath(b) if os.path.exists(a) and os.path.exists(b) else a == b
  if not theirs or not same(theirs, checkpoint):
    raise ValueError(
      f'knockout_workdir {workdir!r} is a run of checkpoint {theirs!r}, this run scores '
      f'{checkpoint!r}: its knockout results say nothing about this model'
    )
  with open(summary_path) as f:
    summary = json.load(f)
  deepest = max((r['last_layer'] for r in summary.get('rows', [])), default=0)
  if deepest != num_layers:
    raise ValueError(f'{summary_path}: its knockouts reach layer {deepest}, this model has {num_layers} layers')
  if summary.get('clean_accuracy') is None:
    raise ValueError(f'{summary_path} has no clean accuracy (no successful samples)')
  return summary


def safe_choices(summary: dict, num_layers: int, max_drop: float) -> tuple[list[int], list[int], bool]:
  """(exits e whose global-1 LV accuracy is within max_drop of clean, plus L; within-frame depths m of
  fine VT windows starting at layer 1 within max_drop, plus 0; whether global-2 VT is within max_drop)."""
  floor = summary['clean_accuracy'] - max_drop - 1e-9
  rows = summary['rows']
  exits = sorted(
    {num_layers}
    | {r['first_layer'] - 1 for r in rows if r['setting'] == 'global1' and r['kind'] == 'LV' and r['accuracy'] >= floor}
  )
  depths = sorted(
    {0}
    | {
      r['last_layer']
      for r in rows
      if r['setting'] == 'fine' and r['kind'] == 'VT' and r['first_layer'] == 1 and r['accuracy'] >= floor
    }
  )
  vt_all = any(r['setting'] == 'global2' and r['kind'] == 'VT' and r['accuracy'] >= floor for r in rows)
  return exits, depths, vt_all


def choose_plan(summary: dict, model_config, shape: costs.PromptShape, max_drop: float) -> InferencePlan:
  """The cheapest plan (analytical total, then attention FLOPs of `shape`) among the safe choices."""
  num_layers = model_config.text.num_hidden_layers
  exits, depths, vt_all = safe_choices(summary, num_layers, max_drop)
  options = []
  for e in exits:
    for m in sorted(set(d for d in depths if d <= e) | ({e} if vt_all else set())):
      plan = InferencePlan(e, m)
      cost = costs.prefill_cost(model_config, plan, shape)
      options.append((cost.total, cost.attention, -e, plan))
  return min(options, key=lambda o: o[:3])[3]


def pareto_front(points: Sequence[tuple[float, float]]) -> np.ndarray:
  """bool [N]: points (seconds, accuracy) no other point beats on both (faster or as fast and at least as
  accurate, strictly better in one)."""
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  out = np.ones(len(pts), bool)
  for i, (t, a) in enumerate(pts):
    better = (pts[:, 0] <= t) & (pts[:, 1] >= a) & ((pts[:, 0] < t) | (pts[:, 1] > a))
    out[i] = not better.any()
  return out


def summarize(records: list[dict], costs_by_key: dict, timings: dict, clean_key: str) -> dict:
  """One row per (plan, selector, k): accuracy with its bootstrap 95 % interval (resampled within
  tasks, `jaxvlm.stats`), the paired change vs `clean_key` ('plan/selector/k' of the full model) with
  its interval, analytical FLOPs, measured prefill seconds and XLA's memory, the measured speedup vs
  clean, Pareto membership (accuracy vs measured time). Rows cover the successful samples scored under
  every key."""
  ok, header = benchmark_scores.split_failures(records)  # sorted by id
  keys = sorted({k for r in ok for k in r['logp']})
  ok = [r for r in ok if all(k in r['logp'] for k in keys)]
  tasks = np.asarray([r['task'] for r in ok])
  correct = {key: np.asarray([int(np.argmax(r['logp'][key])) == r['answer'] for r in ok]) for key in keys}
  rows = []
  for key in keys:
    plan, selector, k = key.split('/')
    acc = stats.accuracy_interval(correct[key], strata=tasks) if ok else None
    row = {
      'name': key,
      'plan': plan,
      'selector': selector,
      'k': int(k),
      'samples': len(ok),
      'accuracy': float(acc.estimate) if acc else float('nan'),
      'accuracy_low': float(acc.low) if acc else float('nan'),
      'accuracy_high': float(acc.high) if acc else float('nan'),
    }
    if clean_key in correct and ok:
      change = stats.paired_change_interval(correct[clean_key], correct[key], strata=tasks)
      row.update(change_vs_clean=float(change.estimate), change_low=float(change.low), change_high=float(change.high))
    cost, timing = costs_by_key[f'{plan}/{k}'], timings[f'{plan}/{k}']
    row.update(
      attention_gflops=cost['attention'] / 1e9,
      total_gflops=cost['total'] / 1e9,
      attention_share=cost['attention_share'],
      total_share=cost['total_share'],
      prefill_seconds=timing['seconds'],
      peak_memory_bytes=timing['peak_memory_bytes'],
    )
    rows.append(row)
  clean = next((r for r in rows if r['name'] == clean_key), None)
  for r in rows:
    r['measured_speedup'] = clean['prefill_seconds'] / r['prefill_seconds'] if clean else None
  front = pareto_front([(r['prefill_seconds'], r['accuracy']) for r in rows])
  for r, on in zip(rows, front):
    r['pareto'] = bool(on)
  return {'header': {**header, 'clean': clean_key}, 'rows': rows}


def format_table(summary: dict) -> str:
  h = summary['header']
  lines = [
    f"samples: {h['num_samples']}  failed: {h['num_failed']}  baseline: {h['clean']}",
    f"{'plan/selector/k':30s} {'acc':>6s} {'95% CI':>13s} {'vs clean':>8s} {'attn %':>7s} {'total %':>8s} "
    f"{'GFLOPs':>8s} {'prefill ms':>10s} {'speedup':>8s} {'mem MiB':>8s} pareto",
  ]
  for r in summary['rows']:
    lines.append(
      f"{r['name']:30s} {r['accuracy']:6.3f} [{r['accuracy_low']:.2f}, {r['accuracy_high']:.2f}] "
      f"{r.get('change_vs_clean', float('nan')):+8.3f} "
      f"{100 * r['attention_share']:6.1f}% {100 * r['total_share']:7.1f}% {r['total_gflops']:8.3f} "
      f"{1e3 * r['prefill_seconds']:10.2f} {r['measured_speedup']:7.2f}x "
      f"{r['peak_memory_bytes'] / 2**20:8.1f} {'*' if r['pareto'] else ''}"
    )
  return '\n'.join(lines)


def pareto_plot(summary: dict, workdir: str) -> str:
  """accuracy vs measured prefill time per (plan, selector, k), the Pareto front drawn through."""
  plt = plotting.plt
  rows = summary['rows']
  fig, ax = plt.subplots(figsize=(8, 5.5))
  markers = {'uniform': 'o', 'siglip': 's', 'learned': '^'}
  for r in rows:
    ax.errorbar(
      1e3 * r['prefill_seconds'],
      r['accuracy'],
      yerr=[[r['accuracy'] - r['accuracy_low']], [r['accuracy_high'] - r['accuracy']]],
      fmt=markers.get(r['selector'], 'o'),
      color='tab:red' if r['pareto'] else 'tab:gray',
      alpha=0.8,
      capsize=2,
      markersize=6,
    )
    ax.annotate(
      f"{r['plan']} k{r['k']} {r['selector']}",
      (1e3 * r['prefill_seconds'], r['accuracy']),
      fontsize=6,
      xytext=(3, 3),
      textcoords='offset points',
    )
  front = sorted((r for r in rows if r['pareto']), key=lambda r: r['prefill_seconds'])
  ax.plot(
    [1e3 * r['prefill_seconds'] for r in front],
    [r['accuracy'] for r in front],
    '-',
    color='tab:red',
    label='Pareto front',
  )
  ax.set_xlabel('measured prefill per sample (ms)')
  ax.set_ylabel('accuracy')
  ax.set_title('efficiency plans x frame budgets x selectors (markers: o uniform, s SigLIP, ^ learned)')
  ax.legend()
  ax.grid(alpha=0.3)
  return plotting.save_figure(fig, workdir, 'pareto.png')
