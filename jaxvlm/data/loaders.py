"""Benchmark loaders: annotation files + video tree, exactly as released -> `VideoQASample`s.

Each loader reads the annotation files and the video tree as the authors release them (paths below
are relative to the unpacked release; the README's "Benchmarks" section says what to point at):

- MVBench (OpenGVLab/MVBench): `json/<task>.json` per task, a list of
  `{video, question, candidates: [str], answer: str, [start, end] (seconds)}`; the answer is the text
  of the right candidate. `video` is a bare file (or frame folder) name inside the task's own folder
  under `video/` (MVBENCH_TASKS: the release's task -> json, folder, data type, clip table). Pass
  the `json/` directory to load all 20 tasks, or one task file.
- Video-MME (lmms-lab/Video-MME): `videomme/test-*.parquet` with columns video_id, duration, domain,
  sub_category, url, videoID, question_id, task_type, question, options ("A. ..."), answer ("A");
  videos `data/<videoID>.mp4`, a few `.MP4` / `.mkv` (tried in that order).
- EgoSchema (egoschema/EgoSchema): `questions.json` `{q_uid, google_drive_id, question,
  "option 0" .. "option 4"}` and `subset_answers.json` `{q_uid: int}` for the public 500-question
  subset; videos `videos/<q_uid>.mp4` (or `.MP4`).
- NExT-QA multiple choice (doc-doc/NExT-QA): `dataset/nextqa/{train,val,test}.csv` with columns video,
  frame_count, width, height, question, answer (0-4), qid, type, a0 .. a4; videos
  `NExTVideo/<map[video]>.mp4` through the released `map_vid_vidorID.json`, or `<video>.mp4` flat.
- LongVideoBench (longvideobench/LongVideoBench): `lvb_val.json` / `lvb_test_wo_gt.json`, a list of
  `{video_id, question, candidates, correct_choice, id, video_path, question_category,
  topic_category, duration_group, duration, ...}` (the test file has no correct_choice); videos
  `videos/<video_path>`. `duration` (seconds) bounds sampling to [0, duration], as the benchmark's
  own loader does (it spreads its frames over int(duration * fps) frames).
- synthetic: a split directory written by `jaxvlm.data.synthetic` (MVBench format inside, flat).

A malformed item (missing field, wrong type, not a JSON object, empty options, answer out of range,
missing video) is skipped and recorded as (id, reason) in `LoadResult.skipped`; the rest still load.
A repeated id keeps its first item; each later one is recorded as skipped under `<id>#duplicate<n>`
(so its record never shadows the kept item). A video path that leaves `video_root` (an absolute path,
or `..` climbing out of it) is refused the same way: annotations name files inside their release. A
missing, unparsable or non-UTF-8 annotation file raises, naming the file. Every loader logs one
summary line (loaded / skipped, the reasons grouped with counts and a few example ids), never one line
per row.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jaxvlm.data.sample import LETTERS, SampleError, VideoQASample


_LOG = logging.getLogger(__name__)
_EXAMPLES_PER_REASON = 3


@dataclasses.dataclass
class LoadResult:
  samples: list[VideoQASample]
  skipped: list[tuple[str, str]]

  def skipped_by_reason(self) -> dict[str, list[str]]:
    """Skip reasons with their item specifics (quoted values, numbers, paths) blanked -> ids, most
    frequent first, so 2000 rows of 'video not found: <path>' read as one reason."""
    groups: dict[str, list[str]] = {}
    for sample_id, reason in self.skipped:
      groups.setdefault(reason_kind(reason), []).append(sample_id)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))

  def summary(self, benchmark: str, source: str | os.PathLike[str]) -> str:
    """One line: what loaded from where, and the skipped rows grouped by reason."""
    line = f'{benchmark}: loaded {len(self.samples)} samples from {os.fspath(source)}, skipped {len(self.skipped)}'
    if self.skipped:
      parts = []
      for kind, ids in self.skipped_by_reason().items():
        examples = ', '.join(ids[:_EXAMPLES_PER_REASON]) + (', ...' if len(ids) > _EXAMPLES_PER_REASON else '')
        parts.append(f'{kind} x{len(ids)} (e.g. {examples})')
      line += ': ' + '; '.join(parts)
    return line


_SAMPLE_PREFIX = re.compile(r"^sample '[^']*': ")
_PATH_TAIL = re.compile(r'^(video not found|frame folder not found): .*$')
_SPECIFICS = re.compile(r"'[^']*'|\b\d+(\.\d+)?\b")


def reason_kind(reason: str) -> str:
  """'sample 'x/3': answer 'E' is not one of ABCD' -> 'answer … is not one of ABCD'. Field names in
  'missing field' reasons are kept: which field is missing is the useful part."""
  text = _PATH_TAIL.sub(r'\1', _SAMPLE_PREFIX.sub('', reason))
  if text.startswith('malformed row: missing field'):
    return text
  return _SPECIFICS.sub('…', text)


def _report(result: LoadResult, benchmark: str, source: str | os.PathLike[str]) -> LoadResult:
  _LOG.log(logging.WARNING if result.skipped else logging.INFO, '%s', result.summary(benchmark, source))
  return result


def _first_existing(paths: Sequence[str], is_dir: bool = False) -> str | None:
  exists = os.path.isdir if is_dir else os.path.isfile
  return next((p for p in paths if exists(p)), None)


_ROW_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _collect(rows: Iterable[tuple[str, Any]], build: Callable[[Any], VideoQASample], check_videos: bool) -> LoadResult:
  """Builds a sample per (fallback id, row), recording failures instead of raising.

  `build` names the video path it found (or, when none of its candidate paths exists, the first
  one); with check_videos the path must exist: a file for data_type 'video', a folder for 'frame'.
  """
  samples, skipped = [], []
  seen: dict[str, int] = {}
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
      seen[sample.id] += 1
      skipped.append(
        (
          f'{sample.id}#duplicate{seen[sample.id]}',
          f'duplicate id {sample.id!r} (item {fallback_id}): the first item with this id is kept',
        )
      )
    elif check_videos and sample.data_type == 'frame' and not os.path.isdir(sample.video):
      skipped.append((sample.id, f'frame folder not found: {sample.video}'))
    elif check_videos and sample.data_type == 'video' and not os.path.isfile(sample.video):
      skipped.append((sample.id, f'video not found: {sample.video}'))
    else:
      seen[sample.id] = 1
      samples.append(sample)
  return LoadResult(samples, skipped)


def _read_json(path: str | os.PathLike[str]) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'annotation file {path} is not valid JSON: {e}') from e
  except UnicodeDecodeError as e:
    raise ValueError(
      f'annotation file {path} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8'
    ) from e


def _object(item: Any, where: str) -> Mapping[str, Any]:
  """An annotation item must be a JSON object; anything else is that item's failure, said plainly."""
  if not isinstance(item, Mapping):
    raise SampleError(
      f'{where} is a JSON {type(item).__name__} ({str(item)[:60]!r}), expected an object with the benchmark\'s fields'
    )
  return item


def _inside_root(video_root: str | os.PathLike[str], relative: str, field: str) -> str:
  """`relative` unchanged, refused when video_root/relative leaves video_root (absolute, or `..` out)."""
  root = os.path.normpath(os.fspath(video_root))
  path = os.path.normpath(os.path.join(root, relative))
  if os.path.isabs(relative) or os.path.relpath(path, root).split(os.sep)[0] == '..':
    raise SampleError(
      f'field {field!r} = {relative!r} leaves video_root {os.fspath(video_root)!r}; '
      f'annotation paths must stay inside it'
    )
  return relative


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
  return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _text(v, field) for v in values]


def _require_options(options: list[str], sample_id: str) -> None:
  """Raises before the answer is looked up, so the reason names the real fault."""
  if not options:
    raise SampleError(f'sample {sample_id!r}: empty option list')


# ----------------------------------------------------------------------------------------------
# MVBench (and the synthetic world, which writes the same format).


@dataclasses.dataclass(frozen=True)
class MVBenchTask:
  """One row of the MVBench release's task table.

  Attributes:
    name: the task's display name ('Action Sequence').
    folder: where its videos live, relative to the release's `video/` directory.
    data_type: 'video' (mp4 / webm / avi files) or 'frame' (one folder of numbered jpgs per item).
    clipped: the release's loader samples only inside the item's [start, end] (seconds).
  """

  name: str
  folder: str
  data_type: str = 'video'
  clipped: bool = False


# json file stem -> task, as in the MVBench release's evaluation notebook (OpenGVLab/Ask-Anything
# video_chat2/mvbench.ipynb): the table every MVBench evaluation copies. The release's loader also has a
# gif reader, but no task of the table uses it.
MVBENCH_TASKS: dict[str, MVBenchTask] = {
  'action_sequence': MVBenchTask('Action Sequence', 'star/Charades_v1_480', clipped=True),
  'action_prediction': MVBenchTask('Action Prediction', 'star/Charades_v1_480', clipped=True),
  'action_antonym': MVBenchTask('Action Antonym', 'ssv2_video'),
  'fine_grained_action': MVBenchTask('Fine-grained Action', 'Moments_in_Time_Raw/videos'),
  'unexpected_action': MVBenchTask('Unexpected Action', 'FunQA_test/test'),
  'object_existence': MVBenchTask('Object Existence', 'clevrer/video_validation'),
  'object_interaction': MVBenchTask('Object Interaction', 'star/Charades_v1_480', clipped=True),
  'object_shuffle': MVBenchTask('Object Shuffle', 'perception/videos'),
  'moving_direction': MVBenchTask('Moving Direction', 'clevrer/video_validation'),
  'action_localization': MVBenchTask('Action Localization', 'sta/sta_video', clipped=True),
  'scene_transition': MVBenchTask('Scene Transition', 'scene_qa/video'),
  'action_count': MVBenchTask('Action Count', 'perception/videos'),
  'moving_count': MVBenchTask('Moving Count', 'clevrer/video_validation'),
  'moving_attribute': MVBenchTask('Moving Attribute', 'clevrer/video_validation'),
  'state_change': MVBenchTask('State Change', 'perception/videos'),
  'fine_grained_pose': MVBenchTask('Fine-grained Pose', 'nturgbd'),
  'character_order': MVBenchTask('Character Order', 'perception/videos'),
  'egocentric_navigation': MVBenchTask('Egocentric Navigation', 'vlnqa'),
  'episodic_reasoning': MVBenchTask('Episodic Reasoning', 'tvqa/frames_fps3_hq', 'frame', clipped=True),
  'counterfactual_inference': MVBenchTask('Counterfactual Inference', 'clevrer/video_validation'),
}
# TVQA frames in the release were extracted at 3 fps (the folder name says so; the release's frame
# reader turns clip seconds into frame numbers at this rate).
MVBENCH_FRAME_FPS = 3.0
# Some unpacked archives put clevrer/ and star/ under data0613/ (lmms-eval looks there too).
_MVBENCH_ALT_PARENT = 'data0613'


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


def mvbench_video_candidates(task: str, name: str, video_root: str | os.PathLike[str]) -> list[str]:
  """Where a task's item `name` may live, most likely first: the task's release folder, the same
  under data0613/, then video_root itself (a flat tree, as the synthetic world writes)."""
  root = os.fspath(video_root)
  spec = MVBENCH_TASKS.get(task)
  if spec is None:
    return [os.path.join(root, name)]
  return [
    os.path.join(root, spec.folder, name),
    os.path.join(root, _MVBENCH_ALT_PARENT, spec.folder, name),
    os.path.join(root, name),
  ]


def _load_mvbench(ann_json, video_root, check_videos: bool) -> LoadResult:
  result = LoadResult([], [])
  for file in _mvbench_files(ann_json):
    task = os.path.splitext(os.path.basename(file))[0]
    spec = MVBENCH_TASKS.get(task)
    items = _read_json(file)
    if not isinstance(items, list):
      raise ValueError(f'MVBench file {file} must hold a JSON list, got {type(items).__name__}')

    def build(indexed, task=task, spec=spec, file=file):
      index, item = indexed
      item = _object(item, f'item {index} of {file}')
      sample_id = str(item.get('id', f'{task}/{index}'))
      options = _options(item['candidates'], 'candidates')
      answer = _text(item['answer'], 'answer')
      _require_options(options, sample_id)
      if answer not in options:
        raise SampleError(f'sample {sample_id!r}: answer {answer!r} is not among the candidates')
      evidence = item.get('evidence_frames')
      if evidence is not None:
        evidence = [_int(f, 'evidence_frames') for f in evidence]
      data_type = spec.data_type if spec else 'video'
      candidates = mvbench_video_candidates(
        task, _inside_root(video_root, _text(item['video'], 'video'), 'video'), video_root
      )
      video = _first_existing(candidates, is_dir=data_type == 'frame') or candidates[0]
      if spec is None or spec.clipped:
        start_s, end_s = _seconds(item, 'start'), _seconds(item, 'end')
        if spec is not None and (start_s is None or end_s is None):
          raise SampleError(
            f'sample {sample_id!r}: task {task} is sampled inside [start, end] in the '
            'release, but the item has no start / end'
          )
      else:
        start_s = end_s = None  # the release's loader reads these tasks' whole videos
      return VideoQASample(
        id=sample_id,
        video=video,
        question=_text(item['question'], 'question'),
        options=options,
        answer=options.index(answer),
        start_s=start_s,
        end_s=end_s,
        evidence_frames=evidence,
        task=task,
        data_type=data_type,
        frame_fps=MVBENCH_FRAME_FPS if data_type == 'frame' else None,
      )

    part = _collect(((f'{task}/{i}', (i, item)) for i, item in enumerate(items)), build, check_videos)
    result.samples.extend(part.samples)
    result.skipped.extend(part.skipped)
  return result


def load_mvbench(
  ann_json: str | os.PathLike[str], video_root: str | os.PathLike[str], check_videos: bool = True
) -> LoadResult:
  """Loads one MVBench task json (task = file stem) or every *.json in a directory (the release's
  `json/`) against the release's `video/` tree.

  Tasks in MVBENCH_TASKS find their items in their own video folder and are clipped to [start, end]
  only where the release's loader clips them; any other file stem (the synthetic world, a custom task)
  reads `video_root/<video>` and uses start / end when an item has them. Optional per-item fields
  beyond the MVBench schema, written by the synthetic world: `id` and `evidence_frames` (frame
  indices).
  """
  return _report(_load_mvbench(ann_json, video_root, check_videos), 'mvbench', ann_json)


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
    stripped.append(option[match.end() :].strip())
  return stripped


def _letter_index(letter: Any, num_options: int, sample_id: str) -> int:
  letter = _text(letter, 'answer').upper()
  if len(letter) != 1 or letter not in LETTERS[:num_options]:
    raise SampleError(f'sample {sample_id!r}: answer {letter!r} is not one of {LETTERS[:num_options]}')
  return LETTERS.index(letter)


# Released Video-MME videos are mostly .mp4; a few are .MP4 or .mkv (lmms-eval tries these, in order).
VIDEOMME_EXTENSIONS = ('.mp4', '.MP4', '.mkv')
# EgoSchema's clips are .mp4; lmms-eval also accepts .MP4.
EGOSCHEMA_EXTENSIONS = ('.mp4', '.MP4')


def _video_with_extension(root: str | os.PathLike[str], stem: str, extensions: Sequence[str]) -> str:
  """The first of root/stem + ext that exists, else root/stem + extensions[0] (reported missing)."""
  candidates = [os.path.join(os.fspath(root), stem + ext) for ext in extensions]
  return _first_existing(candidates) or candidates[0]


def load_videomme(
  parquet: str | os.PathLike[str], video_root: str | os.PathLike[str], check_videos: bool = True
) -> LoadResult:
  """Loads the Video-MME parquet against the release's `data/` video folder; task = task_type, meta =
  duration (short / medium / long), domain, sub_category, video_id. Each video is tried as .mp4, .MP4
  and .mkv."""
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
      video=_video_with_extension(
        video_root, _inside_root(video_root, _text(row['videoID'], 'videoID'), 'videoID'), VIDEOMME_EXTENSIONS
      ),
      question=_text(row['question'], 'question'),
      options=options,
      answer=_letter_index(row['answer'], len(options), sample_id),
      task=_text(row['task_type'], 'task_type'),
      meta={k: str(row[k]) for k in ('duration', 'domain', 'sub_category', 'video_id') if row.get(k) is not None},
    )

  return _report(
    _collect(((str(r.get('question_id', f'row{i}')), r) for i, r in enumerate(rows)), build, check_videos),
    'videomme',
    parquet,
  )


# ----------------------------------------------------------------------------------------------
# EgoSchema.


def load_egoschema(
  questions_json: str | os.PathLike[str],
  video_root: str | os.PathLike[str],
  answers_json: str | os.PathLike[str] | None = None,
  subset_only: bool = False,
  check_videos: bool = True,
) -> LoadResult:
  """Loads EgoSchema questions against the release's `videos/` folder; answers from
  subset_answers.json where given, else None. meta['subset'] is 'true' for questions in the answers
  file (the public 500-question subset), 'false' for the rest of the full 5031 (scored only by the
  benchmark's server).

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
    item = _object(item, f'an item of {questions_json}')
    uid = _text(item['q_uid'], 'q_uid')
    options = [_text(item[f'option {i}'], f'option {i}') for i in range(5)]
    answer = answers.get(uid)
    return VideoQASample(
      id=uid,
      video=_video_with_extension(video_root, _inside_root(video_root, uid, 'q_uid'), EGOSCHEMA_EXTENSIONS),
      question=_text(item['question'], 'question'),
      options=options,
      answer=None if answer is None else _int(answer, 'answer'),
      task='egoschema',
      meta={'subset': 'true' if uid in answers else 'false'},
    )

  rows = ((str(q.get('q_uid', f'row{i}')) if isinstance(q, dict) else f'row{i}', q) for i, q in enumerate(questions))
  return _report(_collect(rows, build, check_videos), 'egoschema', questions_json)


# ----------------------------------------------------------------------------------------------
# NExT-QA (multiple choice).


def load_nextqa(
  csv_path: str | os.PathLike[str],
  video_root: str | os.PathLike[str],
  video_map_json: str | os.PathLike[str] | None = None,
  check_videos: bool = True,
) -> LoadResult:
  """Loads a NExT-QA multiple-choice csv against the release's `NExTVideo/` folder; id =
  '<video>_<qid>', task = type (CW, CH causal; TN, TC, TP temporal; DC, DL, DO, DB descriptive)."""
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f'NExT-QA csv not found: {csv_path}')
  video_map = None if video_map_json is None else _read_json(video_map_json)
  try:
    with open(csv_path, encoding='utf-8', newline='') as f:
      rows = list(csv.DictReader(f))
  except UnicodeDecodeError as e:
    raise ValueError(
      f'annotation file {csv_path} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8'
    ) from e

  def build(row):
    video = _text(row['video'], 'video')
    sample_id = f"{video}_{_int(row['qid'], 'qid')}"
    relative = video_map[video] if video_map is not None else video
    options = [_text(row[f'a{i}'], f'a{i}') for i in range(5)]
    return VideoQASample(
      id=sample_id,
      video=os.path.join(os.fspath(video_root), _inside_root(video_root, relative, 'video') + '.mp4'),
      question=_text(row['question'], 'question'),
      options=options,
      answer=_int(row['answer'], 'answer'),
      task=_text(row['type'], 'type'),
    )

  return _report(
    _collect(((f"{r.get('video')}_{r.get('qid')}", r) for r in rows), build, check_videos), 'nextqa', csv_path
  )


# ----------------------------------------------------------------------------------------------
# LongVideoBench.


def load_longvideobench(
  json_path: str | os.PathLike[str], video_root: str | os.PathLike[str], check_videos: bool = True
) -> LoadResult:
  """Loads lvb_val.json / lvb_test_wo_gt.json against the release's `videos/` folder; task =
  question_category, meta = duration_group, topic_category, level, duration. An item's `duration`
  (seconds) becomes end_s: frames are sampled inside [0, duration], as the benchmark's loader does."""
  items = _read_json(json_path)
  if not isinstance(items, list):
    raise ValueError(f'LongVideoBench file {json_path} must hold a JSON list')

  def build(item):
    item = _object(item, f'an item of {json_path}')
    answer = item.get('correct_choice')
    duration = _seconds(item, 'duration')
    if duration is not None and duration <= 0:
      raise ValueError(f"field 'duration' must be positive seconds, got {duration!r}")
    return VideoQASample(
      id=_text(item['id'], 'id'),
      video=os.path.join(
        os.fspath(video_root), _inside_root(video_root, _text(item['video_path'], 'video_path'), 'video_path')
      ),
      question=_text(item['question'], 'question'),
      options=_options(item['candidates'], 'candidates'),
      answer=None if answer is None else _int(answer, 'correct_choice'),
      task=_text(item['question_category'], 'question_category'),
      end_s=duration,
      meta={
        k: str(item[k]) for k in ('duration_group', 'topic_category', 'level', 'duration') if item.get(k) is not None
      },
    )

  rows = ((str(it.get('id', f'row{i}')) if isinstance(it, dict) else f'row{i}', it) for i, it in enumerate(items))
  return _report(_collect(rows, build, check_videos), 'longvideobench', json_path)


# ----------------------------------------------------------------------------------------------
# The synthetic world (jaxvlm.data.synthetic) writes MVBench-format splits.


def load_synthetic(ann: str | os.PathLike[str], check_videos: bool = True) -> LoadResult:
  """Loads a split directory written by `synthetic.generate` (json/ and videos/ inside)."""
  return _report(_load_mvbench(os.path.join(ann, 'json'), os.path.join(ann, 'videos'), check_videos), 'synthetic', ann)


# ----------------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[..., LoadResult]] = {
  'mvbench': load_mvbench,
  'synthetic': load_synthetic,
  'videomme': load_videomme,
  'egoschema': load_egoschema,
  'nextqa': load_nextqa,
  'longvideobench': load_longvideobench,
}


# Optional loader arguments a config may carry for every benchmark (configs/common.py), unset by default.
OPTIONAL_ARGS = ('answers_json', 'subset_only', 'video_map_json')


def load_benchmark(name: str, **kwargs: Any) -> LoadResult:
  """Dispatches to the loader registered under `name` (see LOADERS).

  Every loader's first argument is its annotation file; configs may pass it as `ann=` whatever
  the loader calls it (`ann_json`, `parquet`, `questions_json`, `csv_path`, `json_path`). One config
  data block serves every benchmark: an OPTIONAL_ARGS key left unset ('', None or False) is dropped when
  the loader does not take it, or passed as None ('' / None) when it does; a set one the loader does
  not take is an error naming it.
  """
  try:
    loader = LOADERS[name.lower()]
  except KeyError:
    raise ValueError(f'unknown benchmark {name!r}; known: {sorted(LOADERS)}') from None
  params = inspect.signature(loader).parameters
  if 'ann' in kwargs:
    first = next(iter(params))
    if first != 'ann':
      if first in kwargs:
        raise ValueError(f'{name}: pass the annotation file as ann= or {first}=, not both')
      kwargs[first] = kwargs.pop('ann')
  for key in OPTIONAL_ARGS:
    if key not in kwargs:
      continue
    unset = kwargs[key] in ('', None, False)
    if key not in params:
      if not unset:
        raise ValueError(f'{name}: the loader takes no {key} (got {kwargs[key]!r}); it takes {list(params)}')
      del kwargs[key]
    elif kwargs[key] in ('', None):
      kwargs[key] = params[key].default
  return loader(**kwargs)
