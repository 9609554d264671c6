"""Prefill cost of LLaVA-OneVision under an efficiency plan: FLOPs (attention / linear / vision) and
KV-cache bytes, analytically, plus XLA's own count of the same compiled prefill to check them against.

Counting convention (multiply-add = 2 FLOPs; only matrix products are counted: norms, rotary, softmax,
GELU/SiLU and biases are left out; XLA counts them too, so its number is a little higher:
benchmarks/efficient_prefill.py prints the ratio, docs/results.md has it):
  * linear: every projection of every row a layer computes (q/k/v/o, gate/up/down), plus the output
    head on the one answer row per sample. Layers below the exit compute all S prompt rows, layers above
    it the S' non-video rows only.
  * attention: the QK^T and AV products, 2 * Dh FLOPs each per head and (query, key) pair, as the paper
    (Gou et al. 2508.15360) counts them. Which pairs: with `block_size=None` (the paper's convention)
    a causal layer over n rows multiplies its lower triangle, n (n + 1) / 2 pairs; a within-frame layer
    multiplies each frame's t queries against the P prefix keys and the t keys of the frame as one dense
    block (t (P + t) pairs: causality inside a frame saves nothing on a block), while the prefix, the
    image_newline and the text after the video attend causally as usual. With an integer `block_size`
    the pairs are exactly the tiles jaxvlm's attention kernel visits with that tile size (causal tiles
    skipped, padding included): what the compiled program multiplies.
  * vision: the SigLIP tower on every frame passed (patch embedding, q/k/v/o, MLP, dense bidirectional
    attention in every layer), the projector and the 2x2 bilinear pooling (two matmuls).
  * KV cache: keys + values of every layer for the prompt slots it holds plus N decode slots.

Letters: B batch, F frames (k of them run), t tokens per frame, P text before the video, Q text after
it, S = P + F t + 1 + Q prompt slots, S' = P + Q, L layers, D hidden, H / K heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import memory_plan
from jaxvlm.models import efficient
from jaxvlm.models.efficient import InferencePlan
from jaxvlm.models.llava_onevision import LlavaOnevisionConfig
from jaxvlm.models.siglip import SiglipEncoderLayer


@dataclasses.dataclass(frozen=True)
class PromptShape:
  """One prompt's token counts: text before the video (prefix), frames x tokens per frame (+ the
  image_newline), text after it (suffix); batch of identical prompts; decode slots."""

  prefix: int
  suffix: int
  frames: int
  tokens_per_frame: int
  batch: int = 1
  new_tokens: int = 0

  @property
  def video(self) -> int:
    return self.frames * self.tokens_per_frame + 1

  @property
  def slots(self) -> int:
    return self.prefix + self.video + self.suffix

  @property
  def text(self) -> int:
    return self.prefix + self.suffix


@dataclasses.dataclass(frozen=True)
class PrefillCost:
  """FLOPs of one prefill (whole batch) and KV-cache bytes; `layers` lists (kind, count) of the decoder
  segments ('within-frame', 'full', 'text-only')."""

  attention: float
  linear: float
  vision: float
  kv_cache_bytes: float
  slots: int
  layers: tuple[tuple[str, int], ...]

  @property
  def total(self) -> float:
    return self.attention + self.linear + self.vision


def _causal_pairs(n: int) -> int:
  return n * (n + 1) // 2


def kernel_pairs(q_index: np.ndarray, k_index: np.ndarray, block_size: int) -> int:
  """(query, key) products jaxvlm's `masked_attention` multiplies for one row batch whose queries have
  slots q_index [R, T] and keys k_index [R, S] (rule None): tiles of min(block, T) x min(block, S),
  padded, a tile visited unless every key slot in it (over the rows) is above every query slot."""
  q_index, k_index = np.atleast_2d(q_index), np.atleast_2d(k_index)
  rows, t = q_index.shape
  s = k_index.shape[1]
  qb, kb = min(block_size, t), min(block_size, s)
  nq, nk = -(-t // qb), -(-s // kb)
  q_pad = np.full((rows, nq * qb), np.iinfo(np.int64).min)
  q_pad[:, :t] = q_index
  k_pad = np.full((rows, nk * kb), np.iinfo(np.int64).max)
  k_pad[:, :s] = k_index
  q_last = q_pad.reshape(rows, nq, qb).max(axis=(0, 2))  # [nq]
  k_first = k_pad.reshape(rows, nk, kb).min(axis=(0, 2))  # [nk]
  visited = (k_first[None] <= q_last[:, None]).sum()
  return int(visited) * rows * qb * kb


def _layer_pairs(kind: str, shape: PromptShape, block_size: int | None) -> int:
  """Attention pairs of one decoder layer of `kind` for one prompt."""
  p, f, t, n = shape.prefix, shape.frames, shape.tokens_per_frame, shape.new_tokens
  s, s_text = shape.slots, shape.text
  if kind in ('full', 'text-only'):
    rows = s if kind == 'full' else s_text
    if block_size is None:
      return _causal_pairs(rows)
    return kernel_pairs(np.arange(rows), np.arange(rows + n), block_size)
  # within-frame: the rest rows (prefix, newline, suffix) over every key, the frames as dense blocks.
  frames_end = p + f * t
  rest = np.concatenate([np.arange(p), np.arange(frames_end, s)])
  if block_size is None:
    return int((rest + 1).sum()) + f * t * (p + t)
  frame_q = p + np.arange(f * t).reshape(f, t)
  frame_k = np.concatenate([np.broadcast_to(np.arange(p), (f, p)), frame_q], axis=1)
  return kernel_pairs(rest, np.arange(s + n), block_size) + kernel_pairs(frame_q, frame_k, block_size)


def vision_flops(config: LlavaOnevisionConfig, frames: int) -> float:
  """SigLIP tower + projector + 2x2 bilinear pooling on `frames` frames (one sample)."""
  v, d = config.vision, config.text.hidden_size
  patches = config.patch_grid**2
  per_layer = (
    8 * patches * v.hidden_size**2 + 4 * patches * v.hidden_size * v.intermediate_size + 4 * patches**2 * v.hidden_size
  )
  embed = 2 * patches * v.num_channels * v.patch_size**2 * v.hidden_size
  layers = config.vision_feature_layer
  width = v.hidden_size * (1 if isinstance(layers, int) else len(layers))
  projector = 2 * patches * (width * d + d * d)
  p, q = config.patch_grid, config.pooled_grid
  pooling = 2 * d * (q * p * p + q * q * p)
  return float(frames * (embed + v.num_hidden_layers * per_layer + projector + pooling))


def prefill_cost(
  config: LlavaOnevisionConfig,
  plan: InferencePlan,
  shape: PromptShape,
  block_size: int | None = None,
  kv_bytes_per_value: int = 2,
) -> PrefillCost:
  """The cost of one prefill of `shape` under `plan` (see the module docstring for what is counted).
  InferencePlan(L, 0) is the clean model."""
  t = config.text
  num_layers = t.num_hidden_layers
  plan.validate(num_layers)
  e, m = plan.exit_layer, plan.intra_frame_layers
  layers = tuple(
    (kind, count) for kind, count in (('within-frame', m), ('full', e - m), ('text-only', num_layers - e)) if count
  )
  d, heads, kv, dh = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim
  per_row = 2 * d * (heads * dh + 2 * kv * dh) + 2 * heads * dh * d + 6 * d * t.intermediate_size
  rows = {'within-frame': shape.slots, 'full': shape.slots, 'text-only': shape.text}
  linear = sum(count * rows[kind] * per_row for kind, count in layers) + 2 * d * t.vocab_size
  attention = sum(count * 4 * heads * dh * _layer_pairs(kind, shape, block_size) for kind, count in layers)
  vision = vision_flops(config, shape.frames) if e else 0.0
  slots = e * (shape.slots + shape.new_tokens) + (num_layers - e) * (shape.text + shape.new_tokens)
  kv_bytes = 2 * kv * dh * kv_bytes_per_value * slots
  b = shape.batch
  return PrefillCost(
    attention=float(b * attention),
    linear=float(b * linear),
    vision=float(b * vision),
    kv_cache_bytes=float(b * kv_bytes),
    slots=shape.slots,
    layers=layers,
  )


def format_cost(cost: PrefillCost, full: PrefillCost, title: str) -> str:
  """Lines of a plan's cost against the clean model's (`full`)."""
  g = lambda x: f'{x / 1e9:12.2f} GFLOPs'
  pct = lambda a, b: f'{100 * a / b:.1f} %' if b else 'n/a'
  segments = ', '.join(f'{kind} x{count}' for kind, count in cost.layers)
  return '\n'.join(
    [
      f'{title}: {cost.slots} prompt slots; decoder layers: {segments}',
      f'  attention   {g(cost.attention)}   (full {g(full.attention).strip()})',
      f'  linear      {g(cost.linear)}   (full {g(full.linear).strip()})',
      f'  vision      {g(cost.vision)}   (full {g(full.vision).strip()})',
      f'  total       {g(cost.total)}   ({pct(cost.total, full.total)} of full, {full.total / cost.total:.2f}x fewer)',
      f'  KV cache    {cost.kv_cache_bytes / 2**20:12.2f} MiB     (full {full.kv_cache_bytes / 2**20:.2f} MiB)',
      f'attention FLOPs: {pct(cost.attention, full.attention)} of full',
    ]
  )


def paper_attention_share(
  config: LlavaOnevisionConfig, plan: InferencePlan, frames: int, tokens_per_frame: int | None = None
) -> float:
  """Attention FLOPs of `plan` as a share of the clean model's on a video-only prompt (the paper's
  count: no text around the video)."""
  t = tokens_per_frame or config.tokens_per_frame
  shape = PromptShape(0, 0, frames, t)
  full = prefill_cost(config, InferencePlan(config.text.num_hidden_layers), shape)
  return prefill_cost(config, plan, shape).attention / full.attention


def xla_prefill_flops(
  model, params, input_ids, pixel_values_videos, positions, meta, answer_index, option_ids, plan: InferencePlan, span
) -> dict[str, float]:
  """XLA's count (`compiled.cost_analysis()['flops']`) of the plan's option scoring, split as the
  analytical model is: 'decoder' (embedding lookup, every decoder layer unrolled, norm, head), 'vision'
  (tower, projector, pooling). XLA counts a loop body once whatever its trip count, so the decoder is
  compiled with its layer scans unrolled (the attention kernel's tile loops are exact when one tile
  covers the sequence: pass a model whose attention_block_size >= the prompt), and the vision tower's
  scanned encoder adds (layers - 1) times one encoder layer compiled alone."""

  def flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    if analysis is None:
      raise ValueError(f'XLA gave no cost analysis for {getattr(fn, "__name__", fn)} on this backend')
    return float(analysis['flops'])

  num_layers = model.config.text.num_hidden_layers
  embeds = jax.jit(lambda p, i, v: efficient.embed(model, p, i, v, plan))(params, input_ids, pixel_values_videos)

  def decoder(p, embeds, positions, meta, answer_index):
    hidden, _ = efficient.decoder_prefill(model, p, embeds, positions, meta, plan, span, unroll=True)
    row = efficient.output_row(answer_index, plan, span, num_layers)
    last = jnp.take_along_axis(hidden, row[:, None, None], axis=1)[:, 0]
    logits = model.apply({'params': p}, last, method='logits')
    return jnp.take(jax.nn.log_softmax(logits, axis=-1), option_ids, axis=-1)

  out = {'decoder': flops(decoder, params, embeds, positions, meta, answer_index), 'vision': 0.0}
  if plan.exit_layer:
    out['vision'] = flops(
      lambda p, v: model.apply({'params': p}, v, method='video_features'), params, pixel_values_videos
    )
    vcfg = model.config.vision
    b, f = pixel_values_videos.shape[:2]
    h = jnp.zeros((b * f, vcfg.num_patches, vcfg.hidden_size), model.dtype)
    layer = SiglipEncoderLayer(vcfg, model.dtype)
    layer_params = jax.tree.map(lambda x: x[0], params['vision_tower']['encoder']['layers'])
    out['vision'] += (vcfg.num_hidden_layers - 1) * flops(
      lambda p, h: layer.apply({'params': p}, h, None)[0], layer_params, h
    )
  out['total'] = out['decoder'] + out['vision']
  return out


def speedup(full: PrefillCost, cost: PrefillCost) -> float:
  return full.total / cost.total if cost.total else math.inf


def config_plan(config) -> tuple[InferencePlan, int]:
  """(InferencePlan, frames k) of a configs/plan.py config (exit_layer / intra_frame_layers 1-based,
  exit_layer 0 = no exit, frames 0 = all num_frames), validated against the model: ValueError naming
  the field otherwise."""
  num_layers = config.text.num_hidden_layers
  exit_after = config.exit_layer or num_layers
  if not 1 <= exit_after <= num_layers:
    raise ValueError(
      f'exit_layer {config.exit_layer} is outside the {num_layers} decoder layers (1-based; 0 = no exit)'
    )
  if not 0 <= config.intra_frame_layers <= exit_after:
    raise ValueError(f'intra_frame_layers {config.intra_frame_layers} must lie in 0..exit_layer={exit_after}')
  frames = config.frames or config.num_frames
  if not 1 <= frames <= config.num_frames:
    raise ValueError(f'frames {config.frames} must lie in 1..num_frames={config.num_frames}')
  return InferencePlan(exit_after, config.intra_frame_layers), frames


def cost_report(config) -> str:
  """The configured plan's prefill cost (`format_cost`) against the full model at num_frames."""
  plan, frames = config_plan(config)
  cfg = memory_plan.llava_config(config)
  num_layers = cfg.text.num_hidden_layers
  prefix = min(config.prompt_prefix_tokens, config.prompt_tokens)
  shape = lambda f: PromptShape(prefix, config.prompt_tokens - prefix, f, cfg.tokens_per_frame, config.batch_size)
  value_bytes = jnp.dtype(config.dtype).itemsize
  full = prefill_cost(cfg, InferencePlan(num_layers), shape(config.num_frames), kv_bytes_per_value=value_bytes)
  cost = prefill_cost(cfg, plan, shape(frames), kv_bytes_per_value=value_bytes)
  title = f'prefill, {plan.name(num_layers)}, {frames} of {config.num_frames} frames x {cfg.tokens_per_frame} tokens'
  return format_cost(cost, full, title)
