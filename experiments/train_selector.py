r"""Train the learned keyframe selector from the Video-LLM's own causal frame relevance.

  python -m experiments.train_selector --config=configs/train_selector.py[:preset] --workdir=DIR \
      [--config.num_steps=500 --config.tau=0.5 ...]

1. Teacher labels (skipped for ids already cached): per sample, the causal oracle over the N candidate
   frames (one clean forward + the frame-knockout sweep, samples sharded over the local devices) and the
   SigLIP image / question+options embeddings, one npz per id in `teacher_dir`.
2. Training: listwise cross-entropy between softmax(teacher / tau) and softmax(student scores) plus a
   pairwise hinge on every teacher-ordered pair; adamw with warmup + cosine decay; data-parallel over a
   ('data',) mesh with replicated params. The batch of step s is a function of (seed, s) only, so a
   resumed run sees the same batches as an uninterrupted one.
3. Every `eval_every` steps: recall@k / nDCG@k against the teacher's top-k and recall@k against the
   evidence frames on the held-out ids. Orbax checkpoints: workdir/checkpoints (latest `keep`, resumed
   from) and workdir/best (the best by validation recall@k).
Writes config.json, metrics.jsonl, summary.json/csv and loss_curve.png.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from experiments import common, keyframe_diagnosis, learned_selector, results  # pylint: disable=wrong-import-position
from jaxvlm import checkpoints, knockout, sharding  # pylint: disable=wrong-import-position
from jaxvlm.keyframes import (metrics, relevance, selector_model, selectors,  # pylint: disable=wrong-import-position
                              teacher)


# ---------------------------------------------------------------- teacher labels

def teacher_dir(config, workdir: str) -> str:
  return config.teacher_dir or os.path.join(workdir, 'teacher')


def build_labels(config, workdir: str, cache: teacher.TeacherCache) -> list[tuple[str, str]]:
  """Labels every sample not yet in `cache`; returns the (id, reason) of samples that failed."""
  model, params, processor = common.load_model(config)
  sig_model, sig_params, sig_processor = checkpoints.load_pretrained(config.siglip_checkpoint,
                                                                     dtype=jnp.dtype(config.dtype))
  num_layers = model.config.text.num_hidden_layers
  first, last = keyframe_diagnosis.layer_range(config.oracle_layers, num_layers, 'oracle_layers')
  layers = knockout.window(num_layers, first, last - first + 1)
  mesh = sharding.make_mesh(devices=jax.local_devices())
  params = sharding.shard_params(params, mesh)
  samples, skipped = common.load_samples(config, workdir)
  todo = [s for s in samples if s.id not in cache]
  failures = list(skipped)
  logging.info('teacher: %d samples, %d cached, %d to label', len(samples), len(samples) - len(todo), len(todo))
  for chunk in tqdm(list(common.batches(todo, config.label_batch_size)), desc='teacher', unit='batch'):
    cands, failed = keyframe_diagnosis.prepare(chunk, processor, config)
    failures += failed
    if not cands:
      continue
    batch = common.place_batch(common.collate(cands, processor, common.batch_multiple(mesh)), mesh)
    answers = [c.sample.answer for c in cands]
    answers += answers[-1:] * (batch.input_ids.shape[0] - len(cands))   # collate repeats the last row
    with sharding.activation_rules(mesh):
      rel = teacher.causal_labels(model, params, batch.input_ids, batch.pixels, batch.layout,
                                  batch.answer_index, batch.option_ids, config.num_candidates,
                                  np.asarray(answers), layers, config.tail_multiple)
    for i, c in enumerate(cands):
      query = relevance.query_texts(c.sample.question, c.sample.options)[1]
      frame_emb, text_emb = teacher.siglip_features(sig_model, sig_params, sig_processor, c.frames, query)
      cache.put(teacher.Label(c.sample.id, frame_emb, text_emb, rel[i], c.evidence))
  return failures


# ---------------------------------------------------------------- data

def is_val(sample_id: str, fraction: float) -> bool:
  return zlib.crc32(sample_id.encode()) % 10000 < fraction * 10000


def stack(labels: list[teacher.Label]) -> dict[str, np.ndarray]:
  """frame_emb [M, N, D], text_emb [M, D], relevance [M, N]."""
  return {'frame_emb': np.stack([l.frame_emb for l in labels]).astype(np.float32),
          'text_emb': np.stack([l.text_emb for l in labels]).astype(np.float32),
          'relevance': np.stack([l.relevance for l in labels]).astype(np.float32)}


def step_batch(train: dict[str, np.ndarray], step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """The batch of `step`: a function of (seed, step) alone, so resuming replays it exactly."""
  n = len(train['relevance'])
  idx = np.random.default_rng((seed, step)).choice(n, batch_size, replace=batch_size > n)
  return {k: v[idx] for k, v in train.items()}


# ---------------------------------------------------------------- loss and step

def listwise_loss(student: jnp.ndarray, target: jnp.ndarray, tau: float) -> jnp.ndarray:
  """student, target [B, N] -> mean over B of CE(softmax(target / tau), softmax(student))."""
  p = jax.nn.softmax(target / tau, axis=-1)
  return -(p * jax.nn.log_softmax(student, axis=-1)).sum(-1).mean()


def pairwise_loss(student: jnp.ndarray, target: jnp.ndarray, margin: float) -> jnp.ndarray:
  """Hinge max(0, margin - (s_i - s_j)) averaged over the pairs the teacher orders i > j."""
  ordered = (target[:, :, None] > target[:, None, :]).astype(jnp.float32)     # [B, N, N]
  hinge = jax.nn.relu(margin - (student[:, :, None] - student[:, None, :]))
  return (ordered * hinge).sum() / jnp.maximum(ordered.sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class Hyper:
  """The loss and optimiser fields of the config, hashable: a static jit argument, so runs with the
  same values share one compiled step."""
  tau: float
  pairwise_weight: float
  pairwise_margin: float
  learning_rate: float
  warmup_steps: int
  num_steps: int
  weight_decay: float

  @classmethod
  def from_config(cls, config) -> Hyper:
    return cls(*(config[f.name] for f in dataclasses.fields(cls)))


def make_optimizer(hp: Hyper) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, hp.learning_rate, hp.warmup_steps,
                                                max(hp.num_steps, hp.warmup_steps + 1),
                                                end_value=hp.learning_rate * 0.01)
  return optax.adamw(schedule, weight_decay=hp.weight_decay)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_opt_state(model: selector_model.FrameSelector, hp: Hyper, params):
  del model
  return make_optimizer(hp).init(params)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def train_step(model: selector_model.FrameSelector, hp: Hyper, state, batch):
  """(state, batch) -> (state, loss). Batch leaves [B, ...] split over 'data', state replicated: the
  input shardings carry through, the gradient mean is an all-reduce."""

  def loss_fn(params):
    s = model.apply({'params': params}, batch['frame_emb'], batch['text_emb'])
    return (listwise_loss(s, batch['relevance'], hp.tau)
            + hp.pairwise_weight * pairwise_loss(s, batch['relevance'], hp.pairwise_margin))

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = make_optimizer(hp).update(grads, state['opt_state'], state['params'])
  return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state}, loss


# ---------------------------------------------------------------- validation

def evaluate(model, params, val: dict[str, np.ndarray], evidence: list[np.ndarray], k: int) -> dict:
  """Selector vs teacher top-k and vs evidence frames on the held-out set, next to SigLIP top-k (the
  cosine similarity of frame and question+options embeddings) and uniform."""
  s = np.asarray(selector_model.batch_scores(model, params, jnp.asarray(val['frame_emb']),
                                             jnp.asarray(val['text_emb'])))
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  sig = np.einsum('mnd,md->mn', norm(val['frame_emb']), norm(val['text_emb']))
  out = {}
  for name, scores, fn in (('val', s, selectors.top_k), ('siglip', sig, selectors.top_k),
                           ('uniform', sig, selectors.uniform)):
    sel = [fn(x, k) for x in scores]
    out[f'{name}_recall'] = float(np.mean([metrics.recall_at_k(a, selectors.top_k(t, k))
                                           for a, t in zip(sel, val['relevance'])]))
    ndcg = [x for x in (metrics.ndcg_at_k(a, t) for a, t in zip(sel, val['relevance'])) if np.isfinite(x)]
    out[f'{name}_ndcg'] = float(np.mean(ndcg)) if ndcg else float('nan')
    ev = [metrics.recall_at_k(a, e) for a, e in zip(sel, evidence) if len(e)]
    out[f'{name}_recall_evidence'] = float(np.mean(ev)) if ev else float('nan')
  return out


# ---------------------------------------------------------------- the run

class MetricsLog:
  """metrics.jsonl; on resume from step r, lines of steps > r (computed after the last checkpoint by
  the killed run) are dropped, so the file equals an uninterrupted run's."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:  # torn last line of a killed run
            continue
          if rec['step'] <= resume_step:
            kept.append(line if line.endswith('\n') else line + '\n')
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)

  def append(self, rec: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(results._jsonable(rec), sort_keys=True) + '\n')  # pylint: disable=protected-access

  def records(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(line) for line in f]


def plot_curves(records: list[dict], path: str) -> None:
  train = [(r['step'], r['loss']) for r in records if 'loss' in r]
  val = [(r['step'], r['val_recall'], r['siglip_recall']) for r in records if 'val_recall' in r]
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
  if train:
    a.plot(*zip(*train))
  a.set(xlabel='step', ylabel='loss', title='training loss', yscale='log')
  if val:
    steps, learned, sig = zip(*val)
    b.plot(steps, learned, label='learned')
    b.plot(steps, sig, '--', label='SigLIP top-k')
    b.legend()
  b.set(xlabel='step', ylabel='recall@k vs teacher', title='validation')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def checkpoint_managers(workdir: str, keep: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
  """(latest, best): `latest` keeps the last `keep` steps and is what a restart resumes from; `best`
  keeps the one step with the highest validation recall@k."""
  latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                                      enable_async_checkpointing=False))
  return latest, learned_selector.best_manager(workdir)


def load_labels(config, workdir: str) -> tuple[dict, dict, list[np.ndarray], list[tuple[str, str]]]:
  """(train arrays, val arrays, val evidence, labelling failures), labelling what is missing first."""
  cache = teacher.TeacherCache(teacher_dir(config, workdir))
  failures = build_labels(config, workdir, cache) if config.label else []
  labels = [l for l in cache if len(l.relevance) == config.num_candidates]
  train = [l for l in labels if not is_val(l.id, config.val_fraction)]
  val = [l for l in labels if is_val(l.id, config.val_fraction)]
  if not train or not val:
    raise ValueError(f'{len(train)} train and {len(val)} validation labels in {cache.root} '
                     f'(N={config.num_candidates}): need at least one of each')
  return stack(train), stack(val), [l.evidence for l in val], failures


def run(config, workdir: str) -> dict:
  """Labels (or reuses labels), trains or resumes, returns the summary dict."""
  results.prepare_workdir(workdir, config)
  train, val, evidence, failures = load_labels(config, workdir)
  devices = jax.devices() if config.num_devices < 0 else jax.devices()[:config.num_devices]
  mesh = sharding.make_mesh(devices=devices)
  if config.batch_size % len(devices):
    raise ValueError(f'batch_size={config.batch_size} is not a multiple of the {len(devices)} devices')
  model = learned_selector.selector_from_config(config)
  hp = Hyper.from_config(config)
  params = selector_model.init_params(model, config.num_candidates, train['frame_emb'].shape[-1], config.seed)
  state = jax.device_put({'params': params, 'opt_state': init_opt_state(model, hp, params)},
                         sharding.replicated(mesh))
  latest, best = checkpoint_managers(workdir, config.keep)
  start = latest.latest_step() or 0
  if start:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = latest.restore(start, args=ocp.args.StandardRestore(abstract))
    logging.info('resumed from step %d', start)
  log = MetricsLog(os.path.join(workdir, 'metrics.jsonl'), start)
  end = config.num_steps if config.stop_after_steps <= 0 else min(config.num_steps, config.stop_after_steps)
  for step in tqdm(range(start + 1, end + 1), desc='train', unit='step', initial=start, total=config.num_steps):
    batch = sharding.shard_batch(step_batch(train, step, config.batch_size, config.seed), mesh)
    state, loss = train_step(model, hp, state, batch)
    log.append({'step': step, 'loss': float(loss)})
    if step % config.eval_every == 0 or step == config.num_steps:
      m = evaluate(model, state['params'], val, evidence, config.k)
      log.append({'step': step, **m})
      if step not in best.all_steps():
        best.save(step, args=ocp.args.StandardSave(state['params']), metrics=m)
    # No checkpoint at a stop_after_steps stop: like a kill, the restart resumes from the last periodic one.
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      latest.save(step, args=ocp.args.StandardSave(state))
  latest.wait_until_finished()
  best.wait_until_finished()
  records = log.records()
  plot_curves(records, os.path.join(workdir, 'loss_curve.png'))
  evals = [r for r in records if 'val_recall' in r]
  summary = {'step': end, 'num_train': len(train['relevance']), 'num_val': len(val['relevance']),
             'num_devices': len(devices), 'best_step': best.best_step(),
             'labelling_failures': [{'id': i, 'error': e} for i, e in failures],
             'final': evals[-1] if evals else None}
  results.write_summary(workdir, summary, evals)
  return summary


def main(argv):
  del argv
  summary = run(_CONFIG.value, _WORKDIR.value)
  print(json.dumps(results._jsonable(summary), indent=1))  # pylint: disable=protected-access


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/train_selector.py[:preset]',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/train_selector', 'where results go (resumes if it holds a run)')
  app.run(main)
