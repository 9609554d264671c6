"""Flax vision tower of Qwen2.5-VL (transformers `Qwen2_5_VisionTransformerPretrainedModel`), video path.

A video of F frames at a fixed H x W becomes T = F / tp temporal patches (tp = temporal_patch_size = 2:
each token fuses two consecutive frames), each a gh x gw grid of p x p patches (gh = H / p). The patch
embedding is a Conv3d with kernel = stride = (tp, p, p), i.e. a linear map (no bias) of each flattened
(C, tp, p, p) patch. Then `depth` pre-norm blocks (RMSNorm, attention with 2-D rotary positions, SwiGLU
MLP with biases); blocks listed in `fullatt_block_indexes` attend over the whole temporal patch, the
others within windows of `window_size` pixels (window_size / p / m merged units a side; windows are
cut from the top-left corner, so those at the bottom and right edges are smaller when the merged grid
is not a multiple of the window: "ragged"). No attention ever crosses temporal patches. Finally the
m x m merger (m = spatial_merge_size = 2): RMSNorm, the m*m neighbouring tokens concatenated,
Linear-GELU-Linear to the text width.

Token order (as the reference processor emits patches): temporal patch, merged row, merged column, row
within the unit, column within the unit. So the pixel input is laid out
`[B, T, Hm, Wm, m*m, C*tp*p*p]` (Hm = gh / m, Wm = gw / m) and the m*m tokens of a merge unit are
adjacent, which is all the merger needs. Window attention gathers the units of each window (static
numpy tables computed from Hm, Wm), pads ragged windows with masked slots, attends, and scatters back:
the hidden states stay in processor order throughout.

Letters: B batch, T temporal patches, N = B * T, U = Hm * Wm merge units, M = m * m tokens per unit,
W windows, L tokens per window (padded), D vision width, H heads, Dh head dim, E text width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.models.qwen2 import RMSNorm


@dataclasses.dataclass(frozen=True)
class Qwen25VLVisionConfig:
  """The fields of a transformers `Qwen2_5_VLVisionConfig` the port uses."""

  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  tokens_per_second: float = 2
  window_size: int = 112
  out_hidden_size: int = 3584
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rope_theta: float = 10000.0

  @classmethod
  def from_hf(cls, d: Mapping[str, Any]) -> Qwen25VLVisionConfig:
    """From a transformers vision config dict (hub or v5 names); unsupported options raise ValueError."""
    if d.get('hidden_act', 'silu') != 'silu':
      raise ValueError(f"Qwen2.5-VL vision hidden_act {d['hidden_act']!r} is not supported (only silu)")
    rope = d.get('rope_parameters') or {}
    if rope.get('rope_type', 'axial') != 'axial':
      raise ValueError(f"Qwen2.5-VL vision rope_type {rope['rope_type']!r} is not supported (only axial)")
    for name in ('patch_size', 'temporal_patch_size'):
      if not isinstance(d.get(name, 1), int):
        raise ValueError(f'Qwen2.5-VL vision {name}={d[name]!r}: only a single int is supported')
    depth = d.get('depth', cls.depth)
    full = tuple(int(i) for i in d.get('fullatt_block_indexes', cls.fullatt_block_indexes))
    bad = [i for i in full if not 0 <= i < depth]
    if bad:
      raise ValueError(f'fullatt_block_indexes {bad} outside the {depth} vision blocks')
    out = cls(
      depth=depth,
      hidden_size=d.get('hidden_size', cls.hidden_size),
      intermediate_size=d.get('intermediate_size', cls.intermediate_size),
      num_heads=d.get('num_heads', d.get('num_attention_heads', cls.num_heads)),
      in_channels=d.get('in_channels', d.get('in_chans', cls.in_channels)),
      patch_size=d.get('patch_size', d.get('spatial_patch_size', cls.patch_size)),
      spatial_merge_size=d.get('spatial_merge_size', cls.spatial_merge_size),
      temporal_patch_size=d.get('temporal_patch_size', cls.temporal_patch_size),
      tokens_per_second=d.get('tokens_per_second', cls.tokens_per_second),
      window_size=d.get('window_size', cls.window_size),
      out_hidden_size=d.get('out_hidden_size', cls.out_hidden_size),
      fullatt_block_indexes=full,
      rope_theta=float(rope.get('rope_theta', 10000.0)),
    )
    if out.hidden_size % out.num_heads or (out.hidden_size // out.num_heads) % 4:
      raise ValueError(
        f'vision hidden_size {out.hidden_size} / num_heads {out.num_heads} must be a head '
        'dim divisible by 4 (2-D rotary: a quarter of it per axis and half)'
      )
    return out

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Features of one flattened patch: C * tp * p * p, in that (C, tp, p, p) order."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window_units(self) -> int:
    """Merged units per window side (transformers' vit_merger_window_size)."""
    return self.window_size // self.spatial_merge_size // self.patch_size

  @property
  def factor(self) -> int:
    """Frame sides must be multiples of this many pixels (patch * merge)."""
    return self.patch_size * self.spatial_merge_size


@dataclasses.dataclass(frozen=True)
class WindowTables:
  """Static window layout of one Hm x Wm merged grid (numpy).

  gather: int [W, Lu] merge unit (row-major index into U) in each window slot, 0 for empty slots;
  valid: bool [W, Lu] the slot holds a unit; scatter: int [U] flat slot (window * Lu + slot) of each unit.
  """

  gather: np.ndarray
  valid: np.ndarray
  scatter: np.ndarray


@functools.lru_cache(maxsize=64)
def window_tables(hm: int, wm: int, units: int) -> WindowTables:
  """Windows of `units` x `units` merged units cut from the top-left of an hm x wm grid; the last row
  and column of windows are smaller when hm or wm is not a multiple (as transformers'
  get_vision_window_index, which pads with -100 and drops the padding)."""
  if units < 1:
    raise ValueError(f'window of {units} merged units: window_size must be >= patch_size * merge_size')
  nwh, nww = math.ceil(hm / units), math.ceil(wm / units)
  slots = units * units
  gather = np.zeros((nwh * nww, slots), np.int32)
  valid = np.zeros((nwh * nww, slots), bool)
  scatter = np.zeros((hm * wm,), np.int32)
  for i in range(hm):
    for j in range(wm):
      win, slot = (i // units) * nww + j // units, (i % units) * units + j % units
      gather[win, slot], valid[win, slot] = i * wm + j, True
      scatter[i * wm + j] = win * slots + slot
  return WindowTables(gather, valid, scatter)


def rotary_angles(hm: int, wm: int, merge: int, head_dim: int, theta: float) -> np.ndarray:
  """2-D rotary angles float32 [U, M, Dh/2] of every token: the first Dh/4 frequencies turn with the
  patch row, the next Dh/4 with the patch column (the same Dh/4 frequencies for both axes)."""
  quarter = head_dim // 4
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2)))
  i, j, a, b = np.meshgrid(np.arange(hm), np.arange(wm), np.arange(merge), np.arange(merge), indexing='ij')
  rows = (i * merge + a).reshape(hm * wm, merge * merge).astype(np.float32)
  cols = (j * merge + b).reshape(hm * wm, merge * merge).astype(np.float32)
  assert inv_freq.shape == (quarter,)
  return np.concatenate([rows[..., None] * inv_freq, cols[..., None] * inv_freq], axis=-1).astype(np.float32)


def apply_rotary(x: jnp.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
  """x [..., H, Dh] rotated by angles [..., Dh/2] (broadcast over heads; rotate_half pairing), in float32."""
  cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _softmax_attention(q, k, v, key_valid=None):
  """q, k, v [..., L, H, Dh] -> [..., L, H, Dh]; key_valid bool [..., L] (broadcast) masks keys."""
  scale = 1.0 / np.sqrt(q.shape[-1]).astype(np.float32)
  scores = jnp.einsum('...qhd,...khd->...hqk', q, k, preferred_element_type=jnp.float32) * scale
  if key_valid is not None:
    scores = jnp.where(key_valid[..., None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('...hqk,...khd->...qhd', probs, v, preferred_element_type=jnp.float32).astype(v.dtype)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


class VisionAttention(nn.Module):
  """Fused qkv projection (bias), 2-D rotary, window or full attention within a temporal patch, proj."""

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, angles: jnp.ndarray, full: jnp.ndarray, tables: WindowTables) -> jnp.ndarray:
    """x [N, U, M, D], angles [U, M, Dh/2], full: bool [] (traced: this block attends over the whole
    temporal patch) -> [N, U, M, D]."""
    cfg = self.config
    n, u, m, d = x.shape
    qkv = _dense(3 * d, self.dtype, 'qkv')(x).reshape(n, u, m, 3, cfg.num_heads, cfg.head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # each [N, U, M, H, Dh]
    q, k = apply_rotary(q, angles), apply_rotary(k, angles)

    def whole(q, k, v):
      flat = lambda y: y.reshape(n, u * m, cfg.num_heads, cfg.head_dim)
      return _softmax_attention(flat(q), flat(k), flat(v)).reshape(q.shape)

    def windowed(q, k, v):
      gather, valid = jnp.asarray(tables.gather), jnp.asarray(tables.valid)
      w, lu = gather.shape
      to_windows = lambda y: y[:, gather].reshape(n, w, lu * m, cfg.num_heads, cfg.head_dim)
      key_valid = jnp.repeat(valid, m, axis=1)  # [W, L]
      out = _softmax_attention(to_windows(q), to_windows(k), to_windows(v), key_valid)
      out = out.reshape(n, w * lu, m, cfg.num_heads, cfg.head_dim)
      return out[:, jnp.asarray(tables.scatter)]  # back to [N, U, M, H, Dh]

    out = jax.lax.cond(full, whole, windowed, q, k, v)
    return _dense(d, self.dtype, 'proj')(out.reshape(n, u, m, d))


class VisionMLP(nn.Module):
  """down_proj(silu(gate_proj(x)) * up_proj(x)), with biases."""

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    gate = _dense(cfg.intermediate_size, self.dtype, 'gate_proj')(x)
    up = _dense(cfg.intermediate_size, self.dtype, 'up_proj')(x)
    return _dense(cfg.hidden_size, self.dtype, 'down_proj')(nn.silu(gate) * up)


class VisionBlock(nn.Module):
  """x + attn(norm1(x)), then + mlp(norm2(.)); RMSNorm eps 1e-6."""

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, angles, full, tables):
    x = x + VisionAttention(self.config, self.dtype, name='attn')(
      RMSNorm(1e-6, self.dtype, name='norm1')(x), angles, full, tables
    )
    return x + VisionMLP(self.config, self.dtype, name='mlp')(RMSNorm(1e-6, self.dtype, name='norm2')(x))


class PatchEmbed(nn.Module):
  """Conv3d(kernel = stride = (tp, p, p), no bias) as a linear map of the flattened patch."""

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: jnp.ndarray) -> jnp.ndarray:
    return _dense(self.config.hidden_size, self.dtype, 'proj', use_bias=False)(patches)


class MergerMLP(nn.Module):
  """transformers' nn.Sequential(Linear, GELU, Linear): params '0' and '2' as its state_dict names."""

  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(_dense(self.hidden, self.dtype, '0')(x), approximate=False)
    return _dense(self.out, self.dtype, '2')(x)


class PatchMerger(nn.Module):
  """ln_q (RMSNorm) per token, the M tokens of each unit concatenated, mlp to the text width."""

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [N, U, M, D] -> [N, U, E]."""
    n, u, m, d = x.shape
    x = RMSNorm(1e-6, self.dtype, name='ln_q')(x).reshape(n, u, m * d)
    return MergerMLP(m * d, self.config.out_hidden_size, self.dtype, name='mlp')(x)


class Qwen25VisionTransformer(nn.Module):
  """Pixels [B, T, Hm, Wm, M, C*tp*p*p] -> merged video tokens [B, T * Hm * Wm, E] (processor order).

  Params: patch_embed/proj, layers (the `depth` blocks stacked with nn.scan; checkpoints name them
  `blocks.{i}`), merger/{ln_q, mlp/0, mlp/2}.
  """

  config: Qwen25VLVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    b, t, hm, wm, m, c = pixels.shape
    if m != cfg.spatial_merge_size**2 or c != cfg.patch_dim:
      raise ValueError(
        f'pixel patches have shape {pixels.shape}; expected [B, T, Hm, Wm, '
        f'{cfg.spatial_merge_size**2}, {cfg.patch_dim}]'
      )
    tables = window_tables(hm, wm, cfg.window_units)
    angles = jnp.asarray(rotary_angles(hm, wm, cfg.spatial_merge_size, cfg.head_dim, cfg.rope_theta))
    x = PatchEmbed(cfg, self.dtype, name='patch_embed')(pixels.reshape(b * t, hm * wm, m, c).astype(self.dtype))
    full = np.zeros((cfg.depth,), bool)
    full[list(cfg.fullatt_block_indexes)] = True

    def body(block, x, full_l):
      return block(x, angles, full_l, tables), None

    scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True}, length=cfg.depth)
    x, _ = scan(VisionBlock(cfg, self.dtype, name='layers'), x, jnp.asarray(full))
    out = PatchMerger(cfg, self.dtype, name='merger')(x)  # [N, U, E]
    return out.reshape(b, t * hm * wm, -1)


def patches_from_flat(flat: np.ndarray, grid_thw: tuple[int, int, int], merge: int) -> np.ndarray:
  """transformers' flattened video patches [T*gh*gw, C*tp*p*p] of one video (grid (T, gh, gw) in
  patches) -> our layout [T, gh/m, gw/m, m*m, C*tp*p*p] (the same order, reshaped)."""
  t, gh, gw = (int(v) for v in grid_thw)
  return np.asarray(flat).reshape(t, gh // merge, gw // merge, merge * merge, -1)
