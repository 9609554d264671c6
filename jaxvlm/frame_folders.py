"""Frame folders: a sample whose frames ship as numbered images instead of a video file.

MVBench's Episodic Reasoning items are folders of TVQA frames extracted at 3 fps (`00001.jpg`,
`00002.jpg`, ...). Here a folder of F images is a video of F frames at the sample's `frame_fps`:
image i of the sorted listing (0-based) is frame i, shown at i / frame_fps seconds. The index rules
(uniform, pool, fps) and clip bounds are video.py's, so a frame folder and a video of the same frames
sample the same indices.

`sample_frames_of(sample, ...)` is what experiments call for any sample: it reads a frame folder here
and hands a video file to `video.sample_frames`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from jaxvlm import video
from jaxvlm.data import VideoQASample

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def _order(name: str) -> tuple:
  """Numeric stems sort by value ('00010' after '00009', '10' after '9'); others by name after them."""
  stem = os.path.splitext(name)[0]
  digits = re.fullmatch(r'\D*(\d+)', stem)
  return (0, int(digits.group(1)), name) if digits else (1, 0, name)


def list_frames(folder: str | os.PathLike[str]) -> list[str]:
  """Paths of the folder's images in frame order; raises VideoError naming the folder when it is
  missing or holds no image."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise video.VideoError(f'frame folder not found: {folder}')
  names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_order)
  if not names:
    raise video.VideoError(f'frame folder holds no {"/".join(IMAGE_EXTENSIONS)} images: {folder}')
  return [os.path.join(folder, n) for n in names]


def read_frame_folder(folder: str | os.PathLike[str], indices, fps: float) -> video.Frames:
  """Decodes frames `indices` (0-based into the sorted listing; any order, repeats allowed) to RGB
  uint8 [N, H, W, 3]; every image must have the first one's size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (only frame folders need it)

  paths = list_frames(folder)
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise ValueError(f'no frame indices requested for {folder}')
  bad = indices[(indices < 0) | (indices >= len(paths))]
  if bad.size:
    raise IndexError(f'frame indices {bad.tolist()[:5]} out of range [0, {len(paths)}) for {folder}')
  cache: dict[int, np.ndarray] = {}
  for i in dict.fromkeys(indices.tolist()):
    try:
      with Image.open(paths[i]) as img:
        cache[i] = np.asarray(img.convert('RGB'), np.uint8)
    except OSError as e:
      raise video.VideoError(f'cannot read frame image {paths[i]}: {e}') from e
  first = cache[int(indices[0])].shape
  odd = [(paths[i], a.shape) for i, a in cache.items() if a.shape != first]
  if odd:
    raise video.VideoError(
      f'frame {odd[0][0]} has shape {odd[0][1]}, frame {paths[int(indices[0])]} has '
      f'{first}: a frame folder must hold one size'
    )
  return video.Frames(
    pixels=np.stack([cache[i] for i in indices.tolist()]), indices=indices, timestamps_s=indices / float(fps)
  )


def sample_frame_folder(
  folder: str | os.PathLike[str],
  n: int,
  fps: float | None,
  rule: str = 'uniform',
  target_fps: float | None = None,
  start_s: float | None = None,
  end_s: float | None = None,
) -> video.Frames:
  """`video.sample_frames` for a frame folder extracted at `fps`: indices by `rule` inside the clip
  [start_s, end_s] (seconds; the whole folder by default)."""
  if not fps or fps <= 0:
    raise ValueError(f'frame folder {folder}: fps must be positive, got {fps!r}')
  total_frames = len(list_frames(folder))
  first, stop = (
    (0, total_frames) if start_s is None and end_s is None else video.clip_range(total_frames, fps, start_s, end_s)
  )
  total = stop - first
  if rule == 'uniform':
    indices = video.uniform_indices(total, n)
  elif rule == 'pool':
    indices = video.candidate_pool(total, n)
  elif rule == 'fps':
    if target_fps is None:
      raise ValueError("rule 'fps' needs target_fps")
    indices = video.fps_indices(total, fps, target_fps, max_frames=n)
  else:
    raise ValueError(f"unknown sampling rule {rule!r}; expected 'uniform', 'fps' or 'pool'")
  return read_frame_folder(folder, indices + first, fps)


def sample_frames_of(
  sample: VideoQASample, n: int, rule: str = 'uniform', target_fps: float | None = None
) -> video.Frames:
  """A sample's frames by `rule`, inside its clip: from its frame folder or its video file."""
  if sample.data_type == 'frame':
    return sample_frame_folder(
      sample.video, n, sample.frame_fps, rule=rule, target_fps=target_fps, start_s=sample.start_s, end_s=sample.end_s
    )
  return video.sample_frames(
    sample.video, n, rule=rule, target_fps=target_fps, start_s=sample.start_s, end_s=sample.end_s
  )
