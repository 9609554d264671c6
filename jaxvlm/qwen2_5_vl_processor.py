"""Qwen2.5-VL processing without torch or torchvision: fixed-size frames -> patches, prompts -> layout.

Pixels. One H x W per run (static shapes): `QwenPixels.target_size` applies the reference processor's
smart-resize rules (sides rounded to multiples of patch * merge = 28, the area kept within
[min_pixels, max_pixels] at about the same aspect ratio); frames are resized there once (PIL-equivalent
bicubic, `jaxvlm.pixels.preprocess`), rescaled, normalized with the CLIP mean/std and patchified in numpy
in the reference order. A clip of F frames gives T = ceil(F / tp) temporal patches (tp = 2; an odd
clip repeats its last frame, as the reference does): temporal patch t fuses frames 2t and 2t + 1.

Keyframes. A selector returns k single frames that need not be adjacent in time. Rule: each selected
frame is duplicated into its own pair (`keyframe_clip`), so k frames -> k temporal patches and
temporal patch t is exactly selected frame t, the way Qwen's image path feeds a still image (the
patches of a duplicated frame equal the image processor's for that frame). Pairing two selected frames
into one patch instead would blend unrelated moments into one token and halve the frames a knockout or
a frame-relevance score can tell apart. The price: twice the vision-tower input of pairing, the same
number of decoder tokens per selected frame as a 2k-frame uniform clip has per patch.
Frame indices of the knockout conventions are temporal patches: with a uniform clip, frame f is in
patch f // 2 (`patch_of_frame`); with `keyframe_clip`, patch t is selected frame t.

Prompts. The chat template renders `<|vision_start|><|video_pad|><|vision_end|>` for a video; the pad is
expanded to T * Hm * Wm slots. Groups as `jaxvlm.prompts` (SYSTEM before the video, QUESTION, OPTIONS,
LAST) with vision_start, the pads and vision_end in Group.VIDEO; a pad's frame is its temporal patch,
vision_start / vision_end have frame -1. Each prompt carries its M-RoPE positions [3, S] from
`qwen2_5_vl.rope_index` (`prompts.collate` stacks them to [3, B, S] for `TokenLayout.positions`).

Time. M-RoPE spaces a video's temporal patches evenly, tokens_per_second x second_per_grid_ts apart. A
uniform clip gets second_per_grid_ts = tp x its mean frame spacing (as transformers derives it from the
sampled fps). A keyframe clip is not evenly spaced in time, and one interval per video cannot express
that: its patches get `KEYFRAME_SECONDS_PER_PATCH` (temporal rank only), so a selection's positions
depend on how many frames it holds, not on when they were shot; all N candidates as keyframes give the
same prompt as the candidate pool.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from jaxvlm import pixels as pixels_lib
from jaxvlm import processor as processor_lib
from jaxvlm.models import qwen2_5_vl as qv
from jaxvlm.models.attention import Group
from jaxvlm.processor import ANSWER_INSTRUCTION, ChatProcessor
from jaxvlm.prompts import Prompt

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_PAD, VISION_START, VISION_END = '<|video_pad|>', '<|vision_start|>', '<|vision_end|>'
_RESAMPLE = {2: 'bilinear', 3: 'bicubic'}  # PIL codes in preprocessor configs
# second_per_grid_ts of a keyframe clip: what transformers gives a video sampled at its default 2 fps
# (temporal_patch_size 2 / 2 fps), so consecutive keyframe patches sit tokens_per_second steps apart.
KEYFRAME_SECONDS_PER_PATCH = 1.0


def smart_resize(
  height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
  """(h, w) multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio about kept: the
  nearest multiples, shrunk (floored) or grown (ceiled) by a common factor when the area is out of range."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f'frame {height}x{width}: aspect ratio above 200')
  h, w = round(height / factor) * factor, round(width / factor) * factor
  if h * w > max_pixels:
    shrink = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / shrink / factor) * factor)
    w = max(factor, math.floor(width / shrink / factor) * factor)
  elif h * w < min_pixels:
    grow = math.sqrt(min_pixels / (height * width))
    h, w = math.ceil(height * grow / factor) * factor, math.ceil(width * grow / factor) * factor
  return h, w


@dataclasses.dataclass(frozen=True)
class QwenPixels:
  """Pixel settings of a Qwen2.5-VL (video_)preprocessor_config.json."""

  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  min_pixels: int = 128 * 28 * 28
  max_pixels: int = 768 * 28 * 28
  image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
  image_std: tuple[float, ...] = OPENAI_CLIP_STD
  rescale_factor: float = 1 / 255
  resample: str = 'bicubic'

  @classmethod
  def from_config(cls, d: Mapping[str, Any]) -> QwenPixels:
    """From the reference processor's json (`size: {shortest_edge, longest_edge}` or the older
    `min_pixels` / `max_pixels`)."""
    size = d.get('size') or {}
    resample = d.get('resample', 3)
    if resample not in _RESAMPLE:
      raise ValueError(f'resample {resample!r} is not supported (only {sorted(_RESAMPLE)})')
    return cls(
      patch_size=d.get('patch_size', cls.patch_size),
      temporal_patch_size=d.get('temporal_patch_size', cls.temporal_patch_size),
      merge_size=d.get('merge_size', cls.merge_size),
      min_pixels=d.get('min_pixels', size.get('shortest_edge', cls.min_pixels)),
      max_pixels=d.get('max_pixels', size.get('longest_edge', cls.max_pixels)),
      image_mean=tuple(d.get('image_mean', cls.image_mean)),
      image_std=tuple(d.get('image_std', cls.image_std)),
      rescale_factor=d.get('rescale_factor', cls.rescale_factor),
      resample=_RESAMPLE[resample],
    )

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  def target_size(self, height: int, width: int) -> tuple[int, int]:
    """The run's fixed frame size for source frames of height x width (smart resize)."""
    return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

  def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, gh, gw) in patches (transformers' video_grid_thw) of a clip at a target size."""
    return (-(-num_frames // self.temporal_patch_size), height // self.patch_size, width // self.patch_size)

  def patchify(self, frames: np.ndarray) -> np.ndarray:
    """Normalized float frames [F, H, W, C] (H, W multiples of `factor`) -> patches
    [T, Hm, Wm, m*m, C*tp*p*p] in the reference order (see `qwen2_5_vl_vision`)."""
    frames = np.asarray(frames, np.float32)
    f, h, w, c = frames.shape
    if h % self.factor or w % self.factor:
      raise ValueError(f'frames {h}x{w} are not multiples of patch * merge = {self.factor}')
    tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
    if f % tp:  # the reference repeats the last frame up to a whole temporal patch
      frames = np.concatenate([frames, np.repeat(frames[-1:], tp - f % tp, axis=0)])
    t, hm, wm = frames.shape[0] // tp, h // p // m, w // p // m
    x = frames.reshape(t, tp, hm, m, p, wm, m, p, c)
    #                   0   1   2  3  4   5  6  7  8  -> (t, hm, wm, mh, mw, c, tp, ph, pw)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x.reshape(t, hm, wm, m * m, c * tp * p * p))

  def normalize(self, frames: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float32 [F, h, w, 3] resized to `size` (default: the smart-resize target),
    rescaled and normalized."""
    size = size or self.target_size(*np.asarray(frames).shape[1:3])
    if size[0] % self.factor or size[1] % self.factor:
      raise ValueError(f'size {size} is not a multiple of patch * merge = {self.factor}')
    return pixels_lib.preprocess(frames, size, self.image_mean, self.image_std, self.resample, self.rescale_factor)

  def preprocess(
    self, frames: np.ndarray, size: tuple[int, int] | None = None
  ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 frames [F, H, W, 3] -> (patches [T, Hm, Wm, m*m, P], grid (T, gh, gw))."""
    x = self.normalize(frames, size)
    return self.patchify(x), self.grid(x.shape[0], x.shape[1], x.shape[2])


def keyframe_clip(frames: np.ndarray, temporal_patch_size: int = 2) -> np.ndarray:
  """k selected frames [k, ...] -> the clip [k * tp, ...] in which each frame fills its own temporal
  patch (module docstring: temporal patch t == selected frame t)."""
  return np.repeat(np.asarray(frames), temporal_patch_size, axis=0)


def patch_of_frame(frame_index: np.ndarray | int, temporal_patch_size: int = 2) -> np.ndarray:
  """Temporal patch (the knockout 'frame') holding frame f of a uniformly sampled clip."""
  return np.asarray(frame_index) // temporal_patch_size


def seconds_per_patch(temporal_patch_size: int, sampled_fps: float) -> float:
  """transformers' second_per_grid_ts of a clip sampled at `sampled_fps`: tp / fps."""
  return temporal_patch_size / sampled_fps


def build_prompt(
  tokenizer,
  chat_template: str,
  question_text: str,
  question: str,
  answer_instruction: str,
  grid_thw: Sequence[int],
  merge_size: int,
) -> Prompt:
  """The chat-template prompt of one video question, the pad expanded for grid (T, gh, gw), with its
  layout (module docstring). `question_text` is the whole user text: `question`, option lines, then
  `answer_instruction` (as `jaxvlm.processor.VideoProcessor.question_text` writes it)."""
  messages = [{'role': 'user', 'content': [{'type': 'video'}, {'type': 'text', 'text': question_text}]}]
  text = tokenizer.apply_chat_template(
    messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
  )
  if text.count(VIDEO_PAD) != 1 or text.count(VISION_START) != 1 or text.count(VISION_END) != 1:
    raise ValueError(f'the chat template must render one {VISION_START}{VIDEO_PAD}{VISION_END}: {text!r}')
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = np.asarray(enc['input_ids'], np.int32)
  starts = np.asarray([a for a, _ in enc['offset_mapping']])
  user_at = text.index(question_text)
  options_at = user_at + len(question) + 1
  last_at = user_at + question_text.rindex(answer_instruction)
  video_at, video_end = text.index(VISION_START), text.index(VISION_END) + len(VISION_END)
  group = np.select(
    [starts < video_at, starts < video_end, starts < options_at, starts < last_at],
    [Group.SYSTEM, Group.VIDEO, Group.QUESTION, Group.OPTIONS],
    Group.LAST,
  ).astype(np.int32)
  pad_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
  is_pad = ids == pad_id
  if is_pad.sum() != 1:
    raise ValueError(f'{VIDEO_PAD} is not one token of the tokenizer (found {int(is_pad.sum())} in the ids)')
  t, gh, gw = (int(v) for v in grid_thw)
  per_patch = (gh // merge_size) * (gw // merge_size)
  repeats = np.where(is_pad, t * per_patch, 1)
  expanded = np.repeat(ids, repeats)
  frame = np.full(expanded.shape, -1, np.int32)
  at = int(np.flatnonzero(is_pad)[0])
  frame[at : at + t * per_patch] = np.arange(t * per_patch) // per_patch
  return Prompt(text, expanded, np.repeat(group, repeats), frame, t)


class Qwen25VLProcessor(ChatProcessor):
  """Text and pixel side of Qwen2.5-VL for multiple-choice video prompts (what `load_pretrained` returns
  for a qwen2_5_vl checkpoint with a tokenizer).

  Attributes (besides `ChatProcessor`'s): pixels (`QwenPixels`), model_config (`Qwen25VLConfig`, for the
  M-RoPE positions; None: prompts carry no positions), frame_size ((H, W) every clip is resized to, fixed
  for a run so shapes are static; None: each clip's own smart-resize size), video_token_id /
  vision_start_token_id / vision_end_token_id (checked against the model config).
  """

  def __init__(
    self,
    tokenizer,
    chat_template: str,
    pixels: QwenPixels,
    pixel_config: dict | None = None,
    model_config: qv.Qwen25VLConfig | None = None,
    frame_size: tuple[int, int] | None = None,
  ):
    super().__init__(tokenizer, chat_template, pixel_config)
    self.pixels = pixels
    self.model_config = model_config
    self.frame_size: tuple[int, int] | None = None
    if frame_size is not None:
      self.set_frame_size(frame_size)
    self.video_token_id, self.vision_start_token_id, self.vision_end_token_id = (
      tokenizer.convert_tokens_to_ids(t) for t in (VIDEO_PAD, VISION_START, VISION_END)
    )

  @classmethod
  def from_pretrained(cls, ckpt_dir: str, config: Mapping[str, Any]) -> Qwen25VLProcessor:
    tokenizer = processor_lib.load_tokenizer(ckpt_dir)
    template = processor_lib.load_chat_template(ckpt_dir, tokenizer)
    if template is None:
      raise ValueError(f'{ckpt_dir} has no chat template')
    pixel_config = processor_lib.read_pixel_config(ckpt_dir)
    pixels = QwenPixels.from_config(pixel_config or {})
    out = cls(tokenizer, template, pixels, pixel_config, qv.Qwen25VLConfig.from_hf(config))
    for name in ('video_token_id', 'vision_start_token_id', 'vision_end_token_id'):
      if name in config and config[name] != getattr(out, name):
        raise ValueError(f'{name}: the tokenizer has {getattr(out, name)}, config.json says {config[name]}')
    vision = config.get('vision_config') or {}
    for ours, theirs in (
      ('patch_size', 'patch_size'),
      ('temporal_patch_size', 'temporal_patch_size'),
      ('merge_size', 'spatial_merge_size'),
    ):
      if theirs in vision and vision[theirs] != getattr(pixels, ours):
        raise ValueError(
          f'pixel config {ours}={getattr(pixels, ours)} but the vision config has {theirs}={vision[theirs]}'
        )
    return out

  def set_frame_size(self, size: Sequence[int]) -> None:
    """Fixes the run's frame size (H, W); both must be multiples of patch * merge."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % self.pixels.factor or w % self.pixels.factor:
      raise ValueError(
        f'frame_size {h}x{w}: both sides must be positive multiples of patch * merge = {self.pixels.factor}'
      )
    self.frame_size = (h, w)

  def build_prompt(
    self, question: str, options: Sequence[str], grid_thw: Sequence[int], seconds_per_patch: float | None = None
  ) -> Prompt:
    """The prompt of one multiple-choice question about a video of grid (T, gh, gw), with its layout and,
    when the processor knows the model config, its M-RoPE positions [3, S] (`seconds_per_patch`:
    transformers' second_per_grid_ts, default `KEYFRAME_SECONDS_PER_PATCH`)."""
    prompt = build_prompt(
      self.tokenizer,
      self.chat_template,
      self.question_text(question, options),
      question,
      ANSWER_INSTRUCTION,
      grid_thw,
      self.pixels.merge_size,
    )
    if self.model_config is None:
      return prompt
    seconds = KEYFRAME_SECONDS_PER_PATCH if seconds_per_patch is None else seconds_per_patch
    positions, _ = qv.rope_index(prompt.input_ids[None], self.model_config, [grid_thw], [seconds])
    return dataclasses.replace(prompt, positions=positions[:, 0].astype(np.int32))

  def preprocess(
    self, frames: np.ndarray, size: tuple[int, int] | None = None
  ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 frames [F, H, W, 3] -> (patches [T, Hm, Wm, m*m, P], grid (T, gh, gw)), at `size`, else the
    run's `frame_size`, else the clip's smart-resize size."""
    return self.pixels.preprocess(frames, size or self.frame_size)

  def video_pixels(self, frames: np.ndarray, keyframes: bool = False) -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> the model's pixels: patches [T, Hm, Wm, m*m, P], one temporal patch
    per knockout frame. keyframes: each frame fills its own patch (T = F, `keyframe_clip`); else a
    uniform clip whose consecutive frames pair up (T = ceil(F / tp))."""
    clip = keyframe_clip(frames, self.pixels.temporal_patch_size) if keyframes else frames
    return self.preprocess(clip)[0]

  def grid_of(self, patches: np.ndarray) -> tuple[int, int, int]:
    """(T, gh, gw) of patches [T, Hm, Wm, m*m, P]."""
    t, hm, wm = patches.shape[:3]
    m = self.pixels.merge_size
    return t, hm * m, wm * m

  def seconds_per_patch(self, timestamps_s: np.ndarray | None = None, keyframes: bool = False) -> float:
    """transformers' second_per_grid_ts of a clip: tp x the mean spacing of a uniform clip's frames
    (`seconds_per_patch` of its sampled fps); keyframes, a single frame or no timestamps:
    `KEYFRAME_SECONDS_PER_PATCH` (module docstring)."""
    if keyframes or timestamps_s is None or len(timestamps_s) < 2:
      return KEYFRAME_SECONDS_PER_PATCH
    spacing = float(np.mean(np.diff(np.asarray(timestamps_s, np.float64))))
    if spacing <= 0:
      raise ValueError(f'frame timestamps {list(timestamps_s)} do not increase')
    return seconds_per_patch(self.pixels.temporal_patch_size, 1.0 / spacing)

  def video_inputs(
    self,
    question: str,
    options: Sequence[str],
    frames: np.ndarray,
    timestamps_s: np.ndarray | None = None,
    keyframes: bool = False,
  ) -> tuple[Prompt, np.ndarray]:
    """(prompt with layout and positions, patches [T, Hm, Wm, m*m, P]) of one question over uint8 frames
    [F, H, W, 3] (`video_pixels` for the keyframes rule)."""
    patches = self.video_pixels(frames, keyframes)
    return self.build_prompt(
      question, options, self.grid_of(patches), self.seconds_per_patch(timestamps_s, keyframes)
    ), patches
