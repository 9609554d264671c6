"""A run's clean answers as lmms-eval writes them, so our accuracy sits next to a published lmms-eval number.

lmms-eval (the evaluation harness most Video-LLM papers report with) writes, per run, under
`<output_path>/<model_name_sanitized>/`:
  `<date>_samples_<task>.jsonl`  one line per doc: doc_id, target, input (the prompt), filtered_resps
                                 (the model's answer), token_counts, doc_hash, and the task's
                                 process_results entries (e.g. mvbench_accuracy: {pred_answer,
                                 gt_answer, score});
  `<date>_results.json`          results (per task: alias, `<metric>,none`, `<metric>_stderr,none`, ...),
                                 group_subtasks, configs, versions, n-shot, higher_is_better,
                                 n-samples, config, git_hash, git_branch, lmms_eval_version, date,
                                 usage, task_hashes, and the tracker's
                                 model_name / model_name_sanitized / timing fields.
This module writes the same files, field for field as lmms-eval 0.7.3 does (LMMS_EVAL_VERSION), for the
tasks lmms-eval has: the 20 mvbench_<task> tasks (group mvbench), videomme, egoschema_subset,
nextqa_mc_test and longvideobench_val_v. Our answer is the option letter with the highest
log-probability (lmms-eval generates text and parses a letter out of it; a letter answer parses to
itself). Each task's metric is aggregated the way its lmms-eval task does: MVBench and Video-MME in
percent, the others as fractions.

`doc_hash` hashes the doc as we rebuilt it from the release row (lmms-eval hashes its Hugging Face
copy of the row), so it identifies the doc within our files, not across tools.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxvlm.data import LETTERS, MVBENCH_TASKS, VideoQASample

LMMS_EVAL_VERSION = '0.7.3'
FILTER = 'none'  # lmms-eval's filter key when a task defines no filter


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def sanitize_model_name(model_name: str) -> str:
  """lmms-eval's folder name for a model: the last two path parts, unsafe characters -> '__'."""
  parts = model_name.rstrip('/').split('/')
  return re.sub(r'["<>:/|\\?*\[\]]+', '__', '/'.join(parts[-2:]))


def _video_stem(sample: VideoQASample) -> str:
  return os.path.splitext(os.path.basename(sample.video.rstrip('/')))[0]


def _int_or_text(value: str) -> int | str:
  return int(value) if value.isdigit() else value


# ----------------------------------------------------------------------------------------------
# Which lmms-eval task a sample belongs to, and its doc / target / process_results entries.


def task_of(benchmark: str, sample: VideoQASample, split: str = '') -> str | None:
  """The lmms-eval task scoring this sample, or None when lmms-eval has none (an unlabelled sample,
  a NExT-QA split other than test, a benchmark lmms-eval lacks).

  Args:
    split: the annotation file's split where lmms-eval has only one (NExT-QA: 'test').
  """
  name = benchmark.lower()
  if sample.answer is None:
    return None
  if name == 'mvbench':
    return f'mvbench_{sample.task}' if sample.task in MVBENCH_TASKS else None
  if name == 'videomme':
    return 'videomme'
  if name == 'egoschema':
    return 'egoschema_subset' if sample.meta.get('subset') == 'true' else None
  if name == 'nextqa':
    return 'nextqa_mc_test' if split == 'test' else None
  if name == 'longvideobench':
    return 'longvideobench_val_v'
  return None


def _doc(benchmark: str, s: VideoQASample) -> dict:
  """The row as the release has it (the fields lmms-eval's doc holds for these tasks)."""
  name = benchmark.lower()
  if name == 'mvbench':
    if s.answer is None:
      raise ValueError(f'MVBench sample {s.id!r} has no answer (the lmms-eval doc holds its text)')
    doc: dict[str, Any] = {
      'video': os.path.basename(s.video.rstrip('/')),
      'question': s.question,
      'candidates': s.options,
      'answer': s.options[s.answer],
    }
    if s.start_s is not None:
      doc.update(start=s.start_s, end=s.end_s)
    return doc
  if name == 'videomme':
    return {
      'video_id': s.meta.get('video_id'),
      'duration': s.meta.get('duration'),
      'domain': s.meta.get('domain'),
      'sub_category': s.meta.get('sub_category'),
      'videoID': _video_stem(s),
      'question_id': s.id,
      'task_type': s.task,
      'question': s.question,
      'options': [f'{LETTERS[i]}. {o}' for i, o in enumerate(s.options)],
      'answer': s.answer_letter,
    }
  if name == 'egoschema':
    return {'video_idx': s.id, 'question': s.question, 'option': s.options, 'answer': str(s.answer)}
  if name == 'nextqa':
    video, qid = s.id.rsplit('_', 1)
    return {
      'video': video,
      'question': s.question,
      'answer': s.answer,
      'qid': int(qid),
      'type': s.task,
      **{f'a{i}': o for i, o in enumerate(s.options)},
    }
  if name == 'longvideobench':
    return {
      'id': s.id,
      'question': s.question,
      'candidates': s.options,
      'correct_choice': s.answer,
      'question_category': s.task,
      'duration_group': _int_or_text(s.meta.get('duration_group', '')),
      'video_path': os.path.basename(s.video),
    }
  raise ValueError(f'no lmms-eval doc for benchmark {benchmark!r}')


def _entries(task: str, s: VideoQASample, doc: dict, pred: int) -> tuple[Any, dict]:
  """(target, process_results entries) of lmms-eval's task for our predicted option index."""
  letter, gold = LETTERS[pred], s.answer_letter
  if task.startswith('mvbench_'):
    return doc['answer'], {'mvbench_accuracy': {'pred_answer': letter, 'gt_answer': gold, 'score': int(letter == gold)}}
  if task == 'videomme':
    return gold, {
      'videomme_perception_score': {
        'question_id': s.id,
        'duration': doc['duration'],
        'category': doc['domain'],
        'sub_category': doc['sub_category'],
        'task_category': s.task,
        'pred_answer': letter,
        'answer': gold,
        'score': float(letter == gold),
        'videoID': doc['videoID'],
      }
    }
  if task == 'egoschema_subset':
    return doc['answer'], {'submission': {s.id: pred}, 'score': {'pred': pred, 'ground_truth': doc['answer']}}
  if task == 'nextqa_mc_test':
    return s.answer, {'exact_match': letter == gold}
  if task == 'longvideobench_val_v':
    return s.answer, {
      'lvb_acc': {
        'id': s.id,
        'duration_group': doc['duration_group'],
        'question_category': s.task,
        'answer': gold,
        'parsed_pred': letter,
      },
      'submission': {s.id: letter},
    }
  raise ValueError(f'unknown lmms-eval task {task!r}')


def sample_line(benchmark: str, task: str, doc_id: int, sample: VideoQASample, predicted: int, prompt: str) -> dict:
  """One `<date>_samples_<task>.jsonl` line, with the fields lmms-eval's save_results_samples keeps
  (doc and arguments are dropped there; resps too, since it equals filtered_resps)."""
  if not 0 <= predicted < len(sample.options):
    raise ValueError(f'sample {sample.id!r}: predicted option {predicted} outside its {len(sample.options)} options')
  doc = _doc(benchmark, sample)
  target, entries = _entries(task, sample, doc, predicted)
  return {
    'doc_id': doc_id,
    'target': str(target),
    'filtered_resps': LETTERS[predicted],
    'token_counts': [None],
    'doc_hash': _sha256(json.dumps(doc, indent=2, ensure_ascii=False)),
    **entries,
    'input': prompt,
  }


# ----------------------------------------------------------------------------------------------
# Aggregation, as each task's lmms-eval aggregation function computes it.


def _metric(task: str) -> tuple[str, Callable[[list[dict]], float]]:
  if task.startswith('mvbench_'):
    return 'mvbench_accuracy', lambda lines: 100 * np.mean([l['mvbench_accuracy']['score'] for l in lines])
  if task == 'videomme':
    return (
      'videomme_perception_score',
      lambda lines: 100 * np.mean([l['videomme_perception_score']['score'] for l in lines]),
    )
  if task == 'egoschema_subset':
    return 'score', lambda lines: float(
      np.mean([str(l['score']['pred']) == str(l['score']['ground_truth']) for l in lines])
    )
  if task == 'nextqa_mc_test':
    return 'exact_match', lambda lines: float(np.mean([l['exact_match'] for l in lines]))
  if task == 'longvideobench_val_v':
    return 'lvb_acc', lambda lines: round(
      float(np.mean([l['lvb_acc']['answer'] == l['lvb_acc']['parsed_pred'] for l in lines])), 5
    )
  raise ValueError(f'unknown lmms-eval task {task!r}')


def _scores(task: str, metric: str, lines: list[dict]) -> list[float]:
  item = lambda l: l[metric]
  if metric in ('mvbench_accuracy', 'videomme_perception_score'):
    return [float(item(l)['score']) for l in lines]
  if metric == 'score':
    return [float(str(item(l)['pred']) == str(item(l)['ground_truth'])) for l in lines]
  if metric == 'lvb_acc':
    return [float(item(l)['answer'] == item(l)['parsed_pred']) for l in lines]
  del task
  return [float(item(l)) for l in lines]


def task_results(task: str, lines: list[dict], cluster_ids: Sequence[str] | None = None) -> dict:
  """results[task] of lmms-eval's results file: alias, `<metric>,none` and its standard errors.

  lmms-eval gives tasks with their own aggregation function no bootstrap stderr ('N/A') and a mean
  metric the standard error of the mean; it adds the CLT stderr (std / sqrt(n)) and, where the task
  names a cluster key (Video-MME: videoID), the clustered stderr.
  """
  metric, aggregate = _metric(task)
  scores = np.asarray(_scores(task, metric, lines))
  n = len(scores)
  clt = float(np.std(scores, ddof=1) / np.sqrt(n)) if n > 1 else 'N/A'
  out = {
    'alias': task,
    f'{metric},{FILTER}': float(aggregate(lines)),
    'samples': n,
    f'{metric}_stderr,{FILTER}': clt if metric == 'exact_match' else 'N/A',
    f'{metric}_stderr_clt,{FILTER}': clt,
  }
  clusters = list(cluster_ids or [])
  if clusters and len(set(clusters)) > 1 and n > 1:
    out[f'{metric}_stderr_clustered,{FILTER}'] = _clustered_stderr(scores, clusters)
  else:
    out[f'{metric}_stderr_clustered,{FILTER}'] = 'N/A'
  return out


def _clustered_stderr(scores: np.ndarray, clusters: Sequence[str]) -> float:
  """Cluster-robust standard error of a mean (questions on the same video are correlated; Miller 2024,
  "Adding error bars to evals", eq. 4, as lmms-eval computes it): the CLT variance plus, within each
  cluster, the cross products of the deviations from the mean, over n^2."""
  n = len(scores)
  d = scores - scores.mean()
  labels = np.unique(np.asarray(clusters), return_inverse=True)[1]
  cluster_sums = np.bincount(labels, weights=d)
  cross = ((cluster_sums**2).sum() - (d**2).sum()) / n**2
  return float(np.sqrt(d @ d / (n - 1) / n + cross))


# ----------------------------------------------------------------------------------------------
# The files.


def write(
  out_dir: str,
  benchmark: str,
  samples: Sequence[VideoQASample],
  predicted: Sequence[int],
  prompts: Sequence[str],
  model_name: str,
  split: str = '',
  date: str | None = None,
  run_config: dict | None = None,
) -> list[str]:
  """Writes the per-task sample logs and the results file under out_dir/<model_name_sanitized>/.

  Samples no lmms-eval task scores (see task_of) are left out. Returns the written paths ([] when no
  sample belongs to an lmms-eval task).
  """
  if not len(samples) == len(predicted) == len(prompts):
    raise ValueError(f'{len(samples)} samples, {len(predicted)} predictions, {len(prompts)} prompts: one each')
  by_task: dict[str, list[dict]] = {}
  clusters: dict[str, list[str]] = {}
  for s, pred, prompt in zip(samples, predicted, prompts):
    task = task_of(benchmark, s, split)
    if task is None:
      continue
    lines = by_task.setdefault(task, [])
    lines.append(sample_line(benchmark, task, len(lines), s, int(pred), prompt))
    clusters.setdefault(task, []).append(_video_stem(s))
  if not by_task:
    return []
  date = date or datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d_%H%M%S')
  folder = os.path.join(out_dir, sanitize_model_name(model_name))
  os.makedirs(folder, exist_ok=True)
  written = []
  for task, lines in sorted(by_task.items()):
    path = os.path.join(folder, f'{date}_samples_{task}.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(l, ensure_ascii=False) + '\n' for l in lines)
    written.append(path)
  path = os.path.join(folder, f'{date}_results.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(results_document(by_task, clusters, model_name, date, run_config), f, indent=2, ensure_ascii=False)
  return written + [path]


def write_clean_answers(
  workdir: str,
  benchmark: str,
  samples: Sequence[VideoQASample],
  records: Sequence[dict],
  prompt_of: Callable[[VideoQASample], str],
  model_name: str,
  ann: str = '',
  run_config: dict | None = None,
) -> list[str]:
  """A run's clean answers (argmax of each record's 'clean' option log-probs) in lmms-eval's files under
  workdir/lmms_eval/, replacing what an earlier pass of the same run wrote there.

  Args:
    records: the run's samples.jsonl records (failed ones are left out).
    prompt_of: the prompt text the model was given for a sample (lmms-eval's `input`).
    ann: the annotation file, whose stem names the split where lmms-eval needs it (NExT-QA test.csv).
  """
  by_id = {r['id']: r for r in records if 'error' not in r and 'clean' in r}
  split = os.path.splitext(os.path.basename(os.fspath(ann)))[0] if ann else ''
  chosen = [s for s in samples if s.id in by_id and task_of(benchmark, s, split) is not None]
  if not chosen:
    return []
  folder = os.path.join(workdir, 'lmms_eval', sanitize_model_name(model_name))
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      if re.fullmatch(r'\d{8}_\d{6}_(samples_.+\.jsonl|results\.json)', name):
        os.remove(os.path.join(folder, name))
  return write(
    os.path.join(workdir, 'lmms_eval'),
    benchmark,
    chosen,
    [int(np.argmax(by_id[s.id]['clean'])) for s in chosen],
    [prompt_of(s) for s in chosen],
    model_name,
    split=split,
    run_config=run_config,
  )


def results_document(
  by_task: dict[str, list[dict]],
  clusters: dict[str, list[str]],
  model_name: str,
  date: str,
  run_config: dict | None = None,
) -> dict:
  """The `<date>_results.json` dict for these per-task sample lines."""
  tasks = sorted(by_task)
  mvbench = [t for t in tasks if t.startswith('mvbench_')]
  results, group_subtasks = {}, {}
  if mvbench:
    # lmms-eval's mvbench group names no aggregate metric: its row holds only the alias and ' '.
    results['mvbench'] = {'alias': 'mvbench', ' ': ' '}
    group_subtasks['mvbench'] = mvbench
  for task in tasks:
    row = task_results(task, by_task[task], clusters.get(task) if task == 'videomme' else None)
    if task in mvbench:
      row['alias'] = ' - ' + task  # lmms-eval indents a group's subtasks
    results[task] = row
    if task not in mvbench:
      group_subtasks[task] = []
  metric = {t: _metric(t)[0] for t in tasks}
  return {
    'results': results,
    'group_subtasks': group_subtasks,
    'configs': {
      t: {'task': t, 'output_type': 'generate_until', 'metric_list': [{'metric': metric[t], 'higher_is_better': True}]}
      for t in tasks
    },
    'versions': {**({'mvbench': 'N/A'} if mvbench else {}), **{t: 'Yaml' for t in tasks}},
    'n-shot': {t: 0 for t in tasks},
    'higher_is_better': {
      **({'mvbench': {'mvbench_accuracy': True}} if mvbench else {}),
      **{t: {metric[t]: True} for t in tasks},
    },
    'n-samples': {t: {'original': len(by_task[t]), 'effective': len(by_task[t])} for t in tasks},
    'config': {
      'model': model_name,
      'model_args': f'pretrained={model_name}',
      'model_backend': 'jaxvlm (answer = argmax of option-letter log-probabilities)',
      'batch_size': (run_config or {}).get('batch_size'),
      'limit': None,
      'bootstrap_iters': 0,
      'gen_kwargs': '',
      'jaxvlm_config': run_config or {},
    },
    'git_hash': None,
    'git_branch': None,
    'lmms_eval_version': f'format of lmms-eval {LMMS_EVAL_VERSION} (written by jaxvlm)',
    'date': date,
    'usage': {},  # lmms-eval's API token usage: none here
    'task_hashes': {
      t: _sha256(''.join(f'sample_{i}' + l['doc_hash'] for i, l in enumerate(by_task[t]))) for t in tasks
    },
    'model_source': 'jaxvlm',
    'model_name': model_name,
    'model_name_sanitized': sanitize_model_name(model_name),
    'system_instruction': None,
    'system_instruction_sha': None,
    'fewshot_as_multiturn': False,
    'chat_template': None,
    'chat_template_sha': None,
    'start_time': None,
    'end_time': None,
    'total_evaluation_time_seconds': None,
  }
