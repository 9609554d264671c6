"""Knockout sweep engine: a whole sweep from one clean run, sharing every computation specs have in common.

The clean forward runs once and keeps the input of every decoder layer and the KV cache of every
layer. Three savings follow, all exact (the same rows are computed from the same inputs):
  * positions: a spec changes nothing before its first affected query p_b (see
    `specs.first_affected_position`), so only the tail [start_b, start_b + T) is recomputed, with the
    clean keys/values of the prefix in the cache. For Language-to-Video the tail is just the text after
    the video.
  * layers: two specs whose rules agree on layers [0, l] have the same hidden states after layer l. The
    engine walks the layers once and computes each distinct *state* (parent state, rule of this layer)
    once: specs that are still clean cost nothing, and e.g. a fine-grained window starting at layer i and
    the global-1 cut at i share layers i .. i+w-1.
  * the last layer: the readout reads one slot, so there only the answer row queries (every tail row
    still supplies its keys/values): the last layer costs two small projections of the tail.
States are processed up to `spec_chunk` at a time, folded into the batch axis (row c * B + b, one rule
per row; all states read one copy of the clean cache outside their own tails), by a compiled layer step
whose shapes depend only on (tail length, power-of-two state count <= spec_chunk): a layer's M states
run as pieces of spec_chunk and then the powers of two of the rest (no padding), so new windows,
cutoffs and knockout types never add more than those few shapes. Tail lengths are rounded up to
`tail_multiple`; typically there are three (text after the video for LV, from the second frame for VT,
from the first video token for VS).

Models: any Video-LLM whose params hold `language_model` (a `qwen2.Qwen2Model`) and that has a `logits`
head: LLaVA-OneVision, and Qwen2.5-VL through one adapter, `prompts.positions_at`, which hands a tail's
M-RoPE layout positions [3, B, S] to the decoder layer batch-first [B, T, 3].

Letters: N specs, M states, C states per chunk, B samples, S prompt slots, T tail slots, L layers,
D hidden, O answer options.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm import prompts, runs, sharding
from jaxvlm.knockout import specs as knockout
from jaxvlm.models import qwen2
from jaxvlm.models.attention import LayerRule
from jaxvlm.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOutput


@struct.dataclass
class CleanRun:
  """Everything a sweep reuses. hidden_states [L+1, B, S, D] (input of each layer), cache: clean KV
  cache [L, B, S, K, Dh], option_logprobs [B, O] of the clean run."""

  hidden_states: jnp.ndarray
  cache: qwen2.KVCache
  option_logprobs: jnp.ndarray


_at = prompts.at_slot


@functools.partial(jax.jit, static_argnames=('model',))
def clean_run(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
) -> CleanRun:
  """The clean forward of a batch: input_ids [B, S], pixels [B, F, H, W, C], answer_index [B] (slot
  whose next-token distribution holds the answer letter), option_ids [O]."""
  out = cast(
    LlavaOutput,
    model.apply(
      {'params': params}, input_ids, pixel_values_videos, layout.positions, layout.meta(), return_hidden_states=True
    ),
  )
  assert out.hidden_states is not None  # asked for above
  logp = prompts.option_logprobs(model, params, _at(out.hidden, answer_index), option_ids)
  return CleanRun(out.hidden_states, out.cache, logp)


def _layer(params, index):
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), params)


def _layer_rows(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  clean: CleanRun,
  layout: prompts.TokenLayout,
  layer,
  inputs,
  rules: LayerRule,
  start,
  out_rows,
):
  """Decoder layer `layer` on C states folded into the batch: inputs [C, B, T, D] (tail slots
  start[b] + arange(T)), rules [C, ...] (this layer's rule of each state), out_rows None or [B, R]
  (tail rows whose outputs are wanted) -> [C, B, T or R, D]. Folding (row c * B + b, one rule per
  row) rather than vmap keeps every matmul in the layout of a plain forward, and the layer then
  scores the C states' queries against one copy of the clean cache (see Qwen2DecoderLayer)."""
  cfg = model.config.text
  layer_module = qwen2.Qwen2DecoderLayer(cfg, dtype=model.dtype)
  c, b, tail, d = inputs.shape
  k_meta = layout.meta()
  idx = start[:, None] + jnp.arange(tail, dtype=jnp.int32)[None]  # [B, T]
  q_meta = k_meta.take(idx)
  positions = prompts.positions_at(layout.positions, idx)  # [B, T] or M-RoPE [B, T, 3]
  layer_params = {'params': _layer(params['language_model']['layers'], layer)}
  cache_k, cache_v = _layer(clean.cache.k, layer), _layer(clean.cache.v, layer)
  fold = lambda x: jnp.broadcast_to(x[None], (c,) + x.shape).reshape((c * b,) + x.shape[1:])
  per_row = lambda x: jnp.repeat(x, b, axis=0)  # [C, ...] -> [C*B, ...]
  out = layer_module.apply(
    layer_params,
    inputs.reshape(c * b, tail, d),
    fold(positions),
    jax.tree.map(fold, q_meta),
    cache_k,
    cache_v,
    k_meta,
    start,
    jax.tree.map(per_row, rules),
    None if out_rows is None else fold(out_rows),
  )[0]
  return out.reshape(c, b, -1, d)


# The two jitted steps of a sweep, one per output form: every tail row (a layer below the last, [C, B, T,
# D]) or only the answer row (the last layer, out_rows = answer_index - start, [C, B, 1, D]: the readout
# reads nothing else, while every tail row still supplies its keys and values). Two functions, so each
# keeps its own compile cache (the tests bound how many shapes each compiles).
_layer_step = jax.jit(functools.partial(_layer_rows, out_rows=None), static_argnames=('model',))
_answer_step = jax.jit(_layer_rows, static_argnames=('model',))


@jax.jit
def _gather_inputs(states, clean_hidden, parents, start):
  """Inputs [C, B, T, D] of C new states: parent state rows, or the clean tail where parent == -1.
  states [M, B, T, D] (M >= 1), clean_hidden [B, S, D] (this layer's clean input), parents [C]."""
  tail = states.shape[2]
  idx = start[:, None] + jnp.arange(tail, dtype=jnp.int32)[None]
  clean_tail = jnp.take_along_axis(clean_hidden, idx[..., None], axis=1)  # [B, T, D]
  picked = states[jnp.maximum(parents, 0)]
  return jnp.where((parents >= 0)[:, None, None, None], picked, clean_tail[None])


@functools.partial(jax.jit, static_argnames=('model',))
def _readout(
  model: LlavaOnevisionForConditionalGeneration, params, clean: CleanRun, answers, final, answer_index, option_ids
):
  """Option log-probs [N, B, O] of N specs whose answer-row output of the last layer is
  answers[final[n]] (answers [M, B, D]; final -1: clean)."""
  cfg = model.config.text
  norm = qwen2.RMSNorm(cfg.rms_norm_eps, dtype=model.dtype)
  rows = jnp.where(
    (final >= 0)[:, None, None], answers[jnp.maximum(final, 0)], _at(clean.hidden_states[-1], answer_index)[None]
  )
  normed = cast(jax.Array, norm.apply({'params': params['language_model']['norm']}, rows))
  return prompts.option_logprobs(model, params, normed, option_ids)


def plan_tails(
  layout_np: dict[str, np.ndarray], specs: LayerRule, tail_multiple: int = 32
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
  last_valid = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)  # [B]
  need = np.maximum((last_valid[None] + 1 - first_pos).max(axis=1), 1)  # [N]
  tails = np.minimum(-(-need // tail_multiple) * tail_multiple, s)
  starts = np.minimum(np.minimum(first_pos, last_valid[None]), s - tails[:, None]).astype(np.int32)
  return first_layer, tails.astype(np.int32), starts


@dataclasses.dataclass(frozen=True)
class StatePlan:
  """Distinct states of one tail group, layer by layer. parents[l] [M_l]: the state (at layer l-1)
  each state of layer l continues, -1 = the clean run; rule_of[l] [M_l]: a spec whose rule at layer l
  the state applies; final [N_g]: each spec's state after the last layer (-1: never knocked out)."""

  parents: list[np.ndarray]
  rule_of: list[np.ndarray]
  final: np.ndarray


def plan_states(specs_np: LayerRule, chosen: np.ndarray) -> StatePlan:
  """Shares every layer computation that specs `chosen` (indices into specs_np [N, L, ...]) have in
  common: a state is identified by (its parent state, this layer's rule). A layer's states are ordered
  by rule, so a chunk of them tends to share one rule and the attention can skip the tiles that rule
  empties for every row."""
  num_layers = specs_np.block.shape[1]
  fields = (specs_np.block, specs_np.cross_frame, specs_np.same_frame, specs_np.frames)
  current = {int(n): -1 for n in chosen}
  parents, rule_of = [], []
  for l in range(num_layers):
    states: dict[tuple, int] = {}  # (rule, parent) -> a spec applying the rule
    nxt: dict[int, tuple | int] = {}  # spec -> its state's key, -1 while clean
    for n, parent in current.items():
      if parent == -1 and not any(f[n, l].any() for f in fields):
        nxt[n] = -1  # still clean: reuse the clean run for free
        continue
      key = (tuple(f[n, l].tobytes() for f in fields), parent)
      states.setdefault(key, n)
      nxt[n] = key
    keys = sorted(states)
    ids = {key: i for i, key in enumerate(keys)}
    parents.append(np.asarray([key[1] for key in keys], np.int32))
    rule_of.append(np.asarray([states[key] for key in keys], np.int32))
    current = {n: ids[key] if isinstance(key, tuple) else -1 for n, key in nxt.items()}
  return StatePlan(parents, rule_of, np.asarray([current[int(n)] for n in chosen], np.int32))


def _chunks(count: int, spec_chunk: int) -> list[tuple[int, int]]:
  """(offset, size) pieces of `count` states: spec_chunk-sized, then the powers of two of the rest, so
  nothing is padded and a tail length compiles at most log2(spec_chunk) + 1 step shapes per step
  function, whatever the sweep. spec_chunk must be a power of two."""
  out, offset = [], 0
  while offset < count:
    size = min(spec_chunk, 1 << ((count - offset).bit_length() - 1))
    out.append((offset, size))
    offset += size
  return out


def run_sweep(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  clean: CleanRun,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
  specs: LayerRule,
  tail_multiple: int = 32,
  spec_chunk: int = 16,
) -> jnp.ndarray:
  """Option log-probs [N, B, O] for every spec [N, L, ...] of a sweep, reusing `clean`.
  answer_index [B] must lie in every spec's tail (it does for the last prompt token)."""
  if spec_chunk & (spec_chunk - 1):
    raise ValueError(f'spec_chunk must be a power of two, got {spec_chunk}')
  layout_np = {k: np.asarray(getattr(layout, k)) for k in ('group', 'frame', 'valid')}
  _, tails, starts = plan_tails(layout_np, specs, tail_multiple)
  specs_np = jax.tree.map(np.asarray, specs)
  num_layers = specs_np.block.shape[1]
  d = model.config.text.hidden_size
  out: dict[int, jax.Array] = {}  # spec -> its option log-probs [B, O]
  for tail in np.unique(tails):
    chosen = np.flatnonzero(tails == tail)
    start = jnp.asarray(starts[chosen].min(axis=0))  # one tail for the group: starting earlier is exact
    plan = plan_states(specs_np, chosen)
    states = jnp.zeros((1, len(start), int(tail), d), model.dtype)  # [M, B, T, D] of the previous layer
    answer_rows = (answer_index - start)[:, None]  # [B, 1]: the answer's row in the tail
    for layer, (parents, rule_of) in enumerate(zip(plan.parents, plan.rule_of)):
      if not len(parents):
        continue
      last = layer == num_layers - 1
      pieces = []
      for offset, size in _chunks(len(parents), spec_chunk):
        src = rule_of[offset : offset + size]
        rules = jax.tree.map(lambda x: jnp.asarray(x[src, layer]), specs_np)
        inputs = _gather_inputs(states, clean.hidden_states[layer], jnp.asarray(parents[offset : offset + size]), start)
        if last:
          pieces.append(_answer_step(model, params, clean, layout, jnp.int32(layer), inputs, rules, start, answer_rows))
        else:
          pieces.append(_layer_step(model, params, clean, layout, jnp.int32(layer), inputs, rules, start))
      states = jnp.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    # Specs whose last layer is knocked end in the answer step's [M, B, 1, D]; final == -1 otherwise.
    answers = states[:, :, 0] if plan.parents[-1].size else jnp.zeros((1, len(start), d), model.dtype)
    logp = _readout(model, params, clean, answers, jnp.asarray(plan.final), answer_index, option_ids)
    for k, i in enumerate(chosen):
      out[int(i)] = logp[k]
  return jnp.stack([out[i] for i in range(len(tails))])


def full_recompute(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  input_ids,
  pixel_values_videos,
  layout: prompts.TokenLayout,
  answer_index,
  option_ids,
  specs: Sequence[LayerRule],
) -> jnp.ndarray:
  """The reference the reuse path must equal: one full forward per spec, [N, B, O]."""
  return jnp.stack(
    [
      prompts.answer_logprobs(
        model, params, input_ids, pixel_values_videos, layout, answer_index, option_ids, jax.tree.map(jnp.asarray, s)
      )
      for s in specs
    ]
  )


def evaluate_batch(
  model: LlavaOnevisionForConditionalGeneration,
  params,
  batch,
  specs: LayerRule,
  mesh,
  tail_multiple: int = 32,
  spec_chunk: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
  """A `runs.ModelBatch` under every spec [N, L, ...] of a sweep -> clean option log-probs [B, O] and
  per-spec [N, B, O] (numpy); samples sharded over the mesh's sample axes."""
  batch = runs.place_batch(batch, mesh)
  with sharding.activation_rules(mesh):
    clean = clean_run(model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index, batch.option_ids)
    spec_logp = run_sweep(
      model,
      params,
      clean,
      batch.layout,
      batch.answer_index,
      batch.option_ids,
      jax.tree.map(jnp.asarray, specs),
      tail_multiple,
      spec_chunk,
    )
  return sharding.to_host(clean.option_logprobs), sharding.to_host(spec_logp)
