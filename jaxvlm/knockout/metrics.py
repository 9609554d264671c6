"""Knockout metrics from option log-probabilities, the summary of a run's records, and its table.

Letters: N specs, B samples, O options.
"""
from __future__ import annotations

import numpy as np

from jaxvlm.knockout.specs import Sweep


def knockout_metrics(clean_logp: np.ndarray, spec_logp: np.ndarray, answers: np.ndarray) -> dict:
  """Per spec: accuracy, performance ratio (accuracy / clean accuracy), mean change of the correct
  option's log-probability, and the fraction of predictions that flip.

  clean_logp [B, O], spec_logp [N, B, O], answers [B] (option index). Returns arrays of [N] plus the
  clean accuracy (a scalar). A clean accuracy of 0 gives a NaN performance ratio, not a crash.
  """
  clean_logp, spec_logp, answers = np.asarray(clean_logp), np.asarray(spec_logp), np.asarray(answers)
  if spec_logp.shape[1:] != clean_logp.shape or answers.shape != clean_logp.shape[:1]:
    raise ValueError(f'shapes disagree: clean {clean_logp.shape}, specs {spec_logp.shape}, '
                     f'answers {answers.shape}')
  rows = np.arange(len(answers))
  clean_pred = clean_logp.argmax(-1)
  pred = spec_logp.argmax(-1)                                   # [N, B]
  clean_acc = float((clean_pred == answers).mean())
  acc = (pred == answers[None]).mean(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratio = acc / clean_acc if clean_acc > 0 else np.full_like(acc, np.nan)
  delta = (spec_logp[:, rows, answers] - clean_logp[rows, answers][None]).mean(axis=1)
  flips = (pred != clean_pred[None]).mean(axis=1)
  return {'clean_accuracy': clean_acc, 'accuracy': acc, 'performance_ratio': ratio,
          'delta_logp_correct': delta, 'flip_rate': flips}


def summarize(records: list[dict], sw: Sweep) -> dict:
  """Per-spec metrics over the successful samples of a run's records; failures counted."""
  ok = [r for r in records if 'error' not in r]
  header = {'num_samples': len(ok), 'num_failed': len(records) - len(ok),
            'failures': [{'id': r['id'], 'error': r['error']} for r in records if 'error' in r]}
  if not ok:
    return {'header': {**header, 'clean_accuracy': None}, 'rows': []}
  width = max(len(r['clean']) for r in ok)
  pad = lambda x: np.pad(np.asarray(x, np.float64), (0, width - len(x)), constant_values=-np.inf)
  clean = np.stack([pad(r['clean']) for r in ok])
  specs = np.stack([np.stack([pad(r['specs'][e.name]) for r in ok]) for e in sw.entries])
  answers = np.asarray([r['answer'] for r in ok])
  m = knockout_metrics(clean, specs, answers)
  rows = [{'name': e.name, 'setting': e.setting, 'kind': e.kind, 'first_layer': e.layers[0] + 1,
           'last_layer': e.layers[-1] + 1, 'layer_ratio': e.layer_ratio,
           'accuracy': m['accuracy'][k], 'performance_ratio': m['performance_ratio'][k],
           'delta_logp_correct': m['delta_logp_correct'][k], 'flip_rate': m['flip_rate'][k]}
          for k, e in enumerate(sw.entries)]
  return {'header': {**header, 'clean_accuracy': m['clean_accuracy']}, 'rows': rows}


def format_table(summary: dict) -> str:
  """Summary rows as a fixed-width text table, headed by clean accuracy and failure counts."""
  h = summary['header']
  lines = [f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy: "
           f"{h['clean_accuracy'] if h['clean_accuracy'] is None else round(h['clean_accuracy'], 4)}"]
  cols = ['name', 'accuracy', 'performance_ratio', 'delta_logp_correct', 'flip_rate']
  lines.append(' '.join(f'{c:>20}' for c in cols))
  for r in summary['rows']:
    lines.append(' '.join(f'{r[c]:>20.4f}' if isinstance(r[c], float) else f'{str(r[c]):>20}' for c in cols))
  return '\n'.join(lines)
