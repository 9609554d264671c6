"""Per-frame relevance of a candidate pool for (sample, model): where the Video-LLM looks, and where
SigLIP looks.

Oracles of the Video-LLM (prompt with all N candidate frames):
  causal      drop of log p(target option) when the text may not attend to frame f (a frame knockout
              in all layers or a chosen window), for every f, through the sweep engine's reuse path:
              one clean forward plus N passes over the text after the video only.
  answer-free the causal oracle with the model's own predicted option as the target, so it labels
              videos without answers.
  attention   attention mass of the answer slot (and of the question tokens) on each frame's tokens,
              per layer, read out of the blockwise kernel for the text tail only (the clean run's
              hidden states and KV cache are reused; no S x S matrix is formed).
SigLIP: sigmoid relevance of each frame to a text query (question, or question + options).

Letters: B samples, S prompt slots, T tail slots, L layers, H heads, F candidate frames, O options,
Q text queries.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import prompts, sharding
from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout
from jaxvlm.models import qwen2, siglip
from jaxvlm.models.attention import Group
from jaxvlm.models.llava_onevision import LlavaOnevisionForConditionalGeneration

# A SigLIP as checkpoints.load_pretrained returns it: (model, params, processor: SiglipProcessor).
LoadedSiglip = tuple[siglip.SiglipModel, dict, Any]


def frame_specs(num_layers: int, num_frames: int, layers: np.ndarray | None = None) -> knockout.KnockoutSpec:
  """F frame knockouts stacked [F, L, ...]: spec f forbids text -> frame f in `layers` (bool [L],
  default all)."""
  layers = knockout.all_layers(num_layers) if layers is None else layers
  return knockout.stack_specs(
    [knockout.knockout_spec('frames', layers, num_frames, frames=[f]) for f in range(num_frames)]
  )


def predicted_option(clean_logp: np.ndarray, num_options: Sequence[int] | None = None) -> np.ndarray:
  """argmax option [B] of clean_logp [B, O], over each sample's own options when counts differ."""
  logp = np.asarray(clean_logp, np.float64).copy()
  if num_options is not None:
    logp[np.arange(logp.shape[1])[None] >= np.asarray(num_options)[:, None]] = -np.inf
  return logp.argmax(-1)


def logp_drop(
  clean_logp: jax.Array | np.ndarray, knocked_logp: jax.Array | np.ndarray, target: np.ndarray
) -> np.ndarray:
  """clean [B, O], knocked [F, B, O], target [B] -> clean - knocked log p(target), [B, F]. The same
  knocked log-probs give the answer-based and the answer-free oracle (target = predicted option)."""
  rows = np.arange(len(target))
  clean = sharding.to_host(clean_logp)[rows, target]
  knocked = sharding.to_host(knocked_logp)[:, rows, target]  # [F, B]
  return (clean[None] - knocked).T


@dataclasses.dataclass(frozen=True)
class CausalOracle:
  """relevance [B, F] (clean minus knocked log p(target)), knocked_logp [F, B, O], target [B]."""

  relevance: np.ndarray
  knocked_logp: np.ndarray
  target: np.ndarray


def causal_relevance(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  clean: sweep.CleanRun,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
  num_frames: int,
  target: np.ndarray,
  layers: np.ndarray | None = None,
  tail_multiple: int = 16,
  spec_chunk: int = 8,
) -> CausalOracle:
  """The causal oracle of a batch whose clean run is `clean` (sweep.clean_run).

  target [B]: option whose log-probability drops (the answer, or `predicted_option` for the
  answer-free oracle). layers: bool [L] knockout window, default all layers. spec_chunk: frame states
  per layer step; every state's text tail scores against the whole prompt in one tile, so 8 keeps
  those tiles cache-sized on a CPU at the default 512-key block (16 costs ~20 % more there, and
  gains nothing at 128).
  """
  specs = frame_specs(model.config.text.num_hidden_layers, num_frames, layers)
  knocked = sweep.run_sweep(
    model, params, clean, layout, answer_index, option_ids, jax.tree.map(jnp.asarray, specs), tail_multiple, spec_chunk
  )
  target = np.asarray(target)
  knocked_host = sharding.to_host(knocked)
  return CausalOracle(logp_drop(clean.option_logprobs, knocked_host, target), knocked_host, target)


def causal_relevance_full(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
  num_frames: int,
  target: np.ndarray,
  layers: np.ndarray | None = None,
) -> np.ndarray:
  """The reference of `causal_relevance`: one full forward per frame knockout -> [B, F]."""
  num_layers = model.config.text.num_hidden_layers
  specs = frame_specs(num_layers, num_frames, layers)
  per_frame = [jax.tree.map(lambda x, f=f: x[f], specs) for f in range(num_frames)]
  clean_spec = knockout.clean_spec(num_layers, num_frames)
  logp = sweep.full_recompute(
    model, params, input_ids, pixel_values_videos, layout, answer_index, option_ids, per_frame + [clean_spec]
  )
  return logp_drop(logp[-1], logp[:-1], np.asarray(target))


def text_tail(layout: prompts.TokenLayout, tail_multiple: int = 16) -> tuple[int, np.ndarray]:
  """(T, start [B]): the slots [start_b, start_b + T) cover every text token after the video (the
  tokens a text-to-video knockout changes), T rounded up to `tail_multiple`."""
  layout_np = {k: np.asarray(getattr(layout, k)) for k in ('group', 'frame', 'valid')}
  num_layers, num_frames = 1, max(int(layout_np['frame'].max()) + 1, 1)
  lv = knockout.stack_specs([knockout.knockout_spec('LV', knockout.all_layers(num_layers), num_frames)])
  _, tails, starts = sweep.plan_tails(layout_np, lv, tail_multiple)
  return int(tails[0]), starts[0]


@functools.partial(jax.jit, static_argnames=('model', 'tail', 'num_frames'))
def _tail_frame_mass(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  clean: sweep.CleanRun,
  layout: prompts.TokenLayout,
  start,
  tail: int,
  num_frames: int,
) -> jnp.ndarray:
  """Clean attention mass [L, B, T, H, F] of the tail slots start[b] + arange(T) on each frame.

  Each layer reruns on the clean run's own inputs to that layer, so layers are independent.
  """
  layer_module = qwen2.Qwen2DecoderLayer(model.config.text, dtype=model.dtype, frame_mass=num_frames)
  layers = params['language_model']['layers']
  k_meta = layout.meta()
  idx = start[:, None] + jnp.arange(tail, dtype=jnp.int32)[None]  # [B, T]
  q_meta = k_meta.take(idx)
  positions = prompts.positions_at(layout.positions, idx)
  at = lambda tree, l: jax.tree.map(lambda x: x[l], tree)

  def one_layer(l):
    h = jnp.take_along_axis(clean.hidden_states[l], idx[..., None], axis=1)
    _, state = layer_module.apply(
      {'params': at(layers, l)},
      h,
      positions,
      q_meta,
      clean.cache.k[l],
      clean.cache.v[l],
      k_meta,
      start,
      None,
      mutable=['intermediates'],
    )
    return state['intermediates']['self_attn']['frame_mass'][0]

  return jax.lax.map(one_layer, jnp.arange(model.config.text.num_hidden_layers))


@dataclasses.dataclass(frozen=True)
class AttentionOracle:
  """Head-averaged attention mass on each frame per layer: last [B, L, F] from the answer slot,
  question [B, L, F] averaged over the question tokens."""

  last: np.ndarray
  question: np.ndarray


def attention_relevance(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  clean: sweep.CleanRun,
  layout: prompts.TokenLayout,
  answer_index,
  num_frames: int,
  tail_multiple: int = 16,
) -> AttentionOracle:
  """The attention oracle of a batch whose clean run is `clean`."""
  tail, start = text_tail(layout, tail_multiple)
  mass = sharding.to_host(_tail_frame_mass(model, params, clean, layout, jnp.asarray(start), tail, num_frames))
  mass = mass.mean(axis=3).transpose(1, 0, 2, 3)  # [B, L, T, F]
  rows = np.arange(mass.shape[0])
  last = mass[rows, :, np.asarray(answer_index) - start]  # [B, L, F]
  idx = start[:, None] + np.arange(tail)[None]
  group = np.take_along_axis(np.asarray(layout.group), idx, axis=1)
  valid = np.take_along_axis(np.asarray(layout.valid), idx, axis=1)
  is_question = ((group == Group.QUESTION) & valid).astype(np.float64)  # [B, T]
  question = np.einsum('bltf,bt->blf', mass, is_question) / np.maximum(is_question.sum(1), 1)[:, None, None]
  return AttentionOracle(last, question)


def layer_average(per_layer: np.ndarray, first: int = 0, last: int | None = None) -> np.ndarray:
  """[B, L, F] -> mean over layers first..last (0-based, inclusive; default all) -> [B, F]."""
  num_layers = per_layer.shape[1]
  last = num_layers - 1 if last is None or last < 0 else last
  if not 0 <= first <= last < num_layers:
    raise ValueError(f'layer range {first}..{last} outside 0..{num_layers - 1}')
  return per_layer[:, first : last + 1].mean(axis=1)


# ---------------------------------------------------------------- SigLIP


def query_texts(question: str, options: Sequence[str]) -> tuple[str, str]:
  """The two SigLIP queries of a sample: the question, and the question followed by its options."""
  return question, f"{question} {' '.join(options)}"


_relevance = jax.jit(siglip.relevance, static_argnums=0)


def siglip_relevance(
  model: siglip.SiglipModel, params, processor, frames: np.ndarray, texts: Sequence[str]
) -> np.ndarray:
  """uint8 frames [F, H, W, 3] and Q texts -> sigmoid relevance [F, Q] (processor: SiglipProcessor)."""
  pixels = jnp.asarray(processor.preprocess(frames))
  return np.asarray(_relevance(model, params, pixels, jnp.asarray(processor.tokenize(texts))))
