"""The embedded default's training data and batches: the train split rendered, written as H.264 mp4 and
decoded back once (what evaluation sees), and the batch of every step of both stages as a pure function
of (seed, stage, step), so a resumed run replays the same stream.
"""

from __future__ import annotations

import multiprocessing
import os

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxvlm import prompts, video
from jaxvlm.data import synthetic
from jaxvlm.tiny import losses
from jaxvlm.tiny.tokenizer import WRONG_OPTION

STAGES = ('siglip', 'llava')


class TrainData:
  """frames uint8 [N, F, H, W, 3] (decoded mp4), items (SyntheticItem), captions [N, F] (str)."""

  def __init__(self, frames: np.ndarray, items: list, captions: list[list[str]]):
    self.frames, self.items, self.captions = frames, items, captions
    self._by_types: dict[str, np.ndarray] = {}

  def videos_of(self, qtypes: str) -> np.ndarray:
    """Indices of the videos whose question type is among the comma-separated `qtypes` (cached)."""
    if qtypes not in self._by_types:
      wanted = {q.strip() for q in qtypes.split(',')}
      unknown = wanted - set(synthetic.QTYPES)
      if unknown:
        raise ValueError(f'unknown question types {sorted(unknown)}; expected some of {synthetic.QTYPES}')
      self._by_types[qtypes] = np.flatnonzero([it.question.qtype in wanted for it in self.items])
    return self._by_types[qtypes]


def _encode_and_decode(job: tuple) -> np.ndarray:
  """(item, mp4 path, num_frames, fps) -> the item rendered, written as H.264 mp4 and decoded back,
  uint8 [F, H, W, 3] (what evaluation sees)."""
  item, path, num_frames, fps = job
  synthetic.write_video(path, synthetic.render(item.video), fps)
  return video.sample_frames(path, num_frames).pixels


def load_train_data(config, workdir: str) -> TrainData:
  """The train split's decoded frames, made once (`config.data.workers` processes encode and decode
  the videos in parallel) and cached as workdir/data/train_frames.npy (memory-mapped)."""
  root = os.path.join(workdir, 'data', 'train', 'videos')
  cache = os.path.join(workdir, 'data', 'train_frames.npy')
  n = config.data.num_train
  items = synthetic.generate_specs(n, config.seed, 'train', config.num_frames)
  if not os.path.isfile(cache):
    os.makedirs(root, exist_ok=True)
    jobs = [(it, os.path.join(root, f'{it.id}.mp4'), config.num_frames, config.data.fps) for it in items]
    out = np.lib.format.open_memmap(
      cache + '.tmp.npy', 'w+', np.uint8, (n, config.num_frames, items[0].video.size, items[0].video.size, 3)
    )
    # spawn, not fork: the parent has JAX's threads running.
    with multiprocessing.get_context('spawn').Pool(config.data.workers) as pool:
      for i, frames in enumerate(
        tqdm(pool.imap(_encode_and_decode, jobs, chunksize=16), total=n, desc='encode + decode train videos')
      ):
        out[i] = frames
    out.flush()
    del out
    os.replace(cache + '.tmp.npy', cache)
  frames = np.load(cache, mmap_mode='r')
  return TrainData(frames, items, [synthetic.frame_captions(it.video) for it in items])


# ----------------------------------------------------------------------------------------------
# Batches.


def _rng(config, stage: str, step: int) -> np.random.Generator:
  return np.random.default_rng([config.seed, STAGES.index(stage), step])


def shape_swapped(caption: str, rng: np.random.Generator) -> str:
  """`caption` with one object's shape replaced by another shape (a hard negative: colours, count
  and background still match the frame)."""
  words = caption.split(' ')
  at = [i for i, w in enumerate(words) if w in synthetic.SHAPES]
  if not at:  # an empty frame has no shape to swap
    return caption
  i = int(rng.choice(at))
  words[i] = str(rng.choice([s for s in synthetic.SHAPES if s != words[i]]))
  return ' '.join(words)


def siglip_batch(
  config, data: TrainData, processor, caption_ids: dict[str, np.ndarray], step: int
) -> dict[str, np.ndarray]:
  """batch_size random (video, frame) pairs and their captions plus one hard negative per frame:
  pixels [I, H, W, C], caption_ids [2I, L] (the I captions, then the I shape-swapped ones),
  caption_index [2I] (identity of each text: equal texts are positives of each other),
  image_caption [I] (identity of each frame's caption), caption_words [I, V] (its words, for the
  word loss of `losses.siglip_loss_fn`). A share `config.siglip.evidence_share` of the frames is drawn
  from the videos' evidence frames: most frames show the distractor alone, and the frames with two
  objects would otherwise be rare; a share `config.siglip.moving_share` more from the frames of moving
  objects (the tiny tower learns a trail's direction only after tens of thousands of them). Shape is
  what random negatives teach least (colours are distinct within a frame), hence the shape-swapped
  negatives."""
  rng = _rng(config, 'siglip', step)
  size = config.siglip.batch_size
  vids = rng.integers(0, len(data.items), size)
  frames = rng.integers(0, config.num_frames, size)
  draw = rng.random(size)
  moving = draw < config.siglip.moving_share
  moving_videos = data.videos_of('direction')  # their event object moves
  if len(moving_videos):
    vids[moving] = rng.choice(moving_videos, int(moving.sum()))
  for i in np.flatnonzero(draw < config.siglip.moving_share + config.siglip.evidence_share):
    frames[i] = rng.choice(data.items[vids[i]].question.evidence_frames)
  texts = [data.captions[v][f] for v, f in zip(vids, frames)]
  negatives = [shape_swapped(t, rng) for t in texts]
  index = {t: i for i, t in enumerate(sorted(set(texts + negatives)))}
  missing = sorted({t for t in negatives if t not in caption_ids})
  caption_ids.update(zip(missing, processor.tokenize(missing)) if missing else ())
  return {
    'pixels': processor.preprocess(np.stack([data.frames[v, f] for v, f in zip(vids, frames)])),
    'caption_ids': np.stack([caption_ids[t] for t in texts + negatives]),
    'caption_index': np.asarray([index[t] for t in texts + negatives], np.int32),
    'image_caption': np.asarray([index[t] for t in texts], np.int32),
    'caption_words': losses.frame_word_targets(processor.tokenizer, texts),
  }


def curriculum_frames(item, num_frames: int, keep: int, rng: np.random.Generator) -> np.ndarray:
  """`keep` sorted frame indices of a `num_frames`-frame video that keep its question answerable:
  every evidence frame, the frames on both sides of each (so flashes stay apart and counts hold),
  the rest drawn at random."""
  evidence = set(item.question.evidence_frames)
  if len(evidence) >= keep:  # the control: any frames show the background
    return np.sort(rng.choice(sorted(evidence), keep, replace=False))
  border = {g for f in evidence for g in (f - 1, f + 1) if 0 <= g < num_frames} - evidence
  chosen = evidence | set(sorted(border)[: keep - len(evidence)])
  rest = sorted(set(range(num_frames)) - chosen)
  chosen |= set(rng.choice(rest, keep - len(chosen), replace=False).tolist())
  return np.asarray(sorted(chosen))


def llava_batch(
  config, data: TrainData, processor, tower: np.ndarray, prompt_cache: dict, step: int
) -> dict[str, np.ndarray]:
  """batch_size random videos with their question prompts (collated as evaluation collates them),
  their frozen-tower features (tower [N, F, P, Dv] cached once) and the targets of the auxiliary
  losses: per-frame caption words frame_words [B, F, V], words shown so far seen_words [B, F, V],
  event words event_words [B, F, V], option-line targets option_target [B, O], and what the video
  shows of each option's object option_events [B, O, V] at its colour word option_word [B, O], and
  the right option's words answer_words [B, V] at the question's last slot question_end [B].
  Two curricula: the first `config.llava.first_steps` steps draw only questions of `first_types`
  (needle and order: an object named by an option must be found in the video, and for order its
  frames' first/second read off), and for the first `short_steps` steps every video is cut to
  `short_frames` frames around its evidence (`curriculum_frames`): shorter prompts, and the evidence
  is denser while the model learns where to look."""
  c = config.llava
  rng = _rng(config, 'llava', step)
  pool = data.videos_of(c.first_types) if step < c.first_steps else np.arange(len(data.items))
  vids = pool[rng.choice(len(pool), c.batch_size, replace=False)]
  short = step < c.short_steps
  num = c.short_frames if short else config.num_frames
  built, words, seen, events, grounding, feats = [], [], [], [], [], []
  for v in vids:
    item = data.items[v]
    if (v, num) not in prompt_cache:
      prompt_cache[v, num] = prompts.build_prompt(processor, item.question.question, item.question.options, num)
    frames = curriculum_frames(item, config.num_frames, num, rng) if short else np.arange(config.num_frames)
    built.append(prompt_cache[v, num])
    captions = [data.captions[v][f] for f in frames]
    words.append(losses.frame_word_targets(processor.tokenizer, captions))
    seen.append(losses.seen_word_targets(processor.tokenizer, captions))
    happened = synthetic.frame_events(item.video)
    events.append(losses.event_word_targets(processor.tokenizer, [happened[f] for f in frames]))
    grounding.append(losses.event_word_targets(processor.tokenizer, synthetic.option_events(item, WRONG_OPTION)))
    feats.append(tower[v, frames])
  pb = prompts.collate(built, processor.tokenizer.pad_token_id)
  letters = processor.option_letter_ids(synthetic.NUM_OPTIONS)
  answers = np.asarray([data.items[v].question.answer for v in vids])
  wrong = processor.tokenizer.convert_tokens_to_ids(WRONG_OPTION)
  # prompts.collate's layout is numpy already (np.asarray only tells the type checker).
  group, frame, positions, valid = (
    np.asarray(x) for x in (pb.layout.group, pb.layout.frame, pb.layout.positions, pb.layout.valid)
  )
  option_end = prompts.option_end_index(pb.input_ids, group, letters)
  return {
    'input_ids': pb.input_ids,
    'group': group,
    'frame': frame,
    'positions': positions,
    'valid': valid,
    'answer_index': pb.answer_index,
    'answer_id': letters[answers],
    'frame_words': np.stack(words),
    'seen_words': np.stack(seen),
    'event_words': np.stack(events),
    'option_end': option_end,
    'option_word': option_end - 1,  # an object option's colour word ("B . red ring")
    'option_events': np.stack(grounding),
    'option_target': losses.option_line_targets(letters, answers, wrong),
    'question_end': prompts.question_end_index(group),
    'answer_words': losses.event_word_targets(
      processor.tokenizer, [data.items[v].question.options[a].split(' ') for v, a in zip(vids, answers)]
    ),
    'tower': np.stack(feats),
  }


def tower_cache(workdir: str, model, params: dict, processor, data: TrainData) -> np.ndarray:
  """The frozen vision tower's features of every training video, float32 [N, F, P, Dv], computed
  once (workdir/data/train_tower.npy; the tower never changes during stage 2)."""
  path = os.path.join(workdir, 'data', 'train_tower.npy')
  if not os.path.isfile(path):
    chunks = []
    for i in tqdm(range(0, len(data.items), 16), desc='vision tower features'):
      pixels = np.stack([processor.preprocess(np.asarray(v)) for v in data.frames[i : i + 16]])
      chunks.append(np.asarray(losses.tower_features(params, model, jnp.asarray(pixels))))
    np.save(path + '.tmp.npy', np.concatenate(chunks))
    os.replace(path + '.tmp.npy', path)
  return np.load(path)
