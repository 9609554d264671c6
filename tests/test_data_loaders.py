"""Benchmark loaders on fixture files in each benchmark's published format (tests/fixtures/).

The fixture rows are short stand-ins; file names, field names, types and layout follow the released
annotation files (see the jaxvlm.data.loaders docstring). Malformed variants are derived from them
inside the tests, so the fixtures themselves stay well-formed.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxvlm import data
from jaxvlm.data import SampleError, VideoQASample

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _video_root(root: pathlib.Path, names) -> pathlib.Path:
  """Placeholder video files: loaders check existence, they never decode."""
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b'')
  return root


def _reasons(result) -> dict[str, str]:
  return dict(result.skipped)


# ---------------------------------------------------------------------------------------------
# The sample type.


def test_sample_validation_names_the_item():
  with pytest.raises(SampleError, match="'q7'.*empty option list"):
    VideoQASample('q7', 'v.mp4', 'q?', [], None)
  with pytest.raises(SampleError, match="'q8'.*answer index 4 out of range"):
    VideoQASample('q8', 'v.mp4', 'q?', ['a', 'b', 'c', 'd'], 4)
  with pytest.raises(SampleError, match="'q9'.*answer index -1"):
    VideoQASample('q9', 'v.mp4', 'q?', ['a'], -1)
  with pytest.raises(SampleError, match="'q10'.*before start"):
    VideoQASample('q10', 'v.mp4', 'q?', ['a'], 0, start_s=5.0, end_s=1.0)
  assert VideoQASample('ok', 'v.mp4', 'q?', ['a', 'b'], 1).answer_letter == 'B'


# ---------------------------------------------------------------------------------------------
# MVBench.

MVBENCH_VIDEOS = ['ZS9XR.mp4', 'Y2KRZ.mp4', '166583.webm', '52317.webm', '97441.webm']


def test_mvbench_directory_loads_every_task(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS)
  result = data.load_mvbench(FIXTURES / 'mvbench', root)
  assert result.skipped == []
  assert [s.id for s in result.samples] == [
      'action_antonym/0', 'action_antonym/1', 'action_antonym/2',
      'action_sequence/0', 'action_sequence/1']
  first = result.samples[0]
  assert first.task == 'action_antonym' and first.video == os.path.join(root, '166583.webm')
  assert first.options == ['Not sure', 'Scattering something down', 'Piling something up']
  assert first.answer == 2 and first.start_s is None and first.evidence_frames is None
  seq = result.samples[4]
  assert seq.answer == 1 and (seq.start_s, seq.end_s) == (3.0, 12.4)
  assert seq.options[seq.answer] == 'Put down the clothes.'


def test_mvbench_single_file(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS)
  result = data.load_mvbench(FIXTURES / 'mvbench' / 'action_sequence.json', root)
  assert [s.answer for s in result.samples] == [0, 1]
  assert [s.task for s in result.samples] == ['action_sequence'] * 2


def test_mvbench_malformed_rows_are_skipped_with_reasons(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS)
  good = json.loads((FIXTURES / 'mvbench' / 'action_sequence.json').read_text())
  bad = copy.deepcopy(good)
  bad[0]['candidates'] = []  # empty option list
  extra = [
      {**good[1], 'answer': 'Flew away.'},  # answer not among candidates
      {k: v for k, v in good[1].items() if k != 'question'},  # missing field
      {**good[1], 'candidates': 'Put down the shoe.'},  # wrong type
      'not an object',
      {**good[1], 'video': 'gone.mp4'},  # missing video
      {**good[1], 'start': 'soon'},  # unparsable time
  ]
  ann = tmp_path / 'action_sequence.json'
  ann.write_text(json.dumps(bad + extra))
  result = data.load_mvbench(ann, root)
  assert [s.id for s in result.samples] == ['action_sequence/1']
  reasons = _reasons(result)
  assert len(reasons) == 7
  assert 'empty option list' in reasons['action_sequence/0']
  assert 'not among the candidates' in reasons['action_sequence/2']
  assert "missing field 'question'" in reasons['action_sequence/3']
  assert 'must be a list' in reasons['action_sequence/4']
  assert 'malformed row' in reasons['action_sequence/5']
  assert reasons['action_sequence/6'] == f"video not found: {root / 'gone.mp4'}"
  assert 'malformed row' in reasons['action_sequence/7']


def test_mvbench_bad_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.json'):
    data.load_mvbench(tmp_path / 'nope.json', tmp_path)
  broken = tmp_path / 'broken.json'
  broken.write_text('[{"video": ')
  with pytest.raises(ValueError, match='broken.json.*not valid JSON'):
    data.load_mvbench(broken, tmp_path)
  empty_dir = tmp_path / 'empty'
  empty_dir.mkdir()
  with pytest.raises(FileNotFoundError, match='no MVBench task'):
    data.load_mvbench(empty_dir, tmp_path)


# ---------------------------------------------------------------------------------------------
# Video-MME.

VIDEOMME = FIXTURES / 'videomme' / 'test-00000-of-00001.parquet'


def test_videomme(tmp_path):
  root = _video_root(tmp_path, ['fFjv93ACGo8.mp4', 'Ly9Vt2zMQaQ.mp4'])
  result = data.load_videomme(VIDEOMME, root)
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['001-1', '001-2', '301-3']
  assert [s.answer for s in result.samples] == [2, 0, 1]
  first = result.samples[0]
  assert first.options == ['Apples.', 'Candles.', 'Berries.',
                           'The three kinds are of the same number.']
  assert first.video == os.path.join(root, 'fFjv93ACGo8.mp4')
  assert first.task == 'Counting Problem'
  assert first.meta == {'duration': 'short', 'domain': 'Knowledge',
                        'sub_category': 'Humanity & History', 'video_id': '001'}
  assert result.samples[2].meta['duration'] == 'long'


def test_videomme_malformed_rows(tmp_path):
  root = _video_root(tmp_path, ['fFjv93ACGo8.mp4'])  # Ly9Vt2zMQaQ.mp4 missing
  table = pq.read_table(VIDEOMME)
  rows = table.to_pylist()
  rows[0]['answer'] = 'E'
  rows[1]['options'] = ['Apples.', 'B. Candles.']
  rows.append({**rows[1], 'question_id': '001-9', 'options': [], 'answer': 'A'})
  path = tmp_path / 'bad.parquet'
  pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
  result = data.load_videomme(path, root)
  assert result.samples == []
  reasons = _reasons(result)
  assert "answer 'E' is not one of ABCD" in reasons['001-1']
  assert 'lacks prefix A.' in reasons['001-2']
  assert 'video not found' in reasons['301-3']
  assert 'empty option list' in reasons['001-9']


# ---------------------------------------------------------------------------------------------
# EgoSchema.

EGO_UIDS = ['001934bb-81bd-4cd8-a574-0472ef3f6678', '00b9a0de-c59e-49cb-a127-6081e2fb8c8e',
            '00f93e1e-cf4e-4835-88b4-4ad68216e86f']


def test_egoschema_with_and_without_answers(tmp_path):
  root = _video_root(tmp_path, [u + '.mp4' for u in EGO_UIDS])
  questions = FIXTURES / 'egoschema' / 'questions.json'
  answers = FIXTURES / 'egoschema' / 'subset_answers.json'
  full = data.load_egoschema(questions, root, answers)
  assert [s.id for s in full.samples] == EGO_UIDS
  assert [s.answer for s in full.samples] == [3, None, 3]
  assert all(len(s.options) == 5 for s in full.samples)
  assert full.samples[0].options[3] == 'C is cleaning dishes.'
  subset = data.load_egoschema(questions, root, answers, subset_only=True)
  assert [s.id for s in subset.samples] == [EGO_UIDS[0], EGO_UIDS[2]]
  unlabelled = data.load_egoschema(questions, root)
  assert [s.answer for s in unlabelled.samples] == [None] * 3


def test_egoschema_malformed(tmp_path):
  root = _video_root(tmp_path, [u + '.mp4' for u in EGO_UIDS])
  questions = json.loads((FIXTURES / 'egoschema' / 'questions.json').read_text())
  del questions[1]['option 4']
  (tmp_path / 'q.json').write_text(json.dumps(questions))
  (tmp_path / 'a.json').write_text(json.dumps({EGO_UIDS[0]: 7, EGO_UIDS[2]: 'three'}))
  result = data.load_egoschema(tmp_path / 'q.json', root, tmp_path / 'a.json')
  assert result.samples == []
  reasons = _reasons(result)
  assert 'answer index 7 out of range' in reasons[EGO_UIDS[0]]
  assert "missing field 'option 4'" in reasons[EGO_UIDS[1]]
  assert 'must be an integer' in reasons[EGO_UIDS[2]]


# ---------------------------------------------------------------------------------------------
# NExT-QA.


def test_nextqa_with_and_without_video_map(tmp_path):
  mapped = _video_root(tmp_path / 'mapped', ['1006/4010069381.mp4', '0000/4882821564.mp4'])
  result = data.load_nextqa(FIXTURES / 'nextqa' / 'val.csv', mapped,
                            FIXTURES / 'nextqa' / 'map_vid_vidorID.json')
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['4010069381_6', '4010069381_9', '4882821564_2']
  assert [s.answer for s in result.samples] == [1, 0, 4]
  assert [s.task for s in result.samples] == ['CH', 'CW', 'TN']
  assert result.samples[0].options[1] == 'tap their feet'
  assert result.samples[0].video == os.path.join(mapped, '1006/4010069381.mp4')
  flat = _video_root(tmp_path / 'flat', ['4010069381.mp4', '4882821564.mp4'])
  assert len(data.load_nextqa(FIXTURES / 'nextqa' / 'val.csv', flat).samples) == 3


def test_nextqa_malformed(tmp_path):
  root = _video_root(tmp_path, ['4010069381.mp4', '4882821564.mp4'])
  with open(FIXTURES / 'nextqa' / 'val.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  rows[0]['answer'] = '5'
  rows[1]['answer'] = 'two'
  rows[2]['a3'] = ''
  path = tmp_path / 'val.csv'
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  result = data.load_nextqa(path, root)
  assert result.samples == []
  reasons = _reasons(result)
  assert 'answer index 5 out of range for 5 options' in reasons['4010069381_6']
  assert 'must be an integer' in reasons['4010069381_9']
  assert "'a3' must be a non-empty string" in reasons['4882821564_2']


# ---------------------------------------------------------------------------------------------
# LongVideoBench.


def test_longvideobench_val_and_test(tmp_path):
  root = _video_root(tmp_path, ['86CxyhFV9MI.mp4', 'gZpcvXsEH0Y.mp4'])
  result = data.load_longvideobench(FIXTURES / 'longvideobench' / 'lvb_val.json', root)
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['86CxyhFV9MI_0', 'gZpcvXsEH0Y_1']
  assert [s.answer for s in result.samples] == [0, 2]
  assert [len(s.options) for s in result.samples] == [5, 4]
  assert [s.task for s in result.samples] == ['TOS', 'E3E']
  assert result.samples[0].meta['duration_group'] == '600'
  items = json.loads((FIXTURES / 'longvideobench' / 'lvb_val.json').read_text())
  for item in items:
    del item['correct_choice']  # the released test file has no answers
  items[1]['correct_choice'] = 4  # out of range for 4 candidates
  (tmp_path / 'lvb_test.json').write_text(json.dumps(items))
  test = data.load_longvideobench(tmp_path / 'lvb_test.json', root)
  assert [s.answer for s in test.samples] == [None]
  assert 'answer index 4 out of range' in _reasons(test)['gZpcvXsEH0Y_1']


# ---------------------------------------------------------------------------------------------
# Registry.


def test_load_benchmark_registry(tmp_path):
  root = _video_root(tmp_path, ['86CxyhFV9MI.mp4', 'gZpcvXsEH0Y.mp4'])
  result = data.load_benchmark('LongVideoBench',
                               json_path=FIXTURES / 'longvideobench' / 'lvb_val.json',
                               video_root=root)
  assert len(result.samples) == 2
  assert set(data.LOADERS) >= {'mvbench', 'videomme', 'egoschema', 'nextqa', 'longvideobench'}
  with pytest.raises(ValueError, match="unknown benchmark 'kinetics'"):
    data.load_benchmark('kinetics')


def test_load_benchmark_takes_the_annotation_file_as_ann(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS + ['4010069381.mp4', '4882821564.mp4'])
  mvbench = data.load_benchmark('mvbench', ann=str(FIXTURES / 'mvbench'), video_root=str(root))
  assert len(mvbench.samples) == 5
  nextqa = data.load_benchmark('nextqa', ann=FIXTURES / 'nextqa' / 'val.csv', video_root=root)
  assert len(nextqa.samples) == 3
  with pytest.raises(ValueError, match='not both'):
    data.load_benchmark('nextqa', ann='a.csv', csv_path='b.csv', video_root=root)


def test_check_videos_can_be_disabled(tmp_path):
  result = data.load_nextqa(FIXTURES / 'nextqa' / 'val.csv', tmp_path, check_videos=False)
  assert len(result.samples) == 3 and result.skipped == []
  strict = data.load_nextqa(FIXTURES / 'nextqa' / 'val.csv', tmp_path)
  assert strict.samples == [] and len(strict.skipped) == 3
