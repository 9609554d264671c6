"""A synthetic video-QA world whose evidence frames are known exactly.

Every video is a dark background with a persistent distractor shape drifting across it, plus the
event of its question:

- needle: an object is visible for 2-3 consecutive frames; "which object appeared briefly?"
  (the other options are objects absent from the video)
- counting: an object flashes (2 frames each) k in 1..4 times; "how many times did it flash?"
- order: two objects appear (3 frames each) one after the other; "which of them appeared first?"
  (the question names neither: the options hold both and two objects absent from the video)
- direction: an object is visible only while it moves left/right/up/down; "where did it move?"
  (options always left, right, up, down in this order, as counting's are 1..4)
- background (control): "what colour is the background?", answerable from any single frame.

The evidence frames are exactly the frames in which the event object(s) are visible (all frames
for the control). Event colours are saturated and never shared with the distractor, objects are
big (radius 20 % of the frame) and kept clear of the distractor, shapes differ inside a 16-pixel
patch (a hollow ring, a square, a triangle, a cross), and backgrounds are dark, so H.264 at 64x64
keeps them visible and a tiny ViT can name them.

Absent options never share a colour with a visible object. Four options per question, the answer letters balanced within every question type and overall
(counts differ by at most one), everything deterministic given (seed, split). Output layout of
`generate(out_dir, ...)`:

  out_dir/videos/<id>.mp4      H.264 (yuv420p) via PyAV
  out_dir/json/<qtype>.json    MVBench format plus `id` and `evidence_frames`; `load_mvbench`
                               reads it as `load_mvbench(out_dir/json, out_dir/videos)`
  out_dir/captions.jsonl       one {"video", "frame", "caption"} per frame
  out_dir/meta.json            the generation arguments, written last (marks a complete split)
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import fractions
import json
import os

import numpy as np

QTYPES = ('needle', 'counting', 'order', 'direction', 'background')
SPLITS = ('train', 'val', 'test')
NUM_OPTIONS = 4
# Of the frame size: at 0.14 (diameter 18 px of 64, about one 16-px patch) the tiny SigLIP retrieved a lone
# object's caption (its shape) in 44 % of frames; at 0.2 with a hollow ring and a cross, in 82 %.
OBJECT_RADIUS = 0.2
# The moving object's motion blur: copies TRAIL_SPACING radii apart behind it, blended at these
# opacities (nearest first). Without it the object moves ~3 px between frames, inside one 2x2-pooled
# frame token, and the tiny LLaVA's frames got their direction words right 26 % of the time (chance
# 25 %). With it, a tiny SigLIP whose tower is taught the caption words directly (train_synthetic)
# reads the direction from one frame's pooled tokens 74 % of the time.
TRAIL_SPACING = 0.5
TRAIL_ALPHAS = (0.5, 0.3, 0.15)

COLOURS = {
  'red': (255, 0, 0),
  'green': (0, 255, 0),
  'blue': (0, 64, 255),
  'yellow': (255, 255, 0),
  'cyan': (0, 255, 255),
  'magenta': (255, 0, 255),
  'white': (255, 255, 255),
}
BACKGROUNDS = {
  'black': (0, 0, 0),
  'grey': (110, 110, 110),
  'brown': (110, 60, 20),
  'navy': (20, 20, 110),
  'forest': (20, 90, 20),  # not 'dark green': 'green' is an object colour
}
SHAPES = ('ring', 'square', 'triangle', 'cross')
DIRECTIONS = ('left', 'right', 'up', 'down')
_DIRECTION_VECTORS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}


@dataclasses.dataclass(frozen=True)
class ObjectTrack:
  """A shape visible at `frames`, centred at (xs[i], ys[i]) pixels in frames[i]. With `trail`, it
  moves in a straight line and every frame shows fading copies behind it (motion blur), so its
  direction is visible in any one of its frames."""

  shape: str
  colour: str
  radius: float
  frames: tuple[int, ...]
  xs: tuple[float, ...]
  ys: tuple[float, ...]
  trail: bool = False

  def direction(self) -> str:
    """'left' / 'right' / 'up' / 'down' from the first to the last position (image y points down)."""
    dx, dy = self.xs[-1] - self.xs[0], self.ys[-1] - self.ys[0]
    return ('right' if dx > 0 else 'left') if abs(dx) > abs(dy) else ('down' if dy > 0 else 'up')


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  num_frames: int
  size: int
  background: str
  objects: tuple[ObjectTrack, ...]  # drawn in order; later objects on top


@dataclasses.dataclass(frozen=True)
class QuestionSpec:
  qtype: str
  question: str
  options: tuple[str, ...]
  answer: int
  evidence_frames: tuple[int, ...]
  event_objects: tuple[int, ...]  # indices into VideoSpec.objects; empty for the control


@dataclasses.dataclass(frozen=True)
class SyntheticItem:
  id: str
  video: VideoSpec
  question: QuestionSpec


# ----------------------------------------------------------------------------------------------
# Rendering.


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask from pixel offsets to the centre; shapes have similar areas."""
  if shape == 'ring':  # hollow: the inside shows the background
    d2 = dx * dx + dy * dy
    return (d2 <= r * r) & (d2 >= 0.3 * r * r)
  if shape == 'square':
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
  if shape == 'cross':  # a plus sign with arms 0.4 r wide
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= 0.4 * r) & (ay <= r)) | ((ay <= 0.4 * r) & (ax <= r))
  if shape == 'triangle':  # apex up, base at the bottom
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.6)
  raise ValueError(f'unknown shape {shape!r}')


def render(spec: VideoSpec) -> np.ndarray:
  """Draws the video: uint8 [F, size, size, 3]."""
  f, s = spec.num_frames, spec.size
  video = np.empty((f, s, s, 3), np.uint8)
  video[:] = BACKGROUNDS[spec.background]
  centres = np.arange(s) + 0.5  # pixel centres
  colour_of = {name: np.asarray(rgb, np.float32) for name, rgb in COLOURS.items()}
  for obj in spec.objects:
    if obj.trail:
      step = np.asarray(_DIRECTION_VECTORS[obj.direction()], np.float32) * TRAIL_SPACING * obj.radius
    for frame, x, y in zip(obj.frames, obj.xs, obj.ys):
      ghosts = enumerate(TRAIL_ALPHAS[::-1]) if obj.trail else ()
      for k, alpha in ghosts:  # farthest (faintest) first
        back = len(TRAIL_ALPHAS) - k
        mask = _shape_mask(
          obj.shape, centres[None, :] - (x - back * step[0]), centres[:, None] - (y - back * step[1]), obj.radius
        )
        pixels = video[frame][mask].astype(np.float32)
        video[frame][mask] = np.round(pixels + alpha * (colour_of[obj.colour] - pixels)).astype(np.uint8)
      mask = _shape_mask(obj.shape, centres[None, :] - x, centres[:, None] - y, obj.radius)
      video[frame][mask] = COLOURS[obj.colour]
  return video


def frame_captions(spec: VideoSpec) -> list[str]:
  """One caption per frame naming every visible object (and the direction of one with a trail) and
  the background. Objects are listed in the fixed order of COLOURS (colours are distinct within a
  video), never in drawing order: a single frame cannot tell which object is the distractor, so a
  caption must not depend on it."""
  visible: list[list[ObjectTrack]] = [[] for _ in range(spec.num_frames)]
  for obj in spec.objects:
    for frame in obj.frames:
      visible[frame].append(obj)
  order = list(COLOURS)
  captions = []
  for objs in visible:
    names = [
      f'a {o.colour} {o.shape}' + (f' moving {o.direction()}' if o.trail else '')
      for o in sorted(objs, key=lambda o: order.index(o.colour))
    ]
    captions.append(
      ' and '.join(names) + f' on a {spec.background} background' if names else f'an empty {spec.background} background'
    )
  return captions


def frame_events(spec: VideoSpec) -> list[list[str]]:
  """Per frame, the event words of every object that comes and goes (the persistent distractor has
  none), each knowable from frames <= f (a causal decoder can predict them where it reads the frame):
  its flash number so far ('1'..'4'; a needle or order object flashes once) or, with a trail, its
  direction, 'first' / 'second' when two objects come and go, and its colour and shape."""
  events = [o for o in spec.objects if len(o.frames) < spec.num_frames]
  first_start = min((o.frames[0] for o in events), default=0)
  out: list[list[str]] = [[] for _ in range(spec.num_frames)]
  for obj in events:
    for i, frame in enumerate(obj.frames):
      if obj.trail:  # its trail shows the direction in every frame
        words = [obj.direction()]
      else:  # at rest: the number of its flashes so far
        words = [str(1 + sum(b != a + 1 for a, b in zip(obj.frames[:i], obj.frames[1 : i + 1])))]
      if len(events) > 1:
        words.append('first' if obj.frames[0] == first_start else 'second')
      out[frame] += words + [obj.colour, obj.shape]
  return out


def option_events(item: SyntheticItem, absent: str = 'no') -> list[list[str]]:
  """Per option, what the video shows of the object it names: the event words of its last frame
  without colour and shape (e.g. ['1', 'first']), `absent` for an object the video never shows, and
  nothing for an option that names no object (a count, a direction, a background)."""
  events = frame_events(item.video)
  out: list[list[str]] = []
  for option in item.question.options:
    words = option.split(' ')
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
      out.append([])
      continue
    shown = [o for o in item.video.objects if [o.colour, o.shape] == words]
    if not shown:
      out.append([absent])
      continue
    last = events[shown[0].frames[-1]] if len(shown[0].frames) < item.video.num_frames else []
    out.append([w for w in last if w not in words])
  return out


# ----------------------------------------------------------------------------------------------
# Specs.


def _windows(rng: np.random.Generator, num_frames: int, lengths: list[int], min_gap: int) -> list[list[int]]:
  """Non-overlapping frame windows of the given lengths, in order, >= min_gap frames apart."""
  slack = num_frames - sum(lengths) - min_gap * (len(lengths) - 1)
  if slack < 0:
    raise ValueError(f'{num_frames} frames cannot hold windows {lengths} with gap {min_gap}')
  extra = rng.multinomial(slack, np.ones(len(lengths) + 1) / (len(lengths) + 1))
  windows, start = [], int(extra[0])
  for i, length in enumerate(lengths):
    windows.append(list(range(start, start + length)))
    start += length + min_gap + int(extra[i + 1])
  return windows


def _clear_of(other: ObjectTrack, frames, xs, ys, gap: float) -> bool:
  """True when an object at (xs[i], ys[i]) in frames[i] stays >= gap pixels (centre to centre) from
  `other` in every frame both are visible."""
  where = {f: (x, y) for f, x, y in zip(other.frames, other.xs, other.ys)}
  return all(np.hypot(x - where[f][0], y - where[f][1]) >= gap for f, x, y in zip(frames, xs, ys) if f in where)


def _static(rng, shape, colour, radius, frames, size, avoid: ObjectTrack) -> ObjectTrack:
  """An object resting at one place for `frames`, its centre >= 1.5 radii from `avoid`'s in every
  shared frame, so at most a rim of either is hidden (a shape half hidden behind another could not be
  named from the frame); the last of 100 tries if none is that far."""
  lo, hi = radius + 1, size - radius - 1
  for _ in range(100):
    x, y = rng.uniform(lo, hi, 2)
    if _clear_of(avoid, frames, [x] * len(frames), [y] * len(frames), 1.5 * radius):
      break
  return ObjectTrack(shape, colour, radius, tuple(frames), (float(x),) * len(frames), (float(y),) * len(frames))


def _distractor(rng, colour, shape, radius, num_frames, size) -> ObjectTrack:
  lo, hi = radius + 1, size - radius - 1
  start, end = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
  t = np.linspace(0.0, 1.0, num_frames)
  xs, ys = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
  return ObjectTrack(
    shape, colour, radius, tuple(range(num_frames)), tuple(float(v) for v in xs), tuple(float(v) for v in ys)
  )


def _options_with_answer(rng, correct: str, distractors: list[str], answer: int) -> tuple[str, ...]:
  others = [distractors[i] for i in rng.permutation(len(distractors))[: NUM_OPTIONS - 1]]
  return tuple(others[:answer] + [correct] + others[answer:])


def _absent_objects(rng, present_colours: set[str], count: int) -> list[str]:
  """Distinct 'colour shape' names of colours absent from the video (an absent option never shares
  a colour with a visible object, so colour alone tells it apart)."""
  names = [f'{c} {s}' for c in COLOURS for s in SHAPES if c not in present_colours]
  return [names[i] for i in rng.choice(len(names), count, replace=False)]


def make_item(
  rng: np.random.Generator, qtype: str, answer: int, item_id: str, num_frames: int = 32, size: int = 64
) -> SyntheticItem:
  """One video + question of `qtype` whose correct option sits at index `answer`."""
  if qtype not in QTYPES:
    raise ValueError(f'unknown question type {qtype!r}; expected one of {QTYPES}')
  if not 0 <= answer < NUM_OPTIONS:
    raise ValueError(f'answer index {answer} out of range for {NUM_OPTIONS} options')
  radius = OBJECT_RADIUS * size
  background = str(rng.choice(list(BACKGROUNDS)))
  colours = [str(c) for c in rng.permutation(list(COLOURS))]  # distinct: events first
  shapes = [str(s) for s in rng.permutation(SHAPES)]
  distractor = _distractor(rng, colours[-1], shapes[-1], radius, num_frames, size)

  if qtype == 'needle':
    (frames,) = _windows(rng, num_frames, [int(rng.integers(2, 4))], 0)
    event = _static(rng, shapes[0], colours[0], radius, frames, size, distractor)
    correct = f'{colours[0]} {shapes[0]}'
    pool = _absent_objects(rng, {colours[0], distractor.colour}, NUM_OPTIONS - 1)
    question = 'Which object appeared briefly in the video?'
    options = _options_with_answer(rng, correct, pool, answer)
    events = [event]
  elif qtype == 'counting':
    count = answer + 1  # options are "1".."4" in order, so the count sets the letter
    windows = _windows(rng, num_frames, [2] * count, 2)
    track = _static(rng, shapes[0], colours[0], radius, [f for w in windows for f in w], size, distractor)
    question = f'How many times did the {colours[0]} {shapes[0]} flash?'
    options = tuple(str(n) for n in range(1, NUM_OPTIONS + 1))
    events = [track]
  elif qtype == 'order':
    first, second = _windows(rng, num_frames, [3, 3], 2)
    a = _static(rng, shapes[0], colours[0], radius, first, size, distractor)
    b = _static(rng, shapes[1], colours[1], radius, second, size, distractor)
    names = [f'{colours[0]} {shapes[0]}', f'{colours[1]} {shapes[1]}']
    pool = [names[1]] + _absent_objects(rng, {colours[0], colours[1], distractor.colour}, NUM_OPTIONS - 2)
    # The question names neither object: with both among the options and two objects that never
    # appear, the text alone cannot single out the pair (a question naming them left a coin flip).
    question = 'Two objects each appeared briefly. Which of them appeared first?'
    options = _options_with_answer(rng, names[0], pool, answer)
    events = [a, b]
  elif qtype == 'direction':
    direction = DIRECTIONS[answer]  # options in the fixed order of DIRECTIONS, like the counts
    length = int(rng.integers(8, 13))
    (frames,) = _windows(rng, num_frames, [length], 0)
    dx, dy = _DIRECTION_VECTORS[direction]
    lo, hi = radius + 1, size - radius - 1
    for _ in range(100):  # a path that does not cross the distractor
      travel = rng.uniform(0.4, 0.55) * size
      along = rng.uniform(lo, hi - travel) + travel * np.linspace(0.0, 1.0, length)
      if dx < 0 or dy < 0:
        along = along[::-1]
      across = np.full(length, rng.uniform(lo, hi))
      xs, ys = (along, across) if dx else (across, along)
      if _clear_of(distractor, frames, xs, ys, 1.5 * radius):
        break
    event = ObjectTrack(
      shapes[0], colours[0], radius, tuple(frames), tuple(float(v) for v in xs), tuple(float(v) for v in ys), trail=True
    )
    question = f'In which direction did the {colours[0]} {shapes[0]} move?'
    options = DIRECTIONS
    events = [event]
  else:  # background control
    question = 'What colour is the background of the video?'
    options = _options_with_answer(rng, background, [b for b in BACKGROUNDS if b != background], answer)
    events = []

  objects = (distractor,) + tuple(events)
  evidence = sorted({f for e in events for f in e.frames}) if events else list(range(num_frames))
  video = VideoSpec(num_frames, size, background, objects)
  spec = QuestionSpec(qtype, question, options, answer, tuple(evidence), tuple(range(1, len(objects))))
  return SyntheticItem(item_id, video, spec)


def _assignments(rng: np.random.Generator, num: int) -> list[tuple[str, int]]:
  """(qtype, answer) per item: types round-robin, letters balanced per type and overall."""
  qtypes = [QTYPES[i % len(QTYPES)] for i in range(num)]
  # Consecutive letters over the items sorted by type balance both counts to within one.
  by_type = sorted(range(num), key=lambda i: (QTYPES.index(qtypes[i]), i))
  answers = [0] * num
  for rank, i in enumerate(by_type):
    answers[i] = rank % NUM_OPTIONS
  for qtype in QTYPES:  # shuffle which item of a type gets which letter
    members = [i for i in range(num) if qtypes[i] == qtype]
    letters = [answers[i] for i in members]
    for i, j in zip(members, rng.permutation(len(members))):
      answers[i] = letters[j]
  return list(zip(qtypes, answers))


def generate_specs(
  num: int, seed: int, split: str = 'train', num_frames: int = 32, size: int = 64
) -> list[SyntheticItem]:
  """`num` items for `split`, a pure function of (num, seed, split, num_frames, size)."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
  if size % 2 or size < 16:
    raise ValueError(f'size must be even and >= 16 (H.264 yuv420p), got {size}')
  if num_frames < 16:
    raise ValueError(f'num_frames must be >= 16 to hold every event, got {num_frames}')
  split_id = SPLITS.index(split)
  assign = _assignments(np.random.default_rng([seed, split_id]), num)
  return [
    make_item(np.random.default_rng([seed, split_id, i]), qtype, answer, f'{split}_{i:06d}', num_frames, size)
    for i, (qtype, answer) in enumerate(assign)
  ]


# ----------------------------------------------------------------------------------------------
# Writing.


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int = 8, crf: int = 18) -> None:
  """Encodes uint8 [F, H, W, 3] as H.264 yuv420p mp4 (bytes deterministic for equal input)."""
  # With x264's macroblock-tree rate control the bytes of some videos varied from run to run
  # (~4 % of encodes of one test video, in the first packet); without it, and with one thread
  # and explicit timestamps, 0 of 450 encodes differed.
  encode_h264(
    path,
    frames,
    frames.shape[1],
    frames.shape[2],
    fps,
    {'crf': str(crf), 'preset': 'medium', 'threads': '1', 'x264-params': 'mbtree=0'},
  )


def encode_h264(
  path: str | os.PathLike[str], frames: Iterable[np.ndarray], height: int, width: int, fps: int, options: dict[str, str]
) -> None:
  """Encodes uint8 [H, W, 3] frames (any iterable, e.g. a generator of a long video) as H.264 yuv420p
  mp4 at `fps`, frame i at pts i, with libx264 `options`."""
  import av  # pylint: disable=g-import-not-at-top  (only the writer needs PyAV)

  time_base = fractions.Fraction(1, fps)
  with av.open(os.fspath(path), 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.height, stream.width = height, width
    stream.pix_fmt = 'yuv420p'
    stream.time_base = time_base
    stream.options = dict(options)  # PyAV types it dict[str, object]
    for i, frame in enumerate(frames):
      av_frame = av.VideoFrame.from_ndarray(frame, format='rgb24')
      av_frame.pts, av_frame.time_base = i, time_base
      for packet in stream.encode(av_frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _annotation(item: SyntheticItem) -> dict:
  q = item.question
  return {
    'id': item.id,
    'video': f'{item.id}.mp4',
    'question': q.question,
    'candidates': list(q.options),
    'answer': q.options[q.answer],
    'evidence_frames': list(q.evidence_frames),
  }


def generate(
  out_dir: str | os.PathLike[str],
  num: int,
  seed: int,
  num_frames: int = 32,
  size: int = 64,
  split: str = 'train',
  fps: int = 8,
) -> list[SyntheticItem]:
  """Renders and writes `num` items of `split` under out_dir (layout in the module docstring)."""
  items = generate_specs(num, seed, split, num_frames, size)
  out_dir = os.fspath(out_dir)
  os.makedirs(os.path.join(out_dir, 'videos'), exist_ok=True)
  os.makedirs(os.path.join(out_dir, 'json'), exist_ok=True)
  with open(os.path.join(out_dir, 'captions.jsonl'), 'w', encoding='utf-8') as captions:
    for item in items:
      write_video(os.path.join(out_dir, 'videos', f'{item.id}.mp4'), render(item.video), fps)
      for frame, caption in enumerate(frame_captions(item.video)):
        captions.write(json.dumps({'video': f'{item.id}.mp4', 'frame': frame, 'caption': caption}) + '\n')
  for qtype in QTYPES:
    annotations = [_annotation(it) for it in items if it.question.qtype == qtype]
    with open(os.path.join(out_dir, 'json', f'{qtype}.json'), 'w', encoding='utf-8') as f:
      json.dump(annotations, f, indent=1)
  meta = {'num': num, 'seed': seed, 'split': split, 'num_frames': num_frames, 'size': size, 'fps': fps}
  with open(os.path.join(out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
    json.dump(meta, f)
  return items


def ensure(
  root: str | os.PathLike[str],
  num: int,
  seed: int,
  split: str = 'test',
  num_frames: int = 32,
  size: int = 64,
  fps: int = 8,
) -> str:
  """Returns root/split, generating it unless a complete split with the same arguments exists."""
  out_dir = os.path.join(os.fspath(root), split)
  wanted = {'num': num, 'seed': seed, 'split': split, 'num_frames': num_frames, 'size': size, 'fps': fps}
  try:
    with open(os.path.join(out_dir, 'meta.json'), encoding='utf-8') as f:
      if json.load(f) == wanted:
        return out_dir
  except (FileNotFoundError, json.JSONDecodeError):
    pass
  meta = os.path.join(out_dir, 'meta.json')
  if os.path.exists(meta):  # different arguments: the old split must not look complete
    os.remove(meta)
  generate(out_dir, num, seed, num_frames, size, split=split, fps=fps)
  return out_dir
