"""Teacher labels for the learned selector, cached on disk per sample.

A label is the Video-LLM's causal frame relevance over the candidate pool (relevance.causal_relevance,
the sweep engine's reuse path), stored next to the frozen SigLIP features the selector reads: the
candidate frames' image embeddings and the text embedding of question + options. One
`<cache>/<sha1(id)>.npz` per sample, written atomically, so a rerun skips every cached id and a kill
never leaves a torn file.

Letters: B samples, N candidate frames, D SigLIP width.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import prompts
from jaxvlm.knockout import engine as sweep
from jaxvlm.keyframes import relevance
from jaxvlm.models import siglip


@dataclasses.dataclass(frozen=True)
class Label:
  """frame_emb [N, D], text_emb [D], relevance [N] (causal oracle), evidence: candidate positions of
  the ground-truth evidence frames (may be empty)."""

  id: str
  frame_emb: np.ndarray
  text_emb: np.ndarray
  relevance: np.ndarray
  evidence: np.ndarray


class TeacherCache:
  """Directory of one npz per sample id."""

  def __init__(self, root: str):
    self.root = root
    os.makedirs(root, exist_ok=True)

  def _path(self, sample_id: str) -> str:
    return os.path.join(self.root, hashlib.sha1(sample_id.encode()).hexdigest() + '.npz')

  def __contains__(self, sample_id: str) -> bool:
    return os.path.exists(self._path(sample_id))

  def put(self, label: Label) -> None:
    path = self._path(label.id)
    tmp = path + '.tmp.npz'
    np.savez(
      tmp,
      id=np.asarray(label.id),
      frame_emb=label.frame_emb.astype(np.float32),
      text_emb=label.text_emb.astype(np.float32),
      relevance=label.relevance.astype(np.float32),
      evidence=np.asarray(label.evidence, np.int64),
    )
    os.replace(tmp, path)

  def get(self, sample_id: str) -> Label:
    with np.load(self._path(sample_id)) as z:
      return Label(str(z['id']), z['frame_emb'], z['text_emb'], z['relevance'], z['evidence'])

  def ids(self) -> list[str]:
    """Every cached id, sorted."""
    out = []
    for name in os.listdir(self.root):
      if name.endswith('.npz') and not name.endswith('.tmp.npz'):
        with np.load(os.path.join(self.root, name)) as z:
          out.append(str(z['id']))
    return sorted(out)

  def __iter__(self) -> Iterator[Label]:
    return (self.get(i) for i in self.ids())


@functools.partial(jax.jit, static_argnums=0)
def _features(model: siglip.SiglipModel, params, pixels, input_ids):
  image = model.apply({'params': params}, pixels, method=siglip.SiglipModel.image_features)
  text = model.apply({'params': params}, input_ids, method=siglip.SiglipModel.text_features)
  return image, text


def siglip_features(
  model: siglip.SiglipModel, params, processor, frames: np.ndarray, text: str
) -> tuple[np.ndarray, np.ndarray]:
  """uint8 frames [N, H, W, 3] and one query -> (image embeddings [N, D], text embedding [D]),
  unnormalised pooled SigLIP outputs (processor: SiglipProcessor)."""
  image, txt = _features(
    model, params, jnp.asarray(processor.preprocess(frames)), jnp.asarray(processor.tokenize([text]))
  )
  return np.asarray(image), np.asarray(txt[0])


def causal_labels(
  model,
  params,
  batch_input_ids,
  batch_pixels,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
  num_frames: int,
  answers: np.ndarray,
  layers: np.ndarray | None = None,
  tail_multiple: int = 16,
) -> np.ndarray:
  """Causal relevance [B, N] of a collated batch (all N candidates in each prompt): one clean forward
  plus the frame-knockout sweep over the text tail."""
  clean = sweep.clean_run(model, params, batch_input_ids, batch_pixels, layout, answer_index, option_ids)
  return relevance.causal_relevance(
    model, params, clean, layout, answer_index, option_ids, num_frames, np.asarray(answers), layers, tail_multiple
  ).relevance
