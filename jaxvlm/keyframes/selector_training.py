"""Training the learned keyframe selector from the Video-LLM's own causal frame relevance: teacher
labels, the listwise + pairwise distillation loss, the train step and validation. The loop, optimizer
and checkpoints are `jaxvlm.training`'s; `experiments.train_selector` drives it.

1. Teacher labels (skipped for ids already cached): per sample, the causal oracle over the N candidate
   frames (one clean forward + the frame-knockout sweep, samples sharded over the local devices) and the
   SigLIP image / question+options embeddings, one npz per id in `teacher_dir`.
2. Training: listwise cross-entropy between softmax(teacher / tau) and softmax(student scores) plus a
   pairwise hinge on every teacher-ordered pair; adamw with warmup + cosine decay; data-parallel over a
   mesh with replicated params. The batch of step s is a function of (seed, s) only.
3. Validation: recall@k / nDCG@k against the teacher's top-k and recall@k against the evidence frames
   on the held-out ids, next to SigLIP top-k and uniform.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxvlm import distributed, runs, sharding, training
from jaxvlm.keyframes import candidates, metrics, relevance, selector_model, selectors, teacher
from jaxvlm.knockout import specs as knockout


# ---------------------------------------------------------------- teacher labels


def teacher_dir(config, workdir: str) -> str:
  return config.teacher_dir or os.path.join(workdir, 'teacher')


def build_labels(config, workdir: str, cache: teacher.TeacherCache) -> list[tuple[str, str]]:
  """Labels every sample not yet in `cache`; returns the (id, reason) of samples that failed.

  The teacher runs on `config.mesh` (`sharding.mesh_from_config`): on a mesh spanning the processes
  every process labels every sample with the weights split across them and process 0 writes the
  cache; on a local mesh each process labels its share. Multi-process runs need a teacher_dir every
  process sees (the training reads it back on every process)."""
  mesh = sharding.mesh_from_config(config.mesh)
  model, params, processor = runs.load_model(config, mesh)
  sig_model, sig_params, sig_processor = runs.load_siglip(config)
  num_layers = model.config.text.num_hidden_layers
  first, last = candidates.layer_range(config.oracle_layers, num_layers, 'oracle_layers')
  layers = knockout.window(num_layers, first, last - first + 1)
  samples, skipped = runs.load_samples(config, workdir)
  writes = distributed.writes_results(mesh)
  done = distributed.done_ids(mesh, [s.id for s in samples if s.id in cache] if writes else [])
  todo = [s for s in distributed.work_share(samples, mesh) if s.id not in done]
  failures = list(skipped)
  logging.info('teacher: %d samples, %d cached, %d to label here', len(samples), len(samples) - len(done), len(todo))

  def label(cands) -> list[dict]:
    batch = runs.place_batch(runs.collate(cands, processor, runs.batch_multiple(mesh)), mesh)
    answers = [c.sample.answer for c in cands]
    answers += answers[-1:] * (batch.input_ids.shape[0] - len(cands))  # collate repeats the last row
    with sharding.activation_rules(mesh):
      rel = teacher.causal_labels(
        model,
        params,
        batch.input_ids,
        batch.pixels,
        batch.layout,
        batch.answer_index,
        batch.option_ids,
        config.num_candidates,
        np.asarray(answers),
        layers,
        config.tail_multiple,
      )
    for i, c in enumerate(cands if writes else []):
      query = relevance.query_texts(c.sample.question, c.sample.options)[1]
      frame_emb, text_emb = teacher.siglip_features(sig_model, sig_params, sig_processor, c.frames, query)
      cache.put(teacher.Label(c.sample.id, frame_emb, text_emb, rel[i], c.evidence))
    return [{'id': c.sample.id} for c in cands]

  for chunk in tqdm(
    list(runs.batches(todo, config.label_batch_size)), desc='teacher', unit='batch', disable=not distributed.is_main()
  ):
    cands, failed = candidates.prepare_pool(chunk, processor, config, runs.max_positions(model))
    failures += failed
    if cands:  # a batch that fails on the model side is retried sample by sample
      failures += [(r['id'], r['error']) for r in runs.batch_records(cands, label) if 'error' in r]
  distributed.barrier('teacher labels')  # the cache is complete before any process reads it
  return failures


# ---------------------------------------------------------------- data


def is_val(sample_id: str, fraction: float) -> bool:
  return zlib.crc32(sample_id.encode()) % 10000 < fraction * 10000


def stack(labels: list[teacher.Label]) -> dict[str, np.ndarray]:
  """frame_emb [M, N, D], text_emb [M, D], relevance [M, N]."""
  return {
    'frame_emb': np.stack([l.frame_emb for l in labels]).astype(np.float32),
    'text_emb': np.stack([l.text_emb for l in labels]).astype(np.float32),
    'relevance': np.stack([l.relevance for l in labels]).astype(np.float32),
  }


def step_batch(train: dict[str, np.ndarray], step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """The batch of `step`: a function of (seed, step) alone, so resuming replays it exactly."""
  n = len(train['relevance'])
  idx = np.random.default_rng((seed, step)).choice(n, batch_size, replace=batch_size > n)
  return {k: v[idx] for k, v in train.items()}


def load_labels(config, workdir: str) -> tuple[dict, dict, list[np.ndarray], list[tuple[str, str]]]:
  """(train arrays, val arrays, val evidence, labelling failures), labelling what is missing first."""
  cache = teacher.TeacherCache(teacher_dir(config, workdir))
  failures = build_labels(config, workdir, cache) if config.label else []
  labels = [l for l in cache if len(l.relevance) == config.num_candidates]
  train = [l for l in labels if not is_val(l.id, config.val_fraction)]
  val = [l for l in labels if is_val(l.id, config.val_fraction)]
  if not train or not val:
    raise ValueError(
      f'{len(train)} train and {len(val)} validation labels in {cache.root} '
      f'(N={config.num_candidates}): need at least one of each'
    )
  return stack(train), stack(val), [l.evidence for l in val], failures


# ---------------------------------------------------------------- loss and step


def listwise_loss(student: jnp.ndarray, target: jnp.ndarray, tau: float) -> jnp.ndarray:
  """student, target [B, N] -> mean over B of CE(softmax(target / tau), softmax(student))."""
  p = jax.nn.softmax(target / tau, axis=-1)
  return -(p * jax.nn.log_softmax(student, axis=-1)).sum(-1).mean()


def pairwise_loss(student: jnp.ndarray, target: jnp.ndarray, margin: float) -> jnp.ndarray:
  """Hinge max(0, margin - (s_i - s_j)) averaged over the pairs the teacher orders i > j."""
  ordered = (target[:, :, None] > target[:, None, :]).astype(jnp.float32)  # [B, N, N]
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


def make_optimizer(hp: Hyper):
  """AdamW, warmup + cosine decay to 1 % of the peak learning rate."""
  return training.optimizer(hp.learning_rate, hp.warmup_steps, hp.num_steps, hp.weight_decay, end_fraction=0.01)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=3)
def train_step(model: selector_model.FrameSelector, hp: Hyper, tx, state: training.TrainState, batch):
  """(state, batch) -> (state, {'loss'}). Batch leaves [B, ...] split over the sample axes, state
  replicated: the input shardings carry through, the gradient mean is an all-reduce."""

  def loss_fn(params):
    s = cast(jax.Array, model.apply({'params': params}, batch['frame_emb'], batch['text_emb']))
    return listwise_loss(s, batch['relevance'], hp.tau) + hp.pairwise_weight * pairwise_loss(
      s, batch['relevance'], hp.pairwise_margin
    )

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return training.apply_grads(state, grads, tx), {'loss': loss}


# ---------------------------------------------------------------- validation


def evaluate(model, params, val: dict[str, np.ndarray], evidence: list[np.ndarray], k: int) -> dict:
  """Selector vs teacher top-k and vs evidence frames on the held-out set, next to SigLIP top-k (the
  cosine similarity of frame and question+options embeddings) and uniform."""
  s = np.asarray(
    selector_model.batch_scores(model, params, jnp.asarray(val['frame_emb']), jnp.asarray(val['text_emb']))
  )
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  sig = np.einsum('mnd,md->mn', norm(val['frame_emb']), norm(val['text_emb']))
  out = {}
  for name, scores, fn in (
    ('val', s, selectors.top_k),
    ('siglip', sig, selectors.top_k),
    ('uniform', sig, selectors.uniform),
  ):
    sel = [fn(x, k) for x in scores]
    out[f'{name}_recall'] = float(
      np.mean([metrics.recall_at_k(a, selectors.top_k(t, k)) for a, t in zip(sel, val['relevance'])])
    )
    ndcg = [x for x in (metrics.ndcg_at_k(a, t) for a, t in zip(sel, val['relevance'])) if np.isfinite(x)]
    out[f'{name}_ndcg'] = float(np.mean(ndcg)) if ndcg else float('nan')
    ev = [metrics.recall_at_k(a, e) for a, e in zip(sel, evidence) if len(e)]
    out[f'{name}_recall_evidence'] = float(np.mean(ev)) if ev else float('nan')
  return out
