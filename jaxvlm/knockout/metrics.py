"""Knockout metrics from option log-probabilities, the summary of a run's records, and its table.

Letters: N specs, B samples, O options.

Summary rows name a spec with 1-based layers, as plots and tables for people do ('global1/LV/1-8' is
layers 1..8 knocked out); records in samples.jsonl keep the sweep's 0-based names, so old runs resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvlm import benchmark_scores, stats
from jaxvlm.knockout.specs import Sweep, SweepEntry


def knockout_metrics(clean_logp: np.ndarray, spec_logp: np.ndarray, answers: np.ndarray) -> dict:
  """Per spec: accuracy, performance ratio (accuracy / clean accuracy), mean change of the correct
  option's log-probability, and the fraction of predictions that flip.

  clean_logp [B, O], spec_logp [N, B, O], answers [B] (option index). Returns arrays of [N] plus the
  clean accuracy (a scalar). A clean accuracy of 0 gives a NaN performance ratio, not a crash.
  """
  clean_logp, spec_logp, answers = np.asarray(clean_logp), np.asarray(spec_logp), np.asarray(answers)
  if spec_logp.shape[1:] != clean_logp.shape or answers.shape != clean_logp.shape[:1]:
    raise ValueError(f'shapes disagree: clean {clean_logp.shape}, specs {spec_logp.shape}, answers {answers.shape}')
  rows = np.arange(len(answers))
  clean_pred = clean_logp.argmax(-1)
  pred = spec_logp.argmax(-1)  # [N, B]
  clean_acc = float((clean_pred == answers).mean())
  acc = (pred == answers[None]).mean(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratio = acc / clean_acc if clean_acc > 0 else np.full_like(acc, np.nan)
  delta = (spec_logp[:, rows, answers] - clean_logp[rows, answers][None]).mean(axis=1)
  flips = (pred != clean_pred[None]).mean(axis=1)
  return {
    'clean_accuracy': clean_acc,
    'accuracy': acc,
    'performance_ratio': ratio,
    'delta_logp_correct': delta,
    'flip_rate': flips,
  }


def display_name(entry: SweepEntry) -> str:
  """The spec's name with 1-based layers: 'global1/LV/1-8' for layers 0..7."""
  return f'{entry.setting}/{entry.kind}/{entry.layers[0] + 1}-{entry.layers[-1] + 1}'


def summarize(
  records: list[dict],
  sw: Sweep,
  benchmark: str = '',
  metas: Mapping[str, Mapping[str, str]] | None = None,
  num_resamples: int = stats.DEFAULT_RESAMPLES,
) -> dict:
  """Per-spec metrics over the successful samples of a run's records; failures counted.

  Every spec's row carries its accuracy's bootstrap 95 % interval, the paired change against clean
  (interval, exact McNemar p) and the performance ratio's interval. header['scores'] holds one row per
  (condition, group): overall, per task and the benchmark's official aggregates
  (`benchmark_scores`), for clean and every spec; `metas` (sample id -> VideoQASample.meta) supplies
  the fields those aggregates group by (Video-MME duration, ...).
  """
  ok, header = benchmark_scores.split_failures(records)  # sorted by id
  if not ok:
    return {'header': {**header, 'clean_accuracy': None}, 'rows': []}
  width = max(len(r['clean']) for r in ok)
  pad = lambda x: np.pad(np.asarray(x, np.float64), (0, width - len(x)), constant_values=-np.inf)
  clean = np.stack([pad(r['clean']) for r in ok])
  specs = np.stack([np.stack([pad(r['specs'][e.name]) for r in ok]) for e in sw.entries])
  answers = np.asarray([r['answer'] for r in ok])
  m = knockout_metrics(clean, specs, answers)
  clean_right = clean.argmax(-1) == answers  # [B]
  spec_right = specs.argmax(-1) == answers[None]  # [N, B]
  boot: dict[str, Any] = dict(num_resamples=num_resamples)
  acc = stats.accuracy_interval(spec_right, **boot)
  change = stats.paired_change_interval(clean_right, spec_right, **boot)
  ratio = stats.paired_ratio_interval(clean_right, spec_right, **boot)
  # [N, B] in, so every field is an array [N] (np.asarray only tells the type checker).
  acc_low, acc_high = np.asarray(acc.low), np.asarray(acc.high)
  change_est, change_low, change_high = (np.asarray(x) for x in (change.estimate, change.low, change.high))
  ratio_low, ratio_high = np.asarray(ratio.low), np.asarray(ratio.high)
  p = np.asarray(stats.mcnemar_exact(clean_right, spec_right))  # [N]
  clean_ci = stats.accuracy_interval(clean_right, **boot)
  names = [display_name(e) for e in sw.entries]
  rows = [
    {
      'name': names[k],
      'setting': e.setting,
      'kind': e.kind,
      'first_layer': e.layers[0] + 1,
      'last_layer': e.layers[-1] + 1,
      'layer_ratio': e.layer_ratio,
      'accuracy': m['accuracy'][k],
      'accuracy_low': acc_low[k],
      'accuracy_high': acc_high[k],
      'change': change_est[k],
      'change_low': change_low[k],
      'change_high': change_high[k],
      'mcnemar_p': p[k],
      'performance_ratio': m['performance_ratio'][k],
      'performance_ratio_low': ratio_low[k],
      'performance_ratio_high': ratio_high[k],
      'delta_logp_correct': m['delta_logp_correct'][k],
      'flip_rate': m['flip_rate'][k],
    }
    for k, e in enumerate(sw.entries)
  ]
  metas = metas or {}
  scores = benchmark_scores.score_rows(
    benchmark,
    [r.get('task', '') for r in ok],
    [metas.get(r['id'], {}) for r in ok],
    {'clean': clean_right, **dict(zip(names, spec_right))},
    **boot,
  )
  return {
    'header': {
      **header,
      'benchmark': benchmark,
      'clean_accuracy': m['clean_accuracy'],
      'clean_accuracy_low': clean_ci.low,
      'clean_accuracy_high': clean_ci.high,
      'scores': scores,
    },
    'rows': rows,
  }


def format_table(summary: dict) -> str:
  """Summary rows as a fixed-width text table, headed by clean accuracy (95 % interval), failure counts
  and the benchmark's official aggregates of clean."""
  h = summary['header']
  if h['clean_accuracy'] is None:
    return f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy: None"
  lines = [
    f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy: {h['clean_accuracy']:.4f} "
    f"[{h['clean_accuracy_low']:.4f}, {h['clean_accuracy_high']:.4f}]"
  ]
  lines += benchmark_scores.official_line(h)
  cols = [
    'name',
    'accuracy',
    'accuracy_low',
    'accuracy_high',
    'change',
    'mcnemar_p',
    'performance_ratio',
    'delta_logp_correct',
    'flip_rate',
  ]
  lines += benchmark_scores.fixed_width_lines(summary['rows'], cols, 18)
  return '\n'.join(lines)
