"""Per-task and official accuracy tables with intervals, for any experiment's per-sample correctness.

Letters: N conditions (clean, knockout specs, selectors at k), B samples.

`score_rows(benchmark, tasks, metas, correct)` gives one row per (condition, group). Groups are
  - overall: every sample, pooled;
  - task: each task / question type (MVBench task, Video-MME task_type, NExT-QA type, ...);
  - official: the numbers each benchmark reports (OFFICIAL below);
each with its bootstrap 95 % interval and, for every condition but the base (clean), the paired change
against the base with its interval and the exact McNemar p-value.

OFFICIAL, as each benchmark's own evaluation reports it:
  mvbench          the mean over tasks of the task accuracies ('mean over tasks')
  videomme         accuracy by video duration: short, medium, long (and overall)
  egoschema        the public 500-question subset, and the full set (as far as answers are known)
  nextqa           accuracy by question family: causal (CW, CH), temporal (TN, TC, TP), descriptive
                   (DC, DL, DO, DB) (and overall)
  longvideobench   accuracy by duration group (15, 60, 600, 3600 s) (and overall)
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxvlm import stats

NEXTQA_FAMILIES = {'C': 'causal', 'T': 'temporal', 'D': 'descriptive'}
VIDEOMME_DURATIONS = ('short', 'medium', 'long')


@dataclasses.dataclass(frozen=True)
class Group:
  """Samples one row scores: kind 'overall' | 'task' | 'official', a name, the member indices [M]
  and, for a macro statistic (mean over strata), the stratum label of each member [M]."""

  kind: str
  name: str
  members: np.ndarray
  macro_strata: np.ndarray | None = None


def _where(mask) -> np.ndarray:
  return np.flatnonzero(np.asarray(mask, bool))


def benchmark_groups(benchmark: str, tasks: Sequence[str], metas: Sequence[Mapping[str, str]]) -> list[Group]:
  """The overall, per-task and official groups of B samples with these tasks and meta fields."""
  task_of = np.asarray([str(t) for t in tasks])  # [B]
  if len(metas) != len(task_of):
    raise ValueError(f'{len(task_of)} tasks but {len(metas)} metas: one each per sample')
  everyone = np.arange(len(task_of))
  groups = [Group('overall', 'overall', everyone)]
  groups += [Group('task', t, _where(task_of == t)) for t in dict.fromkeys(task_of.tolist())]
  meta = lambda key: np.asarray([str(m.get(key, '')) for m in metas])
  name = benchmark.lower()
  if name == 'mvbench':
    groups.append(Group('official', 'mean over tasks', everyone, macro_strata=task_of))
  elif name == 'videomme':
    durations = meta('duration')
    groups += [Group('official', d, _where(durations == d)) for d in VIDEOMME_DURATIONS if (durations == d).any()]
  elif name == 'egoschema':
    groups += [Group('official', 'subset', _where(meta('subset') == 'true')), Group('official', 'full', everyone)]
  elif name == 'nextqa':
    family = np.asarray([t[:1].upper() for t in task_of])
    groups += [
      Group('official', label, _where(family == letter))
      for letter, label in NEXTQA_FAMILIES.items()
      if (family == letter).any()
    ]
  elif name == 'longvideobench':
    durations = meta('duration_group')
    numeric = lambda d: float(d) if d.replace('.', '', 1).isdigit() else float('inf')
    groups += [
      Group('official', f'duration {d}', _where(durations == d))
      for d in sorted(set(durations.tolist()) - {''}, key=numeric)
    ]
  return [g for g in groups if g.members.size]


def score_rows(
  benchmark: str,
  tasks: Sequence[str],
  metas: Sequence[Mapping[str, str]],
  correct: Mapping[str, np.ndarray],
  base: str = 'clean',
  num_resamples: int = stats.DEFAULT_RESAMPLES,
  seed: int = 0,
) -> list[dict]:
  """One row per (condition, group): n, accuracy with its interval; for conditions other than `base`
  the paired change against it, its interval and the McNemar p-value.

  Args:
    correct: condition name -> bool [B] (same samples, same order as tasks / metas); must hold `base`.
  """
  if base not in correct:
    raise ValueError(f'base condition {base!r} is not among {sorted(correct)[:5]}...')
  names = list(correct)
  matrix = np.stack([np.asarray(correct[n], bool) for n in names])  # [N, B]
  if matrix.shape[1] != len(tasks):
    raise ValueError(f'correctness is over {matrix.shape[1]} samples, tasks over {len(tasks)}')
  base_row = matrix[names.index(base)]
  rows = []
  for group in benchmark_groups(benchmark, tasks, metas):
    x, b = matrix[:, group.members], base_row[group.members]
    macro = group.macro_strata is not None
    strata = group.macro_strata[group.members] if group.macro_strata is not None else None
    kw: dict[str, Any] = dict(strata=strata, macro=macro, num_resamples=num_resamples, seed=seed)
    acc = stats.accuracy_interval(x, **kw)
    change = stats.paired_change_interval(b, x, **kw)
    # x is [N, B], so every field is an array [N] (np.asarray only tells the type checker).
    acc_est, acc_low, acc_high = np.asarray(acc.estimate), np.asarray(acc.low), np.asarray(acc.high)
    change_est, change_low, change_high = (np.asarray(x) for x in (change.estimate, change.low, change.high))
    p = np.asarray(stats.mcnemar_exact(b, x))  # [N]
    for i, name in enumerate(names):
      row = {
        'condition': name,
        'group_kind': group.kind,
        'group': group.name,
        'n': int(group.members.size),
        'accuracy': float(acc_est[i]),
        'accuracy_low': float(acc_low[i]),
        'accuracy_high': float(acc_high[i]),
      }
      if name != base:
        row.update(
          change=float(change_est[i]),
          change_low=float(change_low[i]),
          change_high=float(change_high[i]),
          mcnemar_p=float(p[i]),
        )
      rows.append(row)
  return rows


def find_row(rows: Sequence[dict], condition: str, group: str = 'overall', kind: str | None = None) -> dict:
  """The row of (condition, group); raises KeyError naming both when there is none."""
  for r in rows:
    if r['condition'] == condition and r['group'] == group and (kind is None or r['group_kind'] == kind):
      return r
  raise KeyError(f'no score row for condition {condition!r}, group {group!r}')


SCORE_COLUMNS = (
  'condition',
  'group_kind',
  'group',
  'n',
  'accuracy',
  'accuracy_low',
  'accuracy_high',
  'change',
  'change_low',
  'change_high',
  'mcnemar_p',
)


def split_failures(records: Sequence[dict]) -> tuple[list[dict], dict]:
  """Sample records -> (the successful ones sorted by id, a summary header with num_samples, num_failed
  and failures [{id, error}]). By id: worker threads finish samples out of order, and score-row group
  order and bootstrap resamples must not depend on it."""
  records = sorted(records, key=lambda r: r['id'])
  ok = [r for r in records if 'error' not in r]
  header = {
    'num_samples': len(ok),
    'num_failed': len(records) - len(ok),
    'failures': [{'id': r['id'], 'error': r['error']} for r in records if 'error' in r],
  }
  return ok, header


def official_line(header: Mapping) -> list[str]:
  """The summary header's official aggregates of clean as one text line ([] when it has none):
  'MVBench (clean): <group> <acc> [<low>, <high>] (n=<n>), ...'."""
  official = [r for r in header.get('scores', []) if r['condition'] == 'clean' and r['group_kind'] == 'official']
  if not official:
    return []
  return [
    f"{header.get('benchmark')} (clean): "
    + ', '.join(
      f"{r['group']} {r['accuracy']:.4f} [{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}] (n={r['n']})"
      for r in official
    )
  ]


def fixed_width_lines(rows: Sequence[Mapping], cols: Sequence[str], width: int) -> list[str]:
  """A text table of `cols` of each row, right-aligned in `width` characters: floats with 4 decimals,
  anything else (a missing column too) as str; the first line names the columns."""
  cell = lambda v: f'{v:>{width}.4f}' if isinstance(v, (float, np.floating)) else f'{str(v):>{width}}'
  return [' '.join(f'{c:>{width}}' for c in cols)] + [' '.join(cell(r.get(c)) for c in cols) for r in rows]


def write_csv(path: str, rows: Sequence[dict]) -> str:
  """The score rows as a csv (the base condition's change columns left empty); atomic."""
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=SCORE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)
  return path
