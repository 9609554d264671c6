"""The embedded default's two training stages and their export as Hugging Face directories.

Stage 1: a tiny SigLIP (both towers) with the sigmoid loss on (frame, caption) pairs plus a word loss
(each frame's mean patch feature predicts its caption's words: the tower's only teacher for a moving
object's direction), frames drawn mostly from evidence and moving-object frames, one shape-swapped
hard-negative caption per frame. Stage 2: a tiny LLaVA-OneVision whose vision tower is the stage-1
SigLIP's, frozen (its features cached once); the projector and decoder train on the answer letter
plus six auxiliary losses (see `losses.llava_loss_fn`). Both stages run `jaxvlm.training.train_loop`:
orbax checkpoints (a killed run resumes from the last one and replays the same batches), each batch
split over the sample axes of a mesh of all local devices.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from jaxvlm import checkpoints, config_checks, runs, sharding, training
from jaxvlm.tiny import config_fields, evaluation, losses, models
from jaxvlm.tiny import tokenizer as tokenizer_lib
from jaxvlm.tiny.batches import STAGES, TrainData, llava_batch, load_train_data, siglip_batch, tower_cache


def train_loop(
  config, workdir: str, stage: str, state: training.TrainState, step_fn, make_batch, num_steps: int
) -> training.TrainState:
  """One stage through the shared loop: checkpoints in workdir/ckpt/<stage>, metrics.jsonl lines tagged
  with the stage, loss_<stage>.png."""
  manager = training.checkpoint_manager(os.path.join(workdir, 'ckpt', stage), config.keep_checkpoints)
  log = training.MetricsLog(os.path.join(workdir, 'metrics.jsonl'), manager.latest_step() or 0, stage)
  mesh = sharding.make_mesh(devices=jax.devices())
  state = training.train_loop(
    state,
    step_fn,
    make_batch,
    num_steps,
    manager,
    log,
    mesh,
    log_every=config.log_every,
    checkpoint_every=config.checkpoint_every,
    desc=stage,
  )
  manager.close()
  training.plot_curves(log.records(), os.path.join(workdir, f'loss_{stage}.png'), f'{stage} training')
  return state


def _optimizer(c):
  """AdamW, warmup + cosine decay to 0, gradients clipped to global norm 1."""
  return training.optimizer(c.lr, c.warmup, c.steps, c.weight_decay, clip=1.0)


def train_siglip(config, workdir: str, data: TrainData, tokenizer, sig_config: dict) -> dict:
  model = models.build_siglip(sig_config, jnp.dtype(config.dtype))
  processor = models.siglip_processor(tokenizer)
  c = config.siglip
  tx = _optimizer(c)
  model_rng, head_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = {
    'model': models.init_siglip(model, model_rng),
    'word_head': models.init_word_head(model, len(tokenizer), head_rng),
  }
  state = training.create_state(params, tx)
  captions = sorted({t for caps in data.captions for t in caps})
  caption_ids = dict(zip(captions, processor.tokenize(captions)))
  state = train_loop(
    config,
    workdir,
    'siglip',
    state,
    lambda s, b: losses.siglip_step(s, b, model, tx, c.word_loss_weight),
    lambda step: siglip_batch(config, data, processor, caption_ids, step),
    c.steps,
  )
  params = jax.device_get(state.params['model'])  # the word head only trains the tower
  checkpoints.export_pretrained(model, params, sig_config, _export_dir(workdir, 'siglip_tiny'), processor)
  return params


def train_llava(config, workdir: str, data: TrainData, tokenizer, llava_config: dict, siglip_params: dict) -> dict:
  """Stage 2: the vision tower is the stage-1 SigLIP's, frozen (its features are cached once); the
  projector, image_newline and decoder train."""
  model = models.build_llava(llava_config, jnp.dtype(config.dtype))
  processor = models.video_processor(tokenizer, llava_config)
  c = config.llava
  tx = _optimizer(c)
  params = models.init_llava(model, jax.random.PRNGKey(config.seed + 1), siglip_params)
  frozen = {'vision_tower': params.pop('vision_tower')}
  tower = tower_cache(workdir, model, {**params, **frozen}, processor, data)
  prompt_cache: dict = {}
  weights = (
    ('frame_weight', c.frame_loss_weight),
    ('frame_layer', c.frame_loss_layer),
    ('seen_weight', c.seen_loss_weight),
    ('seen_layer', c.seen_loss_layer),
    ('event_weight', c.event_loss_weight),
    ('event_layer', c.event_loss_layer),
    ('option_weight', c.option_loss_weight),
    ('recall_weight', c.recall_loss_weight),
    ('ground_weight', c.ground_loss_weight),
  )
  state = train_loop(
    config,
    workdir,
    'llava',
    training.create_state(params, tx),
    lambda s, b: losses.llava_step(s, b, model, tx, weights),
    lambda step: llava_batch(config, data, processor, tower, prompt_cache, step),
    c.steps,
  )
  params = {**jax.device_get(state.params), **frozen}
  out = _export_dir(workdir, 'llava_ov_tiny')
  checkpoints.export_pretrained(model, params, llava_config, out, processor)
  write_image_config(out)
  return params


def write_image_config(out_dir: str) -> None:
  """preprocessor_config.json next to video_preprocessor_config.json (same pixels), for tools that
  read the image processor of a LLaVA-OneVision checkpoint."""
  with open(os.path.join(out_dir, 'preprocessor_config.json'), 'w') as f:
    json.dump(models.PIXEL_CONFIG, f, indent=2, sort_keys=True)


def _export_dir(workdir: str, name: str) -> str:
  path = os.path.join(workdir, 'export', name)
  os.makedirs(path, exist_ok=True)
  return path


def train(config, workdir: str) -> dict:
  """Trains both stages (resuming), exports them and returns the validation summary."""
  config_checks.check(config, config_fields.TRAIN_SYNTHETIC)  # every field, before any compute
  stages = parse_stages(config.stages)
  os.makedirs(workdir, exist_ok=True)
  runs.lock_workdir(workdir)  # one run at a time (a dead run's lock is taken over)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  start = time.time()
  if config.stage1_from:
    link_stage1(config, config.stage1_from, workdir)
  tokenizer = tokenizer_lib.build_tokenizer(tokenizer_lib.world_texts())
  data = load_train_data(config, workdir)
  logging.info('data ready in %.0f s', time.time() - start)
  siglip_params = train_siglip(
    config, workdir, data, tokenizer, models.siglip_config_dict(len(tokenizer), tokenizer.pad_token_id)
  )
  if 'llava' not in stages:
    return {'train_seconds': time.time() - start}
  train_llava(config, workdir, data, tokenizer, models.llava_config_dict(tokenizer), siglip_params)
  train_seconds = time.time() - start
  summary = evaluation.evaluate_assets(
    os.path.join(workdir, 'export'),
    os.path.join(workdir, 'data'),
    'val',
    config.data.num_val,
    config.seed,
    config.num_frames,
  )
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
  value: Any = config
  for key in dotted.split('.'):
    value = value.get(key) if isinstance(value, dict) else None
  return value


def link_stage1(config, source: str, workdir: str) -> None:
  """Symlinks `source`'s stage-1 outputs into workdir, so the LLaVA stage can be rerun with other
  settings without re-making the data and SigLIP. Fails, naming the field, when the two configs differ
  in what stage 1 depends on (STAGE1_FIELDS), or when source has no finished stage 1."""
  with open(os.path.join(source, 'config.json')) as f:
    theirs = json.load(f)
  ours = json.loads(config.to_json_best_effort())
  for field in STAGE1_FIELDS:
    if _config_field(theirs, field) != _config_field(ours, field):
      raise ValueError(
        f'stage1_from={source}: its config.{field} = {_config_field(theirs, field)!r} '
        f'differs from this run\'s {_config_field(ours, field)!r}'
      )
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
