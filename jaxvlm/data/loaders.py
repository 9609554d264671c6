"""Benchmark loaders: published annotation files + a video directory -> `VideoQASample`s.

Each loader reads the annotation file exactly as released:

- MVBench (OpenGVLab/MVBench `json/<task>.json`): a list of
  `{video, question, candidates: [str], answer: str, [start, end] (seconds)}`; the answer is the
  text of the right candidate. A directory of such files loads every task.
- Video-MME (lmms-lab/Video-MME `videomme/test-*.parquet`): columns video_id, duration, domain,
  sub_category, url, videoID, question_id, task_type, question, options ("A. ..."), answer ("A").
  Videos are `<video_root>/<videoID>.mp4`.
- EgoSchema (egoschema/EgoSchema `questions.json` + `subset_answers.json`): questions
  `{q_uid, google_drive_id, question, "option 0" .. "option 4"}`, answers `{q_uid: int}` for the
  public subset. Videos are `<video_root>/<q_uid>.mp4`.
- NExT-QA multiple choice (doc-doc/NExT-QA `dataset/nextqa/{train,val,test}.csv`): columns
  video, frame_count, width, height, question, answer (0-4), qid, type, a0 .. a4. Videos are
  `<video_root>/<video>.mp4`, or `<video_root>/<map[video]>.mp4` with the released
  `map_vid_vidorID.json`.
- LongVideoBench (longvideobench/LongVideoBench `lvb_val.json`): a list of
  `{video_id, question, candidates, correct_choice, id, video_path, question_category,
  topic_category, duration_group, ...}`; test files have no correct_choice.
- synthetic: a split directory written by `jaxvlm.data.synthetic` (MVBench format inside).

A malformed item (missing field, wrong type, empty options, answer out of range, missing video)
is skipped and recorded as (id, reason) in `LoadResult.skipped`; the rest still load. A missing
or unparsable annotation file raises.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jaxvlm.data.sample import LETTERS, SampleError, VideoQASample


@dataclasses.dataclass
class LoadResult:
  samples: list[VideoQASample]
  skipped: list[tuple[str, str]]


_ROW_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _collect(rows: Iterable[tuple[str, Any]], build: Callable[[Any], VideoQASample],
             check_videos: bool) -> LoadResult:
  """Builds a sample per (fallback id, row), recording failures instead of raising."""
  samples, skipped = [], []
  seen = set()
  for fallback_id, row in rows:
    try:
      sample = build(row)
    except SampleError as e:
      skipped.append((fallback_id, str(e)))
      continue
    except _ROW_ERRORS as e:
      reason = f'missing field {e}' if isinstance(e, KeyError) else f'{type(e).__name__}: {e}'
      skipped.append((fallback_id, f'malformed row: {reason}'))
      continue
    if sample.id in seen:
      skipped.append((sample.id, 'duplicate id'))
    elif check_videos and not os.path.exists(sample.video):
      skipped.append((sample.id, f'video not found: {sample.video}'))
    else:
      seen.add(sample.id)
      samples.append(sample)
  return LoadResult(samples, skipped)


def _read_json(path: str | os.PathLike[str]) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'annotation file {path} is not valid JSON: {e}') from e


def _text(value: Any, field: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f'field {field!r} must be a non-empty string, got {value!r}')
  return value.strip()


def _int(value: Any, field: str) -> int:
  """An integer that may arrive as int, integral float or digit string (csv / parquet)."""
  if isinstance(value, bool):
    raise ValueError(f'field {field!r} must be an integer, got {value!r}')
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, int):
    return value
  if isinstance(value, str) and re.fullmatch(r'\s*-?\d+\s*', value):
    return int(value)
  raise ValueError(f'field {field!r} must be an integer, got {value!r}')


def _seconds(row: Mapping[str, Any], key: str) -> float | None:
  value = row.get(key)
  if value is None or value == '':
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise ValueError(f'field {key!r} must be a number of seconds, got {value!r}')
  return float(value)


def _options(values: Any, field: str) -> list[str]:
  if not isinstance(values, (list, tuple)):
    raise ValueError(f'field {field!r} must be a list, got {type(values).__name__}')
  # Some releases store numeric options (counts) as numbers; anything else must be text.
  return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _text(v, field)
          for v in values]


def _require_options(options: list[str], sample_id: str) -> None:
  """Raises before the answer is looked up, so the reason names the real fault."""
  if not options:
    raise SampleError(f'sample {sample_id!r}: empty option list')


# ----------------------------------------------------------------------------------------------
# MVBench (and the synthetic world, which writes the same format).


def _mvbench_files(ann_json: str | os.PathLike[str]) -> list[str]:
  path = os.fspath(ann_json)
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith('.json'))
    if not files:
      raise FileNotFoundError(f'no MVBench task .json files in {path}')
    return files
  if not os.path.isfile(path):
    raise FileNotFoundError(f'MVBench annotation file not found: {path}')
  return [path]


def load_mvbench(ann_json: str | os.PathLike[str], video_root: str | os.PathLike[str],
                 check_videos: bool = True) -> LoadResult:
  """Loads one MVBench task json (task = file stem) or every *.json in a directory.

  Optional per-item fields beyond the MVBench schema, written by the synthetic world:
  `id` and `evidence_frames` (list of frame indices).
  """
  result = LoadResult([], [])
  for file in _mvbench_files(ann_json):
    task = os.path.splitext(os.path.basename(file))[0]
    items = _read_json(file)
    if not isinstance(items, list):
      raise ValueError(f'MVBench file {file} must hold a JSON list, got {type(items).__name__}')

    def build(indexed, task=task):
      index, item = indexed
      sample_id = str(item.get('id', f'{task}/{index}'))
      options = _options(item['candidates'], 'candidates')
      answer = _text(item['answer'], 'answer')
      _require_options(options, sample_id)
      if answer not in options:
        raise SampleError(f'sample {sample_id!r}: answer {answer!r} is not among the candidates')
      evidence = item.get('evidence_frames')
      if evidence is not None:
        evidence = [_int(f, 'evidence_frames') for f in evidence]
      return VideoQASample(
          id=sample_id, video=os.path.join(os.fspath(video_root), _text(item['video'], 'video')),
          question=_text(item['question'], 'question'), options=options,
          answer=options.index(answer), start_s=_seconds(item, 'start'),
          end_s=_seconds(item, 'end'), evidence_frames=evidence, task=task)

    part = _collect(((f'{task}/{i}', (i, item)) for i, item in enumerate(items)), build,
                    check_videos)
    result.samples.extend(part.samples)
    result.skipped.extend(part.skipped)
  return result


# ----------------------------------------------------------------------------------------------
# Video-MME.

_LETTER_PREFIX = re.compile(r'^\s*([A-J])\s*[.):]\s*')


def _strip_letters(options: list[str], sample_id: str) -> list[str]:
  """'A. text' -> 'text'; the prefixes must read A, B, C, ... in order."""
  stripped = []
  for i, option in enumerate(options):
    match = _LETTER_PREFIX.match(option)
    if not match or match.group(1) != LETTERS[i]:
      raise SampleError(f'sample {sample_id!r}: option {i} {option!r} lacks prefix {LETTERS[i]}.')
    stripped.append(option[match.end():].strip())
  return stripped


def _letter_index(letter: Any, num_options: int, sample_id: str) -> int:
  letter = _text(letter, 'answer').upper()
  if len(letter) != 1 or letter not in LETTERS[:num_options]:
    raise SampleError(f'sample {sample_id!r}: answer {letter!r} is not one of '
                      f'{LETTERS[:num_options]}')
  return LETTERS.index(letter)


def load_videomme(parquet: str | os.PathLike[str], video_root: str | os.PathLike[str],
                  check_videos: bool = True) -> LoadResult:
  """Loads the Video-MME parquet; task = task_type, meta = duration, domain, sub_category."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (only this loader needs it)
  if not os.path.isfile(parquet):
    raise FileNotFoundError(f'Video-MME parquet not found: {parquet}')
  rows = pq.read_table(parquet).to_pylist()

  def build(row):
    sample_id = _text(row['question_id'], 'question_id')
    options = _strip_letters(_options(row['options'], 'options'), sample_id)
    _require_options(options, sample_id)
    return VideoQASample(
        id=sample_id,
        video=os.path.join(os.fspath(video_root), _text(row['videoID'], 'videoID') + '.mp4'),
        question=_text(row['question'], 'question'), options=options,
        answer=_letter_index(row['answer'], len(options), sample_id),
        task=_text(row['task_type'], 'task_type'),
        meta={k: str(row[k]) for k in ('duration', 'domain', 'sub_category', 'video_id')
              if row.get(k) is not None})

  return _collect(((str(r.get('question_id', f'row{i}')), r) for i, r in enumerate(rows)),
                  build, check_videos)


# ----------------------------------------------------------------------------------------------
# EgoSchema.


def load_egoschema(questions_json: str | os.PathLike[str], video_root: str | os.PathLike[str],
                   answers_json: str | os.PathLike[str] | None = None, subset_only: bool = False,
                   check_videos: bool = True) -> LoadResult:
  """Loads EgoSchema questions; answers from subset_answers.json where given, else None.

  Args:
    subset_only: keep only questions with a public answer (the 500-question subset).
  """
  questions = _read_json(questions_json)
  if not isinstance(questions, list):
    raise ValueError(f'EgoSchema questions file {questions_json} must hold a JSON list')
  answers = {} if answers_json is None else _read_json(answers_json)
  if not isinstance(answers, dict):
    raise ValueError(f'EgoSchema answers file {answers_json} must hold a JSON object')
  if subset_only:
    questions = [q for q in questions if isinstance(q, dict) and q.get('q_uid') in answers]

  def build(item):
    uid = _text(item['q_uid'], 'q_uid')
    options = [_text(item[f'option {i}'], f'option {i}') for i in range(5)]
    answer = answers.get(uid)
    return VideoQASample(
        id=uid, video=os.path.join(os.fspath(video_root), uid + '.mp4'),
        question=_text(item['question'], 'question'), options=options,
        answer=None if answer is None else _int(answer, 'answer'), task='egoschema')

  rows = ((str(q.get('q_uid', f'row{i}')) if isinstance(q, dict) else f'row{i}', q)
          for i, q in enumerate(questions))
  return _collect(rows, build, check_videos)


# ----------------------------------------------------------------------------------------------
# NExT-QA (multiple choice).


def load_nextqa(csv_path: str | os.PathLike[str], video_root: str | os.PathLike[str],
                video_map_json: str | os.PathLike[str] | None = None,
                check_videos: bool = True) -> LoadResult:
  """Loads a NExT-QA multiple-choice csv; id = '<video>_<qid>', task = type (CW, TN, ...)."""
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f'NExT-QA csv not found: {csv_path}')
  video_map = None if video_map_json is None else _read_json(video_map_json)
  with open(csv_path, encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))

  def build(row):
    video = _text(row['video'], 'video')
    sample_id = f"{video}_{_int(row['qid'], 'qid')}"
    relative = video_map[video] if video_map is not None else video
    options = [_text(row[f'a{i}'], f'a{i}') for i in range(5)]
    return VideoQASample(
        id=sample_id, video=os.path.join(os.fspath(video_root), relative + '.mp4'),
        question=_text(row['question'], 'question'), options=options,
        answer=_int(row['answer'], 'answer'), task=_text(row['type'], 'type'))

  return _collect(((f"{r.get('video')}_{r.get('qid')}", r) for r in rows), build, check_videos)


# ----------------------------------------------------------------------------------------------
# LongVideoBench.


def load_longvideobench(json_path: str | os.PathLike[str], video_root: str | os.PathLike[str],
                        check_videos: bool = True) -> LoadResult:
  """Loads lvb_val.json / lvb_test_wo_gt.json; task = question_category."""
  items = _read_json(json_path)
  if not isinstance(items, list):
    raise ValueError(f'LongVideoBench file {json_path} must hold a JSON list')

  def build(item):
    answer = item.get('correct_choice')
    return VideoQASample(
        id=_text(item['id'], 'id'),
        video=os.path.join(os.fspath(video_root), _text(item['video_path'], 'video_path')),
        question=_text(item['question'], 'question'),
        options=_options(item['candidates'], 'candidates'),
        answer=None if answer is None else _int(answer, 'correct_choice'),
        task=_text(item['question_category'], 'question_category'),
        meta={k: str(item[k]) for k in ('duration_group', 'topic_category', 'level')
              if item.get(k) is not None})

  rows = ((str(it.get('id', f'row{i}')) if isinstance(it, dict) else f'row{i}', it)
          for i, it in enumerate(items))
  return _collect(rows, build, check_videos)


# ----------------------------------------------------------------------------------------------
# The synthetic world (jaxvlm.data.synthetic) writes MVBench-format splits.


def load_synthetic(ann: str | os.PathLike[str], check_videos: bool = True) -> LoadResult:
  """Loads a split directory written by `synthetic.generate` (json/ and videos/ inside)."""
  return load_mvbench(os.path.join(ann, 'json'), os.path.join(ann, 'videos'), check_videos)


# ----------------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[..., LoadResult]] = {
    'mvbench': load_mvbench,
    'synthetic': load_synthetic,
    'videomme': load_videomme,
    'egoschema': load_egoschema,
    'nextqa': load_nextqa,
    'longvideobench': load_longvideobench,
}


def load_benchmark(name: str, **kwargs: Any) -> LoadResult:
  """Dispatches to the loader registered under `name` (see LOADERS).

  Every loader's first argument is its annotation file; configs may pass it as `ann=` whatever
  the loader calls it (`ann_json`, `parquet`, `questions_json`, `csv_path`, `json_path`).
  """
  try:
    loader = LOADERS[name.lower()]
  except KeyError:
    raise ValueError(f'unknown benchmark {name!r}; known: {sorted(LOADERS)}') from None
  if 'ann' in kwargs:
    first = next(iter(inspect.signature(loader).parameters))
    if first != 'ann':
      if first in kwargs:
        raise ValueError(f'{name}: pass the annotation file as ann= or {first}=, not both')
      kwargs[first] = kwargs.pop('ann')
  return loader(**kwargs)
