"""Frame folders (MVBench Episodic Reasoning: TVQA frames at 3 fps) read like videos.

The fixture folders hold 12 and 9 tiny JPEGs whose pixels all equal 20 * (frame number - 1).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxvlm import data, frame_folders, video
from tests.test_data_loaders import MVBENCH


def _episodic():
  result = data.load_mvbench(MVBENCH / 'json' / 'episodic_reasoning.json', MVBENCH / 'video')
  assert result.skipped == []
  return result.samples


def _values(frames) -> np.ndarray:
  return frames.pixels.reshape(len(frames.pixels), -1).mean(-1)


def test_sample_frames_of_reads_the_clip_of_a_frame_folder():
  first, second = _episodic()
  # Clip [1, 3] s at 3 fps = frames 3..9 (0-based); 4 uniform frames over those 7.
  frames = frame_folders.sample_frames_of(first, 4)
  np.testing.assert_array_equal(frames.indices, [3, 5, 7, 9])
  np.testing.assert_allclose(frames.timestamps_s, [1.0, 5 / 3, 7 / 3, 3.0])
  assert frames.pixels.shape == (4, 6, 8, 3) and frames.pixels.dtype == np.uint8
  np.testing.assert_allclose(_values(frames), 20 * frames.indices, atol=2)  # JPEG: near, not exact
  # The index rules are video.py's over the clip's frames.
  np.testing.assert_array_equal(frames.indices, video.uniform_indices(7, 4) + 3)
  pool = frame_folders.sample_frames_of(first, 32, rule='pool')
  np.testing.assert_array_equal(pool.indices, np.arange(3, 10))  # the pool never repeats a frame
  # Clip [0, 2.5] s of a 9-frame folder = frames 0..7.
  np.testing.assert_array_equal(frame_folders.sample_frames_of(second, 2).indices, [0, 7])


def test_frame_order_is_numeric_and_ignores_other_files(tmp_path):
  for i in (1, 2, 10, 9):  # '10' must come after '9', not after '1'
    Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / f'{i}.png')
  (tmp_path / 'notes.txt').write_text('not a frame')
  assert [p.rsplit('/', 1)[-1] for p in frame_folders.list_frames(tmp_path)] == ['1.png', '2.png', '9.png', '10.png']
  frames = frame_folders.read_frame_folder(tmp_path, [3, 0, 3], fps=1.0)
  np.testing.assert_array_equal(frames.pixels[:, 0, 0, 0], [10, 1, 10])


def test_frame_folder_errors_name_the_folder_or_frame(tmp_path):
  with pytest.raises(video.VideoError, match='frame folder not found: .*missing'):
    frame_folders.list_frames(tmp_path / 'missing')
  with pytest.raises(video.VideoError, match='holds no .jpg'):
    frame_folders.list_frames(tmp_path)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / '00001.jpg')
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / '00002.jpg')
  with pytest.raises(video.VideoError, match=r'00002.jpg has shape \(4, 6, 3\).*00001.jpg has \(4, 4, 3\)'):
    frame_folders.read_frame_folder(tmp_path, [0, 1], fps=3.0)
  with pytest.raises(IndexError, match=r'\[5\] out of range \[0, 2\)'):
    frame_folders.read_frame_folder(tmp_path, [5], fps=3.0)
  (tmp_path / '00003.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(video.VideoError, match='cannot read frame image .*00003.jpg'):
    frame_folders.read_frame_folder(tmp_path, [2], fps=3.0)
  with pytest.raises(ValueError, match='holds no frame'):
    frame_folders.sample_frame_folder(tmp_path, 2, fps=3.0, start_s=10.0, end_s=11.0)


def test_a_frame_sample_needs_its_rate():
  with pytest.raises(data.SampleError, match="'x'.*needs a positive frame_fps"):
    data.VideoQASample('x', 'dir', 'q?', ['a'], 0, data_type='frame')
  with pytest.raises(data.SampleError, match="data_type 'gif'"):
    data.VideoQASample('x', 'v.gif', 'q?', ['a'], 0, data_type='gif')
