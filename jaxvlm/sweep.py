"""Knockout sweep engine: many specs per compiled call, reusing the clean run.

The clean forward runs once and keeps the input of every decoder layer and the KV cache of every
layer. A spec whose first knocked-out layer is s and whose first affected query (of sample b) is p_b
changes nothing below layer s nor before position p_b, so it restarts at layer s from the clean hidden
states of the tail [start_b, start_b + T) only, with the clean keys/values of the prefix in the cache.
For Language-to-Video the tail is just the text after the video. Reuse is exact: it computes the same
rows from the same inputs as a full recompute.

Specs are array values [N, L, ...]; the start layer and tail offsets are traced, so windows and
knockout types never recompile. The tail length T is static: specs are grouped by T (rounded up to
`tail_multiple`), one compiled call per group (typically two: text-only tails and tails from the
first video token).

Letters: N specs, B samples, S prompt slots, T tail slots, L layers, D hidden, O answer options.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm import knockout
from jaxvlm.models import qwen2
from jaxvlm.models.attention import LayerRule
from jaxvlm.models.llava_onevision import LlavaOnevisionForConditionalGeneration


@struct.dataclass
class CleanRun:
  """Everything a sweep reuses. hidden_states [L+1, B, S, D] (input of each layer), cache: clean KV
  cache [L, B, S, K, Dh], option_logprobs [B, O] of the clean run."""
  hidden_states: jnp.ndarray
  cache: qwen2.KVCache
  option_logprobs: jnp.ndarray


def option_logprobs(model: LlavaOnevisionForConditionalGeneration, params, hidden_last: jnp.ndarray,
                    option_ids: jnp.ndarray) -> jnp.ndarray:
  """hidden_last [..., D] (final-normed, at the answer slot) -> log p(option letter) [..., O] under the
  full-vocabulary softmax."""
  logits = model.apply({'params': params}, hidden_last, method='logits')
  return jnp.take(jax.nn.log_softmax(logits, axis=-1), option_ids, axis=-1)


def _at(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """x [B, S, ...], index [B] -> [B, ...]."""
  return jnp.take_along_axis(x, index.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=('model',))
def clean_run(model: LlavaOnevisionForConditionalGeneration, params, input_ids, pixel_values_videos,
              layout: knockout.TokenLayout, answer_index, option_ids) -> CleanRun:
  """The clean forward of a batch: input_ids [B, S], pixels [B, F, H, W, C], answer_index [B] (slot
  whose next-token distribution holds the answer letter), option_ids [O]."""
  out = model.apply({'params': params}, input_ids, pixel_values_videos, layout.positions, layout.meta(),
                    return_hidden_states=True)
  logp = option_logprobs(model, params, _at(out.hidden, answer_index), option_ids)
  return CleanRun(out.hidden_states, out.cache, logp)


def _layer(params, index):
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), params)


@functools.partial(jax.jit, static_argnames=('model', 'tail'))
def _tail_sweep(model: LlavaOnevisionForConditionalGeneration, params, clean: CleanRun,
                layout: knockout.TokenLayout, answer_index, option_ids, specs: LayerRule,
                first_layer, start, tail: int):
  """Option log-probs [N, B, O] of N specs [N, L, ...], each recomputing layers first_layer[n]..L-1 on
  the tail slots start[n, b] + arange(tail)."""
  cfg = model.config.text
  layer_module = qwen2.Qwen2DecoderLayer(cfg, dtype=model.dtype)
  norm = qwen2.RMSNorm(cfg.rms_norm_eps, dtype=model.dtype)
  lm = params['language_model']
  k_meta = layout.meta()

  def one_spec(args):
    spec, s0, start_b = args
    idx = start_b[:, None] + jnp.arange(tail, dtype=jnp.int32)[None]          # [B, T]
    q_meta = k_meta.take(idx)
    positions = jnp.take_along_axis(layout.positions, idx, axis=1)
    h0 = jnp.take_along_axis(_layer(clean.hidden_states, s0), idx[..., None], axis=1)

    def body(l, h):
      h, _, _ = layer_module.apply(
          {'params': _layer(lm['layers'], l)}, h, positions, q_meta,
          _layer(clean.cache.k, l), _layer(clean.cache.v, l), k_meta, start_b, _layer(spec, l))
      return h

    h = jax.lax.fori_loop(s0, cfg.num_hidden_layers, body, h0)
    h_answer = norm.apply({'params': lm['norm']}, _at(h, answer_index - start_b))
    return option_logprobs(model, params, h_answer, option_ids)

  return jax.lax.map(one_spec, (specs, first_layer, start))


def plan_tails(layout_np: dict[str, np.ndarray], specs: LayerRule, tail_multiple: int = 32
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Host-side plan of a sweep: first knocked layer [N], tail length [N] (rounded up, <= S) and tail
  start [N, B] per spec and sample. layout_np: numpy group/frame/valid [B, S]."""
  group, frame, valid = layout_np['group'], layout_np['frame'], layout_np['valid']
  b, s = group.shape
  n = specs.block.shape[0]
  first_layer = np.zeros((n,), np.int32)
  first_pos = np.zeros((n, b), np.int32)
  for i in range(n):
    spec_i = jax.tree.map(lambda x: np.asarray(x)[i], specs)
    first_layer[i] = knockout.first_knocked_layer(spec_i)
    for j in range(b):
      first_pos[i, j] = knockout.first_affected_position(group[j], frame[j], valid[j], spec_i)
  last_valid = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)        # [B]
  need = np.maximum((last_valid[None] + 1 - first_pos).max(axis=1), 1)      # [N]
  tails = np.minimum(-(-need // tail_multiple) * tail_multiple, s)
  starts = np.minimum(np.minimum(first_pos, last_valid[None]), s - tails[:, None]).astype(np.int32)
  return first_layer, tails.astype(np.int32), starts


def run_sweep(model: LlavaOnevisionForConditionalGeneration, params, clean: CleanRun,
              layout: knockout.TokenLayout, answer_index, option_ids, specs: LayerRule,
              tail_multiple: int = 32, spec_chunk: int = 16) -> jnp.ndarray:
  """Option log-probs [N, B, O] for every spec [N, L, ...] of a sweep, reusing `clean`.

  Specs are grouped by tail length and run `spec_chunk` at a time (the last chunk padded with clean
  specs, which cost nothing: they start at layer L), so the compiled shapes depend only on the tail
  length and the chunk size, never on which or how many specs a sweep holds.
  """
  layout_np = {k: np.asarray(getattr(layout, k)) for k in ('group', 'frame', 'valid')}
  first_layer, tails, starts = plan_tails(layout_np, specs, tail_multiple)
  num_layers = model.config.text.num_hidden_layers
  specs_np = jax.tree.map(np.asarray, specs)
  out = [None] * len(tails)
  for tail in np.unique(tails):
    chosen = np.flatnonzero(tails == tail)
    for c in range(0, len(chosen), spec_chunk):
      idx = chosen[c:c + spec_chunk]
      pad = spec_chunk - len(idx)
      chunk = jax.tree.map(lambda x: np.concatenate([x[idx], np.zeros((pad,) + x.shape[1:], x.dtype)]), specs_np)
      layers = np.concatenate([first_layer[idx], np.full(pad, num_layers, np.int32)])
      start = np.concatenate([starts[idx], np.repeat(starts[idx[:1]], pad, axis=0)])
      logp = _tail_sweep(model, params, clean, layout, answer_index, option_ids,
                         jax.tree.map(jnp.asarray, chunk), jnp.asarray(layers), jnp.asarray(start), int(tail))
      for k, i in enumerate(idx):
        out[i] = logp[k]
  return jnp.stack(out)


def full_recompute(model: LlavaOnevisionForConditionalGeneration, params, input_ids, pixel_values_videos,
                   layout: knockout.TokenLayout, answer_index, option_ids, specs: Sequence[LayerRule]
                   ) -> jnp.ndarray:
  """The reference the reuse path must equal: one full forward per spec, [N, B, O]."""
  @jax.jit
  def forward(spec):
    out = model.apply({'params': params}, input_ids, pixel_values_videos, layout.positions,
                      layout.meta(), spec=spec)
    return option_logprobs(model, params, _at(out.hidden, answer_index), option_ids)
  return jnp.stack([forward(jax.tree.map(jnp.asarray, s)) for s in specs])
