r"""Trains the embedded default on the synthetic world and exports it as Hugging Face directories.

  python -m experiments.train_synthetic --config=configs/train_synthetic.py --workdir=DIR
  # the LLaVA stage again with other settings, on DIR's data, SigLIP and tower features (~10 min less):
  python -m experiments.train_synthetic --config=configs/train_synthetic.py --workdir=DIR2 \
      --config.stage1_from=DIR --config.llava.steps=6400

Stage 1: a tiny SigLIP (both towers) with the sigmoid loss on (frame, caption) pairs plus a word loss
(each frame's mean patch feature predicts its caption's words: the tower's only teacher for a moving
object's direction), frames drawn mostly from evidence and moving-object frames, one shape-swapped
hard-negative caption per frame. Stage 2: a tiny LLaVA-OneVision whose vision tower is the stage-1
SigLIP's, frozen (its features cached once); the projector and decoder train on the answer letter
plus six auxiliary losses (see `tiny.llava_loss_fn`): frame captions, words seen so far and event
words at each frame's last slot, option-line letters, the right option's words at the question's end,
and option grounding (an option's colour word predicts what the video shows of its object). The first
`first_steps` steps see needle and order questions only, the first `short_steps` 16-frame cuts around
the evidence. Both stages read the training videos as the evaluation does (H.264 mp4 decoded by
`video.sample_frames`, cached once as uint8), checkpoint with an orbax CheckpointManager (a killed run
resumes from the last checkpoint and replays the same batches), and shard each batch over the 'data'
axis of a mesh of all local devices.

Outputs: DIR/data (videos + decoded cache), DIR/ckpt/{siglip,llava} (orbax), DIR/metrics.jsonl,
DIR/loss_{siglip,llava}.png, DIR/export/{siglip_tiny,llava_ov_tiny} (Hugging Face directories), and a
validation summary printed at the end. To ship a trained run as the default, after checking the bars
with `python -m experiments.eval_synthetic --assets=DIR/export`:

  rm -rf assets/siglip_tiny assets/llava_ov_tiny && cp -r DIR/export/* assets/

Status (committed config, 2-core CPU, measured 2026-11-24). From scratch on a fresh clone, machine
otherwise idle: 27.4 min (data 2, SigLIP 5.5, tower features 2, LLaVA 17); assets/ holds a run of
the same config made in two parts (stage 1, then the LLaVA stage with --config.stage1_from) whose
validation numbers the from-scratch run reproduces to the last digit. Test split (200 items,
eval_synthetic): overall 0.945; background, needle, order 1.00, counting 0.95, direction 0.775;
text-only 0.225-0.325; SigLIP R@1 0.965 global (296 captions), 1.00 within video. Validation (100
items): overall 0.98, direction 0.90, the rest 1.00; R@1 0.974. What got order and direction there
(from 0.55 / 0.25): the SigLIP word loss with 40 % of its frames from moving objects (a linear probe
of the 2x2-pooled tower features reads the direction in 74 % of moving frames and, summed over a
video's frames, 85 % of videos; 40 % of frames before; R@1 0.74 -> 0.965 on the test split as a side
effect), and for order the recall loss with events read from layer 2 instead of 4 and a
needle+order-only first phase (order's train accuracy jumps from ~0.55 to 0.94 between steps 600 and
800 of such a phase; without the recall loss it is 0.70 at step 1000).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags
from tqdm import tqdm

from jaxvlm import checkpoints, prompts, tiny, video
from jaxvlm.data import synthetic

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/train_synthetic.py', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/train_synthetic', 'outputs; a rerun resumes')
STAGES = ('siglip', 'llava')


# ----------------------------------------------------------------------------------------------
# Data: the train split written as mp4, decoded once into a uint8 cache.


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
    out = np.lib.format.open_memmap(cache + '.tmp.npy', 'w+', np.uint8,
                                    (n, config.num_frames, items[0].video.size, items[0].video.size, 3))
    # spawn, not fork: the parent has JAX's threads running.
    with multiprocessing.get_context('spawn').Pool(config.data.workers) as pool:
      for i, frames in enumerate(tqdm(pool.imap(_encode_and_decode, jobs, chunksize=16), total=n,
                                      desc='encode + decode train videos')):
        out[i] = frames
    out.flush()
    del out
    os.replace(cache + '.tmp.npy', cache)
  frames = np.load(cache, mmap_mode='r')
  return TrainData(frames, items, [synthetic.frame_captions(it.video) for it in items])


# ----------------------------------------------------------------------------------------------
# Batches: a pure function of (seed, stage, step), so a resumed run replays the same stream.


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


def siglip_batch(config, data: TrainData, processor, caption_ids: dict[str, np.ndarray], step: int
                 ) -> dict[str, np.ndarray]:
  """batch_size random (video, frame) pairs and their captions plus one hard negative per frame:
  pixels [I, H, W, C], caption_ids [2I, L] (the I captions, then the I shape-swapped ones),
  caption_index [2I] (identity of each text: equal texts are positives of each other),
  image_caption [I] (identity of each frame's caption), caption_words [I, V] (its words, for the
  word loss of `tiny.siglip_loss_fn`). A share `config.siglip.evidence_share` of the frames is drawn
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
  return {'pixels': processor.preprocess(np.stack([data.frames[v, f] for v, f in zip(vids, frames)])),
          'caption_ids': np.stack([caption_ids[t] for t in texts + negatives]),
          'caption_index': np.asarray([index[t] for t in texts + negatives], np.int32),
          'image_caption': np.asarray([index[t] for t in texts], np.int32),
          'caption_words': tiny.frame_word_targets(processor.tokenizer, texts)}


def curriculum_frames(item, num_frames: int, keep: int, rng: np.random.Generator) -> np.ndarray:
  """`keep` sorted frame indices of a `num_frames`-frame video that keep its question answerable:
  every evidence frame, the frames on both sides of each (so flashes stay apart and counts hold),
  the rest drawn at random."""
  evidence = set(item.question.evidence_frames)
  if len(evidence) >= keep:  # the control: any frames show the background
    return np.sort(rng.choice(sorted(evidence), keep, replace=False))
  border = {g for f in evidence for g in (f - 1, f + 1) if 0 <= g < num_frames} - evidence
  chosen = evidence | set(sorted(border)[:keep - len(evidence)])
  rest = sorted(set(range(num_frames)) - chosen)
  chosen |= set(rng.choice(rest, keep - len(chosen), replace=False).tolist())
  return np.asarray(sorted(chosen))


def llava_batch(config, data: TrainData, processor, tower: np.ndarray, prompt_cache: dict, step: int
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
      prompt_cache[v, num] = prompts.build_prompt(processor, item.question.question,
                                                  item.question.options, num)
    frames = (curriculum_frames(item, config.num_frames, num, rng) if short
              else np.arange(config.num_frames))
    built.append(prompt_cache[v, num])
    captions = [data.captions[v][f] for f in frames]
    words.append(tiny.frame_word_targets(processor.tokenizer, captions))
    seen.append(tiny.seen_word_targets(processor.tokenizer, captions))
    happened = synthetic.frame_events(item.video)
    events.append(tiny.event_word_targets(processor.tokenizer, [happened[f] for f in frames]))
    grounding.append(tiny.event_word_targets(processor.tokenizer,
                                             synthetic.option_events(item, tiny.WRONG_OPTION)))
    feats.append(tower[v, frames])
  pb = prompts.collate(built, processor.tokenizer.pad_token_id)
  letters = processor.option_letter_ids(synthetic.NUM_OPTIONS)
  answers = np.asarray([data.items[v].question.answer for v in vids])
  wrong = processor.tokenizer.convert_tokens_to_ids(tiny.WRONG_OPTION)
  option_end = tiny.option_end_index(pb.input_ids, pb.layout.group, letters)
  return {'input_ids': pb.input_ids, 'group': pb.layout.group, 'frame': pb.layout.frame,
          'positions': pb.layout.positions, 'valid': pb.layout.valid, 'answer_index': pb.answer_index,
          'answer_id': letters[answers], 'frame_words': np.stack(words), 'seen_words': np.stack(seen),
          'event_words': np.stack(events),
          'option_end': option_end,
          'option_word': option_end - 1,  # an object option's colour word ("B . red ring")
          'option_events': np.stack(grounding),
          'option_target': tiny.option_line_targets(letters, answers, wrong),
          'question_end': tiny.question_end_index(pb.layout.group),
          'answer_words': tiny.event_word_targets(processor.tokenizer, [
              data.items[v].question.options[a].split(' ') for v, a in zip(vids, answers)]),
          'tower': np.stack(feats)}


def tower_cache(workdir: str, model, params: dict, processor, data: TrainData) -> np.ndarray:
  """The frozen vision tower's features of every training video, float32 [N, F, P, Dv], computed
  once (workdir/data/train_tower.npy; the tower never changes during stage 2)."""
  path = os.path.join(workdir, 'data', 'train_tower.npy')
  if not os.path.isfile(path):
    chunks = []
    for i in tqdm(range(0, len(data.items), 16), desc='vision tower features'):
      pixels = np.stack([processor.preprocess(np.asarray(v)) for v in data.frames[i:i + 16]])
      chunks.append(np.asarray(tiny.tower_features(params, model, jnp.asarray(pixels))))
    np.save(path + '.tmp.npy', np.concatenate(chunks))
    os.replace(path + '.tmp.npy', path)
  return np.load(path)


# ----------------------------------------------------------------------------------------------
# Checkpoints, metrics, plots.


def checkpoint_manager(config, workdir: str, stage: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'ckpt', stage)), options=options)


def restore_or(manager: ocp.CheckpointManager, state: tiny.TrainState) -> tiny.TrainState:
  """The latest checkpoint of `manager` restored into `state`'s structure/shardings, else `state`."""
  latest = manager.latest_step()
  if latest is None:
    return state
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  return manager.restore(latest, args=ocp.args.StandardRestore(abstract))


class MetricsLog:
  """Appends {'stage', 'step', ...} lines to metrics.jsonl; on resume drops lines past the restored
  step of the stage, so the file never holds a step twice."""

  def __init__(self, path: str, stage: str, resumed_step: int):
    self.path, self.stage = path, stage
    lines = []
    if os.path.isfile(path):
      with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in lines if r['stage'] != stage or r['step'] <= resumed_step]
    if len(kept) != len(lines):
      with open(path + '.tmp', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
      os.replace(path + '.tmp', path)

  def write(self, step: int, **values) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps({'stage': self.stage, 'step': step, **values}) + '\n')

  def records(self) -> list[dict]:
    if not os.path.isfile(self.path):  # resumed at the stage's last step: nothing was logged
      return []
    with open(self.path) as f:
      return [r for r in map(json.loads, f) if r['stage'] == self.stage]


def plot_losses(records: list[dict], path: str, title: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([r['step'] for r in records], [r['loss'] for r in records], label='loss')
  if records and 'accuracy' in records[0]:
    ax2 = ax.twinx()
    ax2.plot([r['step'] for r in records], [r['accuracy'] for r in records], 'C1', label='train acc.')
    ax2.set_ylabel('train accuracy (batch)')
    ax2.set_ylim(0, 1)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The loop, shared by both stages.


def train_loop(config, workdir: str, stage: str, state: tiny.TrainState, step_fn, make_batch,
               num_steps: int) -> tiny.TrainState:
  """Runs `step_fn(state, batch) -> (state, metrics)` from the last checkpoint to `num_steps`."""
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  manager = checkpoint_manager(config, workdir, stage)
  state = restore_or(manager, jax.device_put(state, replicated))
  start = int(state.step)
  if start:
    logging.info('%s: resumed from checkpoint step %d', stage, start)
  log = MetricsLog(os.path.join(workdir, 'metrics.jsonl'), stage, start)
  t0, last = time.time(), start
  with tqdm(total=num_steps, initial=start, desc=stage, unit='step', dynamic_ncols=True) as bar:
    for step in range(start, num_steps):
      batch = jax.device_put(make_batch(step), sharded)
      state, metrics = step_fn(state, batch)
      done = step + 1
      if done % config.log_every == 0 or done == num_steps:
        values = {k: float(v) for k, v in metrics.items()}
        rate = (done - last) / max(time.time() - t0, 1e-9)
        log.write(done, **values, steps_per_s=rate, resumed_from=start)
        bar.set_postfix(**{k: f'{v:.3f}' for k, v in values.items()})
        t0, last = time.time(), done
      if done % config.checkpoint_every == 0 or done == num_steps:
        manager.save(done, args=ocp.args.StandardSave(state))
      bar.update(1)
  manager.wait_until_finished()
  manager.close()
  plot_losses(log.records(), os.path.join(workdir, f'loss_{stage}.png'), f'{stage} training')
  return state


def train_siglip(config, workdir: str, data: TrainData, tokenizer, sig_config: dict) -> dict:
  model = tiny.build_siglip(sig_config, jnp.dtype(config.dtype))
  processor = tiny.siglip_processor(tokenizer)
  c = config.siglip
  tx = tiny.optimizer(c.lr, c.warmup, c.steps, c.weight_decay)
  model_rng, head_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = {'model': tiny.init_siglip(model, model_rng),
            'word_head': tiny.init_word_head(model, len(tokenizer), head_rng)}
  state = tiny.create_state(params, tx)
  captions = sorted({t for caps in data.captions for t in caps})
  caption_ids = dict(zip(captions, processor.tokenize(captions)))
  state = train_loop(config, workdir, 'siglip', state,
                     lambda s, b: tiny.siglip_step(s, b, model, tx, c.word_loss_weight),
                     lambda step: siglip_batch(config, data, processor, caption_ids, step), c.steps)
  params = jax.device_get(state.params['model'])  # the word head only trains the tower
  checkpoints.export_pretrained(model, params, sig_config, _export_dir(workdir, 'siglip_tiny'), processor)
  return params


def train_llava(config, workdir: str, data: TrainData, tokenizer, llava_config: dict,
                siglip_params: dict) -> dict:
  """Stage 2: the vision tower is the stage-1 SigLIP's, frozen (its features are cached once); the
  projector, image_newline and decoder train."""
  model = tiny.build_llava(llava_config, jnp.dtype(config.dtype))
  processor = tiny.video_processor(tokenizer, llava_config)
  c = config.llava
  tx = tiny.optimizer(c.lr, c.warmup, c.steps, c.weight_decay)
  params = tiny.init_llava(model, jax.random.PRNGKey(config.seed + 1), siglip_params)
  frozen = {'vision_tower': params.pop('vision_tower')}
  tower = tower_cache(workdir, model, {**params, **frozen}, processor, data)
  prompt_cache: dict = {}
  weights = (('frame_weight', c.frame_loss_weight), ('frame_layer', c.frame_loss_layer),
             ('seen_weight', c.seen_loss_weight), ('seen_layer', c.seen_loss_layer),
             ('event_weight', c.event_loss_weight), ('event_layer', c.event_loss_layer),
             ('option_weight', c.option_loss_weight), ('recall_weight', c.recall_loss_weight),
             ('ground_weight', c.ground_loss_weight))
  state = train_loop(config, workdir, 'llava', tiny.create_state(params, tx),
                     lambda s, b: tiny.llava_step(s, b, model, tx, weights),
                     lambda step: llava_batch(config, data, processor, tower, prompt_cache, step),
                     c.steps)
  params = {**jax.device_get(state.params), **frozen}
  out = _export_dir(workdir, 'llava_ov_tiny')
  checkpoints.export_pretrained(model, params, llava_config, out, processor)
  write_image_config(out)
  return params


def write_image_config(out_dir: str) -> None:
  """preprocessor_config.json next to video_preprocessor_config.json (same pixels), for tools that
  read the image processor of a LLaVA-OneVision checkpoint."""
  with open(os.path.join(out_dir, 'preprocessor_config.json'), 'w') as f:
    json.dump(tiny.PIXEL_CONFIG, f, indent=2, sort_keys=True)


def _export_dir(workdir: str, name: str) -> str:
  path = os.path.join(workdir, 'export', name)
  os.makedirs(path, exist_ok=True)
  return path


def run(config, workdir: str) -> dict:
  """Trains both stages (resuming), exports them and returns the validation summary."""
  from experiments import eval_synthetic  # pylint: disable=g-import-not-at-top
  stages = parse_stages(config.stages)  # before any compute
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  start = time.time()
  if config.stage1_from:
    link_stage1(config, config.stage1_from, workdir)
  tokenizer = tiny.build_tokenizer(tiny.world_texts())
  data = load_train_data(config, workdir)
  logging.info('data ready in %.0f s', time.time() - start)
  siglip_params = train_siglip(config, workdir, data, tokenizer,
                               tiny.siglip_config_dict(len(tokenizer), tokenizer.pad_token_id))
  if 'llava' not in stages:
    return {'train_seconds': time.time() - start}
  train_llava(config, workdir, data, tokenizer, tiny.llava_config_dict(tokenizer), siglip_params)
  train_seconds = time.time() - start
  summary = eval_synthetic.evaluate_assets(
      os.path.join(workdir, 'export'), os.path.join(workdir, 'data'), 'val', config.data.num_val,
      config.seed, config.num_frames)
  summary['train_seconds'] = train_seconds
  with open(os.path.join(workdir, 'val_summary.json'), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary


# What stage 1 leaves in a workdir that stage 2 reads: the decoded videos and the SigLIP checkpoints,
# and, once a LLaVA stage has started there, the frozen tower's features.
STAGE1_FILES = ('data/train_frames.npy', 'ckpt/siglip')
STAGE1_OPTIONAL_FILES = ('data/train_tower.npy',)
STAGE1_FIELDS = ('seed', 'num_frames', 'data.num_train', 'data.fps', 'siglip')


def _config_field(config: dict, dotted: str):
  """config['a']['b'] for 'a.b'; None where a key is missing."""
  for key in dotted.split('.'):
    config = config.get(key) if isinstance(config, dict) else None
  return config


def link_stage1(config, source: str, workdir: str) -> None:
  """Symlinks `source`'s stage-1 outputs into workdir, so the LLaVA stage can be rerun with other
  settings without re-making the data and SigLIP. Fails, naming the field, when the two configs differ
  in what stage 1 depends on (STAGE1_FIELDS), or when source has no finished stage 1."""
  with open(os.path.join(source, 'config.json')) as f:
    theirs = json.load(f)
  ours = json.loads(config.to_json_best_effort())
  for field in STAGE1_FIELDS:
    if _config_field(theirs, field) != _config_field(ours, field):
      raise ValueError(f'stage1_from={source}: its config.{field} = {_config_field(theirs, field)!r} '
                       f'differs from this run\'s {_config_field(ours, field)!r}')
  missing = [name for name in STAGE1_FILES if not os.path.exists(os.path.join(source, name))]
  if missing:
    raise FileNotFoundError(f'stage1_from={source}: {missing} missing (is its stage 1 finished?)')
  for name in STAGE1_FILES + STAGE1_OPTIONAL_FILES:
    src, dst = os.path.abspath(os.path.join(source, name)), os.path.join(workdir, name)
    if os.path.exists(src) and not os.path.lexists(dst):
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.symlink(src, dst)


def parse_stages(value: str) -> list[str]:
  stages = [s.strip() for s in value.split(',') if s.strip()]
  unknown = set(stages) - set(STAGES)
  if unknown or 'siglip' not in stages:
    raise ValueError(f'stages={value!r}: expected siglip or siglip,llava (the LLaVA starts from the SigLIP)')
  return stages


def main(argv):
  del argv
  from experiments import eval_synthetic  # pylint: disable=g-import-not-at-top
  summary = run(_CONFIG.value, _WORKDIR.value)
  if 'llava' in summary:
    print(eval_synthetic.format_summary(summary))
  print(f"training wall time: {summary['train_seconds'] / 60:.1f} min")


if __name__ == '__main__':
  app.run(main)
