"""Knockout specs: which attention edges a study removes, in which layers (the token layout they
read is `prompts.TokenLayout`).

A `KnockoutSpec` is an `attention.LayerRule` whose arrays carry a leading layer axis [L, ...]
(and, for a sweep, one more leading axis [N, L, ...]). Windows, cutoffs and knockout types are array
values, so a sweep over them never recompiles. Layers are 0-based here; plots report them 1-based.

Conventions (so results compare across tools):
  * every non-video token is a text query;
  * the image_newline token after the frames is a video token of no frame (frame -1): Language-to-Video
    blocks it as a key, Video Temporal and Video Spatial never touch its edges.
  * Qwen2.5-VL: a "frame" is a temporal patch; vision_start / vision_end are video tokens of no frame
    (docs/architecture.md, Conventions).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from jaxvlm.models.attention import NUM_GROUPS, Group, LayerRule
from jaxvlm.runs import csv_list

KnockoutSpec = LayerRule  # with a leading layer axis
KINDS = ('LV', 'VT', 'VS')
SETTINGS = ('global1', 'global2', 'fine')
TEXT_GROUPS = tuple(g for g in Group if g != Group.VIDEO)


def clean_spec(num_layers: int, num_frames: int) -> KnockoutSpec:
  """No edge removed in any layer."""
  return KnockoutSpec(
    block=np.zeros((num_layers, NUM_GROUPS, NUM_GROUPS), bool),
    cross_frame=np.zeros((num_layers,), bool),
    same_frame=np.zeros((num_layers,), bool),
    frames=np.zeros((num_layers, num_frames), bool),
  )


def _check_layers(layers: np.ndarray, num_layers: int) -> np.ndarray:
  layers = np.asarray(layers, bool)
  if layers.shape != (num_layers,):
    raise ValueError(f'layer selection has shape {layers.shape}, expected ({num_layers},)')
  return layers


def knockout_spec(kind: str, layers: np.ndarray, num_frames: int, frames: Iterable[int] | None = None) -> KnockoutSpec:
  """One knockout type applied in the selected layers (bool [L]).

  kind: 'LV' (text queries -> all video keys), 'VT' (video -> video of another frame),
  'VS' (video -> other tokens of its own frame), 'frames' (text queries -> tokens of `frames`),
  'clean'.
  """
  layers = _check_layers(layers, len(layers))
  spec = clean_spec(len(layers), num_frames)
  if kind == 'LV':
    block = np.zeros((NUM_GROUPS, NUM_GROUPS), bool)
    block[list(TEXT_GROUPS), Group.VIDEO] = True
    spec = spec.replace(block=layers[:, None, None] & block[None])
  elif kind == 'VT':
    spec = spec.replace(cross_frame=layers.copy())
  elif kind == 'VS':
    spec = spec.replace(same_frame=layers.copy())
  elif kind == 'frames':
    chosen = np.zeros((num_frames,), bool)
    for f in frames or ():
      if not 0 <= f < num_frames:
        raise ValueError(f'frame {f} outside 0..{num_frames - 1}')
      chosen[f] = True
    spec = spec.replace(frames=layers[:, None] & chosen[None])
  elif kind != 'clean':
    raise ValueError(f'unknown knockout type {kind!r}; expected one of {KINDS + ("frames", "clean")}')
  return spec


def block_spec(
  query_groups: Sequence[Group], key_groups: Sequence[Group], layers: np.ndarray, num_frames: int
) -> KnockoutSpec:
  """Generic knockout: queries of `query_groups` may not attend to keys of `key_groups`."""
  layers = _check_layers(layers, len(layers))
  block = np.zeros((NUM_GROUPS, NUM_GROUPS), bool)
  block[np.ix_([int(g) for g in query_groups], [int(g) for g in key_groups])] = True
  return clean_spec(len(layers), num_frames).replace(block=layers[:, None, None] & block[None])


# ---------------------------------------------------------------- layer selections (bool [L])


def layers_from(num_layers: int, first: int) -> np.ndarray:
  """Global setting 1: clean below `first`, knocked out from `first` to the top."""
  if not 0 <= first < num_layers:
    raise ValueError(f'first layer {first} outside 0..{num_layers - 1}')
  return np.arange(num_layers) >= first


def all_layers(num_layers: int) -> np.ndarray:
  """Global setting 2."""
  return np.ones((num_layers,), bool)


def window(num_layers: int, start: int, width: int) -> np.ndarray:
  """Fine-grained setting: layers [start, start + width)."""
  if width < 1 or start < 0 or start + width > num_layers:
    raise ValueError(f'window [{start}, {start + width}) outside the {num_layers} layers')
  return (np.arange(num_layers) >= start) & (np.arange(num_layers) < start + width)


def explicit(num_layers: int, layers: Iterable[int]) -> np.ndarray:
  out = np.zeros((num_layers,), bool)
  for l in layers:
    if not 0 <= l < num_layers:
      raise ValueError(f'layer {l} outside 0..{num_layers - 1}')
    out[l] = True
  return out


# ---------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class SweepEntry:
  """One spec of a sweep. name is unique; layers are 0-based; layer_ratio is the paper's x axis
  (global 1: share of layers left clean; fine-grained: window start / L)."""

  name: str
  setting: str
  kind: str
  layers: tuple[int, ...]
  layer_ratio: float


@dataclasses.dataclass(frozen=True)
class Sweep:
  entries: tuple[SweepEntry, ...]
  specs: KnockoutSpec  # numpy arrays [N, L, ...]

  def __len__(self) -> int:
    return len(self.entries)


def stack_specs(specs: Sequence[KnockoutSpec]) -> KnockoutSpec:
  """N specs [L, ...] -> one spec [N, L, ...]."""
  return KnockoutSpec(
    block=np.stack([s.block for s in specs]),
    cross_frame=np.stack([s.cross_frame for s in specs]),
    same_frame=np.stack([s.same_frame for s in specs]),
    frames=np.stack([s.frames for s in specs]),
  )


def build_sweep(
  num_layers: int,
  num_frames: int,
  settings: Sequence[str] = SETTINGS,
  kinds: Sequence[str] = KINDS,
  global1_step: int = 2,
  window_size: int = 4,
  window_stride: int = 1,
  explicit_layers: Sequence[int] | None = None,
) -> Sweep:
  """All (setting, kind, layer selection) combinations of a study, validated before any compute."""
  for k in kinds:
    if k not in KINDS:
      raise ValueError(f'unknown knockout type {k!r}; expected one of {KINDS}')
  for s in settings:
    if s not in SETTINGS + ('explicit',):
      raise ValueError(f'unknown setting {s!r}; expected one of {SETTINGS + ("explicit",)}')
  if global1_step < 1 or window_stride < 1:
    raise ValueError('global1_step and window_stride must be >= 1')
  if 'fine' in settings:
    window(num_layers, 0, window_size)  # raises when the window is wider than the stack
  selections: list[tuple[str, np.ndarray, float]] = []
  for s in settings:
    if s == 'global1':
      selections += [(s, layers_from(num_layers, i), i / num_layers) for i in range(0, num_layers, global1_step)]
    elif s == 'global2':
      selections.append((s, all_layers(num_layers), 0.0))
    elif s == 'fine':
      selections += [
        (s, window(num_layers, i, window_size), i / num_layers)
        for i in range(0, num_layers - window_size + 1, window_stride)
      ]
    else:
      if not explicit_layers:
        raise ValueError("setting 'explicit' needs explicit_layers")
      selections.append((s, explicit(num_layers, explicit_layers), 0.0))
  entries, specs = [], []
  for setting, layers, ratio in selections:
    for kind in kinds:
      chosen = tuple(int(l) for l in np.flatnonzero(layers))
      entries.append(SweepEntry(f'{setting}/{kind}/{chosen[0]}-{chosen[-1]}', setting, kind, chosen, ratio))
      specs.append(knockout_spec(kind, layers, num_frames))
  return Sweep(tuple(entries), stack_specs(specs))


def sweep_from_config(config, num_layers: int) -> Sweep:
  """The sweep a knockout config asks for (fields settings, kinds, global1_step, window,
  window_stride, explicit_layers; comma-separated strings or sequences)."""
  return build_sweep(
    num_layers,
    config.num_frames,
    settings=csv_list(config.settings),
    kinds=csv_list(config.kinds),
    global1_step=config.global1_step,
    window_size=config.window,
    window_stride=config.window_stride,
    explicit_layers=[int(x) for x in csv_list(config.explicit_layers)] or None,
  )


# ---------------------------------------------------------------- what a spec can change


def first_knocked_layer(spec: KnockoutSpec) -> int:
  """First layer (0-based) whose rule removes anything; L if none. spec arrays [L, ...] (numpy)."""
  per_layer = (
    np.asarray(spec.block).any(axis=(1, 2))
    | np.asarray(spec.cross_frame)
    | np.asarray(spec.same_frame)
    | np.asarray(spec.frames).any(axis=1)
  )
  hits = np.flatnonzero(per_layer)
  return int(hits[0]) if hits.size else per_layer.shape[0]


def first_affected_position(group: np.ndarray, frame: np.ndarray, valid: np.ndarray, spec: KnockoutSpec) -> int:
  """First token index of one prompt (group, frame, valid: [S]) that loses an edge in some layer of
  `spec`; S if none. Tokens before it compute exactly what the clean run computes in every layer
  (their own rows are untouched and they only see earlier tokens), so a sweep may reuse them."""
  s = group.shape[0]
  num_frames = np.asarray(spec.frames).shape[-1]
  block = np.any(np.asarray(spec.block), axis=0)  # [G, G]
  cross = bool(np.asarray(spec.cross_frame).any())
  same = bool(np.asarray(spec.same_frame).any())
  frames = np.any(np.asarray(spec.frames), axis=0)  # [F]
  keys = valid.astype(bool)
  # seen_*[q] = what the keys strictly before q contain.
  group_1h = (group[:, None] == np.arange(NUM_GROUPS)[None]) & keys[:, None]
  seen_group = np.cumsum(group_1h, axis=0) - group_1h > 0  # [S, G]
  video = group == Group.VIDEO
  framed = video & (frame >= 0)
  frame_1h = (frame[:, None] == np.arange(num_frames)[None]) & framed[:, None] & keys[:, None]
  seen_frame = np.cumsum(frame_1h, axis=0) - frame_1h > 0  # [S, F]
  own = np.clip(frame, 0, max(num_frames - 1, 0))
  seen_own = seen_frame[np.arange(s), own] & framed
  seen_other = (seen_frame.sum(axis=1) - seen_own) > 0
  affected = (block[group] & seen_group).any(axis=1)
  affected |= cross & framed & seen_other
  affected |= same & framed & seen_own
  affected |= ~video & (seen_frame & frames[None]).any(axis=1)
  affected &= valid.astype(bool)
  hits = np.flatnonzero(affected)
  return int(hits[0]) if hits.size else s
