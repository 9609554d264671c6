"""Using a keyframe selector trained by experiments.train_selector: load the best checkpoint of its
workdir and pick frames of a video (keyframe diagnosis's selector 'learned', score's
--selector=learned, or any Python caller)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from jaxvlm import checkpoints, training, video
from jaxvlm.keyframes import relevance, selector_model, teacher


def selector_from_config(config) -> selector_model.FrameSelector:
  return selector_model.FrameSelector(selector_model.SelectorConfig(**config.model), jnp.dtype(config.dtype))


def best_manager(workdir: str) -> ocp.CheckpointManager:
  """workdir/best: keeps the one step with the highest validation recall@k."""
  return training.checkpoint_manager(os.path.join(workdir, 'best'), keep=1, best_metric='val_recall')


def load_selector(config, workdir: str, num_candidates: int, embed_dim: int):
  """(model, params) of the best checkpoint of a training run in `workdir`, on one local device whatever
  the devices it was trained on (orbax would otherwise ask for the saving run's topology)."""
  model = selector_from_config(config)
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
    jax.eval_shape(lambda: selector_model.init_params(model, num_candidates, embed_dim)),
  )
  best = best_manager(workdir)
  step = best.best_step()
  if step is None:
    raise ValueError(f'no best checkpoint under {workdir}/best')
  return model, best.restore(step, args=ocp.args.StandardRestore(abstract))


@dataclasses.dataclass(frozen=True)
class TrainedSelector:
  """A trained selector with the SigLIP it reads (model, params, processor) and its pool size N."""

  model: selector_model.FrameSelector
  params: dict
  siglip: relevance.LoadedSiglip
  num_candidates: int


def load_trained(workdir: str) -> TrainedSelector:
  """The best selector of the training run in `workdir` (its config.json names SigLIP and N)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{workdir} holds no train_selector run (no config.json)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  sig = checkpoints.load_pretrained(config.siglip_checkpoint, dtype=jnp.dtype(config.dtype))
  embed_dim = sig[0].config.vision_config.hidden_size
  model, params = load_selector(config, workdir, config.num_candidates, embed_dim)
  return TrainedSelector(model, params, sig, config.num_candidates)


def pick_frames(
  trained: TrainedSelector,
  video_path: str,
  question: str,
  options,
  k: int,
  start_s: float | None = None,
  end_s: float | None = None,
) -> video.Frames:
  """The k frames the selector picks from the video's N-frame candidate pool (time order)."""
  pool = video.sample_frames(video_path, trained.num_candidates, start_s=start_s, end_s=end_s, rule='pool')
  frame_emb, text_emb = teacher.siglip_features(
    *trained.siglip, pool.pixels, relevance.query_texts(question, options)[1]
  )
  idx = selector_model.select(selector_model.scores(trained.model, trained.params, frame_emb, text_emb), k)
  return video.Frames(pool.pixels[idx], pool.indices[idx], pool.timestamps_s[idx])
