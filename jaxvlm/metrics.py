"""Knockout metrics from option log-probabilities.

Letters: N specs, B samples, O options.
"""
from __future__ import annotations

import numpy as np


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
