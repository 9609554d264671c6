"""Benchmark loaders on fixture trees laid out as each benchmark is released (tests/fixtures/).

The fixture rows are short stand-ins; file names, field names, types and directory layout follow the
releases (see the jaxvlm.data.loaders docstring): annotation files where the release puts them, and
zero-byte placeholders where its videos live (per-task folders, .webm / .avi / .MP4 / .mkv variants;
loaders check existence, they never decode). MVBench's TVQA frame folders hold real tiny JPEGs, read
in tests/test_frame_folders.py. Malformed variants are derived inside the tests, so the fixtures
themselves stay well-formed.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
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
# MVBench: fixtures/mvbench mirrors the release (json/<task>.json, video/<task folder>/...).

MVBENCH = FIXTURES / 'mvbench'
MVBENCH_VIDEOS = [
  'ZS9XR.mp4',
  'Y2KRZ.mp4',
  '166583.webm',
  '52317.webm',
  '97441.webm',
  'S001C002P003R002A013_rgb.avi',
  'S012C001P019R001A055_rgb.avi',
]


def test_mvbench_release_tree_loads_every_task():
  result = data.load_benchmark('mvbench', ann=str(MVBENCH / 'json'), video_root=str(MVBENCH / 'video'))
  assert result.skipped == []
  assert [s.id for s in result.samples] == [
    'action_antonym/0',
    'action_antonym/1',
    'action_antonym/2',
    'action_sequence/0',
    'action_sequence/1',
    'episodic_reasoning/0',
    'episodic_reasoning/1',
    'fine_grained_pose/0',
    'fine_grained_pose/1',
  ]
  by_id = {s.id: s for s in result.samples}
  antonym = by_id['action_antonym/0']
  assert antonym.video == os.path.join(MVBENCH / 'video', 'ssv2_video', '166583.webm')
  assert antonym.options == ['Not sure', 'Scattering something down', 'Piling something up']
  assert antonym.answer == 2 and antonym.start_s is None and antonym.evidence_frames is None
  assert antonym.data_type == 'video' and antonym.frame_fps is None
  seq = by_id['action_sequence/1']
  assert seq.video == os.path.join(MVBENCH / 'video', 'star', 'Charades_v1_480', 'Y2KRZ.mp4')
  assert seq.answer == 1 and (seq.start_s, seq.end_s) == (3.0, 12.4)
  assert seq.options[seq.answer] == 'Put down the clothes.'
  pose = by_id['fine_grained_pose/0']
  assert pose.video.endswith(os.path.join('nturgbd', 'S001C002P003R002A013_rgb.avi'))
  episodic = by_id['episodic_reasoning/0']
  assert episodic.data_type == 'frame' and episodic.frame_fps == data.MVBENCH_FRAME_FPS == 3.0
  assert os.path.isdir(episodic.video)
  assert episodic.video == os.path.join(MVBENCH / 'video', 'tvqa', 'frames_fps3_hq', 'castle_s07e04_seg02_clip_14')
  assert (episodic.start_s, episodic.end_s) == (1.0, 3.0) and episodic.answer == 0


def test_mvbench_task_table_is_the_releases():
  tasks = data.MVBENCH_TASKS
  assert len(tasks) == 20 and len({t.name for t in tasks.values()}) == 20
  assert {k for k, t in tasks.items() if t.clipped} == {
    'action_sequence',
    'action_prediction',
    'object_interaction',
    'action_localization',
    'episodic_reasoning',
  }
  assert {k for k, t in tasks.items() if t.data_type == 'frame'} == {'episodic_reasoning'}
  assert tasks['fine_grained_pose'].folder == 'nturgbd'
  assert tasks['action_antonym'].folder == 'ssv2_video'
  assert {t.folder for t in tasks.values()} >= {'clevrer/video_validation', 'perception/videos'}


def test_mvbench_clips_only_where_the_release_does(tmp_path):
  (tmp_path / 'json').mkdir()
  antonym = json.loads((MVBENCH / 'json' / 'action_antonym.json').read_text())
  antonym[0].update(start=1.0, end=2.0)  # ignored: the release reads Action Antonym videos whole
  (tmp_path / 'json' / 'action_antonym.json').write_text(json.dumps(antonym))
  seq = json.loads((MVBENCH / 'json' / 'action_sequence.json').read_text())
  del seq[0]['end']
  (tmp_path / 'json' / 'action_sequence.json').write_text(json.dumps(seq))
  result = data.load_mvbench(tmp_path / 'json', MVBENCH / 'video')
  assert (result.samples[0].start_s, result.samples[0].end_s) == (None, None)
  reasons = _reasons(result)
  assert list(reasons) == ['action_sequence/0']
  assert 'task action_sequence is sampled inside [start, end]' in reasons['action_sequence/0']


def test_mvbench_finds_videos_under_data0613_or_flat(tmp_path):
  _video_root(tmp_path, ['data0613/star/Charades_v1_480/ZS9XR.mp4', 'Y2KRZ.mp4'])
  result = data.load_mvbench(MVBENCH / 'json' / 'action_sequence.json', tmp_path)
  assert result.skipped == []
  assert [s.video for s in result.samples] == [
    os.path.join(tmp_path, 'data0613', 'star', 'Charades_v1_480', 'ZS9XR.mp4'),
    os.path.join(tmp_path, 'Y2KRZ.mp4'),
  ]
  # A custom task (not in the release table) reads video_root/<video> and keeps its clip.
  custom = tmp_path / 'my_task.json'
  custom.write_text(
    json.dumps(
      [{'video': 'Y2KRZ.mp4', 'question': 'q?', 'candidates': ['a', 'b'], 'answer': 'b', 'start': 1, 'end': 2}]
    )
  )
  (sample,) = data.load_mvbench(custom, tmp_path).samples
  assert sample.video == os.path.join(tmp_path, 'Y2KRZ.mp4') and (sample.start_s, sample.end_s) == (1, 2)


def test_mvbench_missing_videos_and_frame_folders_name_the_task_folder(tmp_path):
  result = data.load_mvbench(MVBENCH / 'json', tmp_path)
  assert result.samples == []
  reasons = _reasons(result)
  assert reasons['action_antonym/0'] == f"video not found: {tmp_path / 'ssv2_video' / '166583.webm'}"
  assert reasons['episodic_reasoning/1'] == (
    f"frame folder not found: {tmp_path / 'tvqa' / 'frames_fps3_hq' / 'friends_s03e09_seg02_clip_07'}"
  )
  assert result.skipped_by_reason() == {
    'video not found': [
      'action_antonym/0',
      'action_antonym/1',
      'action_antonym/2',
      'action_sequence/0',
      'action_sequence/1',
      'fine_grained_pose/0',
      'fine_grained_pose/1',
    ],
    'frame folder not found': ['episodic_reasoning/0', 'episodic_reasoning/1'],
  }


def test_mvbench_single_file(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS)
  result = data.load_mvbench(MVBENCH / 'json' / 'action_sequence.json', root)
  assert [s.answer for s in result.samples] == [0, 1]
  assert [s.task for s in result.samples] == ['action_sequence'] * 2


def test_mvbench_malformed_rows_are_skipped_with_reasons(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS)
  good = json.loads((MVBENCH / 'json' / 'action_sequence.json').read_text())
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
  assert 'item 5 of' in reasons['action_sequence/5']
  assert "is a JSON str ('not an object')" in reasons['action_sequence/5']
  # Not in the task folder, under data0613/ or flat: reported at the task folder.
  assert reasons['action_sequence/6'] == f"video not found: {root / 'star' / 'Charades_v1_480' / 'gone.mp4'}"
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
# Video-MME: fixtures/videomme mirrors the release (videomme/test-*.parquet, data/<videoID>.<ext>).

VIDEOMME = FIXTURES / 'videomme' / 'videomme' / 'test-00000-of-00001.parquet'
VIDEOMME_DATA = FIXTURES / 'videomme' / 'data'


def test_videomme_release_tree_with_extension_variants():
  result = data.load_videomme(VIDEOMME, VIDEOMME_DATA)
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['001-1', '001-2', '301-3', '150-2']
  assert [s.answer for s in result.samples] == [2, 0, 1, 3]
  first = result.samples[0]
  assert first.options == ['Apples.', 'Candles.', 'Berries.', 'The three kinds are of the same number.']
  assert first.task == 'Counting Problem'
  assert first.meta == {
    'duration': 'short',
    'domain': 'Knowledge',
    'sub_category': 'Humanity & History',
    'video_id': '001',
  }
  # The release's .mp4 / .MP4 / .mkv files are each found under data/.
  assert [os.path.basename(s.video) for s in result.samples] == [
    'fFjv93ACGo8.mp4',
    'fFjv93ACGo8.mp4',
    'Ly9Vt2zMQaQ.MP4',
    'q1XKhJ3cVhE.mkv',
  ]
  assert [s.meta['duration'] for s in result.samples] == ['short', 'short', 'long', 'medium']


def test_videomme_prefers_mp4_and_reports_the_mp4_path_when_none_exists(tmp_path):
  _video_root(tmp_path, ['fFjv93ACGo8.mp4', 'fFjv93ACGo8.mkv'])
  result = data.load_videomme(VIDEOMME, tmp_path)
  assert [s.video for s in result.samples] == [str(tmp_path / 'fFjv93ACGo8.mp4')] * 2
  assert _reasons(result)['301-3'] == f"video not found: {tmp_path / 'Ly9Vt2zMQaQ.mp4'}"


def test_videomme_malformed_rows(tmp_path):
  root = _video_root(tmp_path, ['fFjv93ACGo8.mp4'])  # Ly9Vt2zMQaQ missing
  table = pq.read_table(VIDEOMME)
  rows = table.to_pylist()[:3]
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
# EgoSchema: fixtures/egoschema mirrors the release (questions.json, subset_answers.json, videos/).

EGOSCHEMA = FIXTURES / 'egoschema'
EGO_UIDS = [
  '001934bb-81bd-4cd8-a574-0472ef3f6678',
  '00b9a0de-c59e-49cb-a127-6081e2fb8c8e',
  '00f93e1e-cf4e-4835-88b4-4ad68216e86f',
]


def test_egoschema_full_and_subset():
  questions, answers = EGOSCHEMA / 'questions.json', EGOSCHEMA / 'subset_answers.json'
  full = data.load_egoschema(questions, EGOSCHEMA / 'videos', answers)
  assert full.skipped == []
  assert [s.id for s in full.samples] == EGO_UIDS
  assert [s.answer for s in full.samples] == [3, None, 3]
  assert [s.meta['subset'] for s in full.samples] == ['true', 'false', 'true']
  assert all(len(s.options) == 5 for s in full.samples)
  assert full.samples[0].options[3] == 'C is cleaning dishes.'
  assert full.samples[2].video.endswith(EGO_UIDS[2] + '.MP4')  # the .MP4 variant is found
  subset = data.load_egoschema(questions, EGOSCHEMA / 'videos', answers, subset_only=True)
  assert [s.id for s in subset.samples] == [EGO_UIDS[0], EGO_UIDS[2]]
  unlabelled = data.load_egoschema(questions, EGOSCHEMA / 'videos')
  assert [s.answer for s in unlabelled.samples] == [None] * 3


def test_egoschema_malformed(tmp_path):
  root = _video_root(tmp_path, [u + '.mp4' for u in EGO_UIDS])
  questions = json.loads((EGOSCHEMA / 'questions.json').read_text())
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
# NExT-QA: fixtures/nextqa mirrors the release (dataset/nextqa/*.csv + map, NExTVideo/<dir>/<id>.mp4).

NEXTQA = FIXTURES / 'nextqa' / 'dataset' / 'nextqa'


def test_nextqa_with_and_without_video_map(tmp_path):
  result = data.load_nextqa(NEXTQA / 'val.csv', FIXTURES / 'nextqa' / 'NExTVideo', NEXTQA / 'map_vid_vidorID.json')
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['4010069381_6', '4010069381_9', '4882821564_2']
  assert [s.answer for s in result.samples] == [1, 0, 4]
  assert [s.task for s in result.samples] == ['CH', 'CW', 'TN']
  assert result.samples[0].options[1] == 'tap their feet'
  assert result.samples[0].video == os.path.join(FIXTURES / 'nextqa' / 'NExTVideo', '1006/4010069381.mp4')
  flat = _video_root(tmp_path / 'flat', ['4010069381.mp4', '4882821564.mp4'])
  assert len(data.load_nextqa(NEXTQA / 'val.csv', flat).samples) == 3


def test_nextqa_malformed(tmp_path):
  root = _video_root(tmp_path, ['4010069381.mp4', '4882821564.mp4'])
  with open(NEXTQA / 'val.csv', newline='') as f:
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
# LongVideoBench: fixtures/longvideobench mirrors the release (lvb_val.json, videos/<video_path>).

LVB = FIXTURES / 'longvideobench'


def test_longvideobench_val_and_test(tmp_path):
  result = data.load_longvideobench(LVB / 'lvb_val.json', LVB / 'videos')
  assert result.skipped == []
  assert [s.id for s in result.samples] == ['86CxyhFV9MI_0', 'gZpcvXsEH0Y_1']
  assert [s.answer for s in result.samples] == [0, 2]
  assert [len(s.options) for s in result.samples] == [5, 4]
  assert [s.task for s in result.samples] == ['TOS', 'E3E']
  assert [s.meta['duration_group'] for s in result.samples] == ['600', '60']
  # duration bounds sampling to [0, duration], as the benchmark's loader does.
  assert [(s.start_s, s.end_s) for s in result.samples] == [(None, 527.63), (None, 58.2)]
  assert result.samples[0].meta['duration'] == '527.63'
  root = _video_root(tmp_path, ['86CxyhFV9MI.mp4', 'gZpcvXsEH0Y.mp4'])
  items = json.loads((LVB / 'lvb_val.json').read_text())
  for item in items:
    del item['correct_choice']  # the released test file has no answers
  items[1]['correct_choice'] = 4  # out of range for 4 candidates
  (tmp_path / 'lvb_test.json').write_text(json.dumps(items))
  test = data.load_longvideobench(tmp_path / 'lvb_test.json', root)
  assert [s.answer for s in test.samples] == [None]
  assert 'answer index 4 out of range' in _reasons(test)['gZpcvXsEH0Y_1']
  items[0]['duration'] = 0
  (tmp_path / 'lvb_bad.json').write_text(json.dumps(items))
  assert (
    "'duration' must be positive"
    in _reasons(data.load_longvideobench(tmp_path / 'lvb_bad.json', root))['86CxyhFV9MI_0']
  )


# ---------------------------------------------------------------------------------------------
# The one summary line every loader logs.


def test_every_loader_logs_one_summary_with_grouped_reasons(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='jaxvlm.data.loaders')
  clean = data.load_longvideobench(LVB / 'lvb_val.json', LVB / 'videos')
  items = json.loads((MVBENCH / 'json' / 'action_antonym.json').read_text())
  (tmp_path / 'action_antonym.json').write_text(json.dumps(items * 2 + [{**items[0], 'answer': 'x'}]))
  messy = data.load_mvbench(tmp_path / 'action_antonym.json', tmp_path / 'empty')
  assert len(clean.samples) == 2 and len(messy.skipped) == 7
  assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
  assert caplog.records[0].getMessage() == (f"longvideobench: loaded 2 samples from {LVB / 'lvb_val.json'}, skipped 0")
  assert caplog.records[1].getMessage() == (
    f"mvbench: loaded 0 samples from {tmp_path / 'action_antonym.json'}, skipped 7: video not found x6 "
    '(e.g. action_antonym/0, action_antonym/1, action_antonym/2, ...); answer … is not among the '
    'candidates x1 (e.g. action_antonym/6)'
  )


def test_reason_kind_blanks_item_specifics():
  assert data.loaders.reason_kind("sample 'q1': answer 'E' is not one of ABCD") == ('answer … is not one of ABCD')
  assert data.loaders.reason_kind('video not found: /a/b.mp4') == 'video not found'
  assert data.loaders.reason_kind("malformed row: missing field 'question'") == (
    "malformed row: missing field 'question'"
  )
  assert data.loaders.reason_kind("sample 'q2': answer index 7 out of range for 5 options") == (
    'answer index … out of range for … options'
  )


# ---------------------------------------------------------------------------------------------
# Registry.


def test_load_benchmark_registry():
  result = data.load_benchmark('LongVideoBench', json_path=LVB / 'lvb_val.json', video_root=LVB / 'videos')
  assert len(result.samples) == 2
  assert set(data.LOADERS) >= {'mvbench', 'videomme', 'egoschema', 'nextqa', 'longvideobench'}
  with pytest.raises(ValueError, match="unknown benchmark 'kinetics'"):
    data.load_benchmark('kinetics')


def test_load_benchmark_takes_the_annotation_file_as_ann(tmp_path):
  root = _video_root(tmp_path, MVBENCH_VIDEOS + ['4010069381.mp4', '4882821564.mp4'])
  mvbench = data.load_benchmark('mvbench', ann=str(MVBENCH / 'json' / 'action_antonym.json'), video_root=str(root))
  assert len(mvbench.samples) == 3
  nextqa = data.load_benchmark('nextqa', ann=NEXTQA / 'val.csv', video_root=root)
  assert len(nextqa.samples) == 3
  with pytest.raises(ValueError, match='not both'):
    data.load_benchmark('nextqa', ann='a.csv', csv_path='b.csv', video_root=root)


def test_one_config_data_block_serves_every_benchmark():
  """configs/common.py's data block (ann, video_root + every optional loader key, unset) on each tree."""
  from configs import common  # pylint: disable=import-outside-toplevel

  def block(**set_keys):
    return {**common.MVBENCH_DATA, **set_keys}

  assert len(data.load_benchmark('mvbench', **block(ann=MVBENCH / 'json', video_root=MVBENCH / 'video')).samples) == 9
  assert len(data.load_benchmark('videomme', **block(ann=VIDEOMME, video_root=VIDEOMME_DATA)).samples) == 4
  ego = data.load_benchmark(
    'egoschema',
    **block(
      ann=EGOSCHEMA / 'questions.json',
      video_root=EGOSCHEMA / 'videos',
      answers_json=EGOSCHEMA / 'subset_answers.json',
      subset_only=True,
    ),
  )
  assert [s.answer for s in ego.samples] == [3, 3]
  nextqa = data.load_benchmark(
    'nextqa',
    **block(
      ann=NEXTQA / 'val.csv',
      video_root=FIXTURES / 'nextqa' / 'NExTVideo',
      video_map_json=NEXTQA / 'map_vid_vidorID.json',
    ),
  )
  assert len(nextqa.samples) == 3
  assert (
    len(data.load_benchmark('longvideobench', **block(ann=LVB / 'lvb_val.json', video_root=LVB / 'videos')).samples)
    == 2
  )
  with pytest.raises(ValueError, match="mvbench: the loader takes no answers_json"):
    data.load_benchmark('mvbench', **block(ann=MVBENCH / 'json', video_root=MVBENCH / 'video', answers_json='a.json'))


def test_check_videos_can_be_disabled(tmp_path):
  result = data.load_nextqa(NEXTQA / 'val.csv', tmp_path, check_videos=False)
  assert len(result.samples) == 3 and result.skipped == []
  strict = data.load_nextqa(NEXTQA / 'val.csv', tmp_path)
  assert strict.samples == [] and len(strict.skipped) == 3


# ---------------------------------------------------------------------------------------------
# Issue 16: duplicates keep the first item, bad files and items are named, paths stay in video_root.


def test_a_duplicate_id_keeps_the_first_item_and_records_the_repeat_under_its_own_id(tmp_path):
  root = _video_root(tmp_path, ['a.mp4', 'b.mp4', 'c.mp4'])
  item = lambda i, video: {
    'id': i,
    'video': video,
    'question': f'{i} {video}?',
    'candidates': ['x', 'y'],
    'answer': 'x',
  }
  ann = tmp_path / 'task.json'
  ann.write_text(json.dumps([item('q1', 'a.mp4'), item('q1', 'b.mp4'), item('q2', 'c.mp4'), item('q1', 'c.mp4')]))
  result = data.load_mvbench(ann, root)
  assert [(s.id, os.path.basename(s.video)) for s in result.samples] == [('q1', 'a.mp4'), ('q2', 'c.mp4')]
  reasons = _reasons(result)
  assert set(reasons) == {'q1#duplicate2', 'q1#duplicate3'}  # never the kept item's id
  assert "duplicate id 'q1' (item task/1): the first item with this id is kept" == reasons['q1#duplicate2']


def test_a_non_utf8_annotation_file_is_named(tmp_path):
  ann = tmp_path / 'latin1.json'
  ann.write_bytes(b'[{"question": "caf\xe9"}]')  # Latin-1, not UTF-8
  with pytest.raises(ValueError, match=f'annotation file {ann} is not UTF-8 text'):
    data.load_mvbench(ann, tmp_path)
  csv_path = tmp_path / 'val.csv'
  csv_path.write_bytes(b'video,qid,question\n1,2,caf\xe9\n')
  with pytest.raises(ValueError, match=f'annotation file {csv_path} is not UTF-8 text'):
    data.load_nextqa(csv_path, tmp_path)


def test_bare_string_items_are_named_in_every_json_loader(tmp_path):
  for loader, name in ((data.load_egoschema, 'questions.json'), (data.load_longvideobench, 'lvb_val.json')):
    ann = tmp_path / name
    ann.write_text(json.dumps(['just text']))
    reason = _reasons(loader(ann, tmp_path))['row0']
    assert f'an item of {ann} is a JSON str' in reason, reason


@pytest.mark.parametrize('video', ['../outside.mp4', 'sub/../../outside.mp4', '/etc/hostname'])
def test_a_video_path_out_of_video_root_is_refused(tmp_path, video):
  root = _video_root(tmp_path / 'root', ['inside.mp4'])
  (tmp_path / 'outside.mp4').write_bytes(b'')
  ann = tmp_path / 'task.json'
  ann.write_text(
    json.dumps(
      [
        {'video': video, 'question': 'q?', 'candidates': ['x', 'y'], 'answer': 'x'},
        {'video': 'sub/../inside.mp4', 'question': 'q?', 'candidates': ['x', 'y'], 'answer': 'x'},
      ]
    )
  )
  result = data.load_mvbench(ann, root, check_videos=False)
  assert [s.id for s in result.samples] == ['task/1']  # '..' that stays inside is fine
  assert f"{video!r} leaves video_root {str(root)!r}" in _reasons(result)['task/0']
