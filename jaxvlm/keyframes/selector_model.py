"""A learned keyframe selector: scores every candidate frame from frozen SigLIP features.

Inputs per sample: SigLIP image embeddings of the N candidate frames [N, D], the SigLIP text
embedding of the question (+ options) [D], and the frames' temporal positions t / N. Each frame
token is the sum of projections of its embedding, its cosine similarity to the text (the SigLIP
top-k signal, given explicitly so the network starts from it) and a sinusoidal code of its position;
the text embedding is prepended as one extra token, so a few pre-LayerNorm transformer-encoder layers
let every frame see the question and the other frames. A linear head reads one score per frame.

Letters: B samples, N candidate frames, D SigLIP width, W selector width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.keyframes import selectors


@dataclasses.dataclass(frozen=True)
class SelectorConfig:
  width: int = 128  # W
  depth: int = 2  # encoder layers
  num_heads: int = 4
  mlp_ratio: int = 2
  num_freqs: int = 8  # sinusoidal frequencies of t / N


def temporal_code(num_frames: int, num_freqs: int) -> jnp.ndarray:
  """Sinusoidal code of t / N for t in 0..N-1 -> [N, 2 * num_freqs]."""
  t = (jnp.arange(num_frames, dtype=jnp.float32) / num_frames)[:, None]
  freqs = jnp.pi * 2.0 ** jnp.arange(num_freqs, dtype=jnp.float32)[None]
  return jnp.concatenate([jnp.sin(t * freqs), jnp.cos(t * freqs)], axis=-1)


def _normalize(x: jnp.ndarray) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class EncoderLayer(nn.Module):
  config: SelectorConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    x = nn.LayerNorm(dtype=self.dtype, name='layer_norm1')(h)
    h = h + nn.MultiHeadDotProductAttention(num_heads=c.num_heads, dtype=self.dtype, name='self_attn')(x, x)
    x = nn.LayerNorm(dtype=self.dtype, name='layer_norm2')(h)
    x = nn.Dense(c.width * c.mlp_ratio, dtype=self.dtype, name='fc1')(x)
    return h + nn.Dense(c.width, dtype=self.dtype, name='fc2')(nn.gelu(x))


class FrameSelector(nn.Module):
  """frame_emb [B, N, D], text_emb [B, D] -> scores [B, N] (float32)."""

  config: SelectorConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, frame_emb: jnp.ndarray, text_emb: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    frames, text = _normalize(frame_emb), _normalize(text_emb)  # [B, N, D], [B, D]
    sim = jnp.einsum('bnd,bd->bn', frames, text)[..., None]  # [B, N, 1]
    pos = temporal_code(frames.shape[1], c.num_freqs)[None]  # [1, N, 2F]
    h = (
      nn.Dense(c.width, dtype=self.dtype, name='frame_proj')(frames)
      + nn.Dense(c.width, dtype=self.dtype, name='sim_proj')(sim)
      + nn.Dense(c.width, dtype=self.dtype, name='pos_proj')(pos)
    )
    t = nn.Dense(c.width, dtype=self.dtype, name='text_proj')(text)[:, None]  # [B, 1, W]
    h = jnp.concatenate([t, h], axis=1)
    for i in range(c.depth):
      h = EncoderLayer(c, self.dtype, name=f'layers_{i}')(h)
    h = nn.LayerNorm(dtype=self.dtype, name='final_norm')(h[:, 1:])
    return nn.Dense(1, dtype=self.dtype, name='head')(h)[..., 0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init(model: FrameSelector, num_frames: int, embed_dim: int, rng):
  return model.init(rng, jnp.zeros((1, num_frames, embed_dim)), jnp.zeros((1, embed_dim)))['params']


def init_params(model: FrameSelector, num_frames: int, embed_dim: int, seed: int = 0):
  """Float32 params for frames [1, N, D] and text [1, D] (one compiled init, not op by op)."""
  return _init(model, num_frames, embed_dim, jax.random.PRNGKey(seed))


@functools.partial(jax.jit, static_argnums=0)
def batch_scores(model: FrameSelector, params, frame_emb, text_emb) -> jnp.ndarray:
  """frame_emb [B, N, D], text_emb [B, D] -> scores [B, N]."""
  return cast(jax.Array, model.apply({'params': params}, frame_emb, text_emb))


def scores(model: FrameSelector, params, frame_emb, text_emb) -> np.ndarray:
  """One sample: frame_emb [N, D], text_emb [D] -> scores [N]."""
  return np.asarray(batch_scores(model, params, jnp.asarray(frame_emb)[None], jnp.asarray(text_emb)[None])[0])


def select(frame_scores, k: int) -> np.ndarray:
  """The k best-scoring frames, distinct and sorted in time (selectors.top_k)."""
  return selectors.top_k(frame_scores, k)
