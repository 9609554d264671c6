"""SigLIP (vision + text towers, sigmoid image-text logits) in flax.linen.

The parameter tree mirrors the Hugging Face `SiglipModel` state_dict (see jaxvlm/checkpoints.py): the
encoder's `layers.{i}` are one scanned subtree with a leading layer axis, and the attention-pooling head
keeps torch.nn.MultiheadAttention's `in_proj_weight` [3D, D] / `in_proj_bias` [3D] layout.

Einsum letters: B batch, T query tokens, S key tokens, N heads, H head dim, D model width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Dtype = Any

_ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
  'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
  'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
  'gelu': functools.partial(jax.nn.gelu, approximate=False),
}


def _check_activation(name: str) -> None:
  if name not in _ACTIVATIONS:
    raise ValueError(f'unsupported hidden_act {name!r}; known: {sorted(_ACTIVATIONS)}')


def _known_fields(cls, d: dict) -> dict:
  """The entries of a config.json dict that are fields of dataclass `cls` (the rest is HF bookkeeping)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in d.items() if k in names}


def _as_int_size(value: Any, name: str) -> int:
  """HF allows image_size / patch_size as an int or an [h, w] pair; this port supports square only."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f'{name}={value!r}: only square sizes are supported')
    value = value[0]
  return int(value)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
  """Vision tower hyper-parameters (defaults = transformers' SiglipVisionConfig defaults)."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 16
  hidden_act: str = 'gelu_pytorch_tanh'
  layer_norm_eps: float = 1e-6
  vision_use_head: bool = True

  def __post_init__(self):
    _check_activation(self.hidden_act)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads')

  @property
  def num_patches(self) -> int:
    # A VALID conv drops the border pixels that do not fill a patch (384 // 14 = 27 in so400m).
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_hf(cls, d: dict) -> SiglipVisionConfig:
    """From a SigLIP `vision_config` dict (also the one inside LLaVA-OneVision's config.json)."""
    kw = _known_fields(cls, d)
    for name in ('image_size', 'patch_size'):
      if name in kw:
        kw[name] = _as_int_size(kw[name], name)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
  """Text tower hyper-parameters (defaults = transformers' SiglipTextConfig defaults)."""

  vocab_size: int = 32000
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 64
  hidden_act: str = 'gelu_pytorch_tanh'
  layer_norm_eps: float = 1e-6
  projection_size: int | None = None  # None = hidden_size, as in transformers

  def __post_init__(self):
    _check_activation(self.hidden_act)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads')

  @property
  def output_size(self) -> int:
    return self.hidden_size if self.projection_size is None else self.projection_size

  @classmethod
  def from_hf(cls, d: dict) -> SiglipTextConfig:
    return cls(**_known_fields(cls, d))


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  vision_config: SiglipVisionConfig = SiglipVisionConfig()
  text_config: SiglipTextConfig = SiglipTextConfig()

  def __post_init__(self):
    if not self.vision_config.vision_use_head:
      raise ValueError('SiglipModel needs the vision attention-pooling head (vision_use_head=True)')
    if self.vision_config.hidden_size != self.text_config.output_size:
      raise ValueError(
        f'image embedding width {self.vision_config.hidden_size} != text embedding width {self.text_config.output_size}'
      )

  @classmethod
  def from_hf(cls, d: dict) -> SiglipConfig:
    """From a SigLIP config.json dict; a missing sub-dict means that tower's defaults, as in transformers."""
    return cls(
      vision_config=SiglipVisionConfig.from_hf(d.get('vision_config') or {}),
      text_config=SiglipTextConfig.from_hf(d.get('text_config') or {}),
    )


TowerConfig = SiglipVisionConfig | SiglipTextConfig


@struct.dataclass
class VisionOutput:
  """last_hidden_state [B, P, D] (post_layernorm applied); pooled [B, D] or None without the head;
  hidden_states [L+1, B, P, D]: embeddings, then each encoder layer's output (no post_layernorm)."""

  last_hidden_state: jnp.ndarray
  pooled: jnp.ndarray | None
  hidden_states: jnp.ndarray


@struct.dataclass
class TextOutput:
  """last_hidden_state [B, S, D] (final_layer_norm applied); pooled [B, D'] = head(last position);
  hidden_states [L+1, B, S, D] as in VisionOutput."""

  last_hidden_state: jnp.ndarray
  pooled: jnp.ndarray
  hidden_states: jnp.ndarray


def _layer_norm(config: TowerConfig, dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class SiglipMLP(nn.Module):
  config: TowerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., D] -> [..., D]."""
    h = _dense(self.config.intermediate_size, self.dtype, 'fc1')(x)
    h = nn.with_logical_constraint(_ACTIVATIONS[self.config.hidden_act](h), ('batch', 'length', 'act_mlp'))
    return _dense(self.config.hidden_size, self.dtype, 'fc2')(h)


def _attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Unmasked multi-head attention, q [B, T, N, H], k/v [B, S, N, H] -> [B, T, N, H].

  Logits and softmax run in float32 whatever the compute dtype (as transformers' eager path does).
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bnts,bsnh->btnh', probs, v)


class SiglipAttention(nn.Module):
  """Bidirectional self-attention with separate q/k/v/out projections (HF SiglipAttention)."""

  config: TowerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [B, T, D] -> [B, T, D]."""
    d, n = self.config.hidden_size, self.config.num_attention_heads
    split = lambda y: y.reshape(*y.shape[:-1], n, d // n)
    q = split(_dense(d, self.dtype, 'q_proj')(x))
    k = split(_dense(d, self.dtype, 'k_proj')(x))
    v = split(_dense(d, self.dtype, 'v_proj')(x))
    q, k, v = (nn.with_logical_constraint(y, ('batch', 'length', 'act_heads', 'head_dim')) for y in (q, k, v))
    out = _attend(q, k, v)
    return _dense(d, self.dtype, 'out_proj')(out.reshape(*x.shape[:-1], d))


class SiglipEncoderLayer(nn.Module):
  """Pre-LN transformer block, written as a scan body: (h [B, T, D], None) -> (h', h)."""

  config: TowerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, _: None) -> tuple[jnp.ndarray, jnp.ndarray]:
    # The scan emits each layer's INPUT; the encoder appends the final carry. Stacked states then end
    # in the carry, so a caller that reads only hidden_states[-1] lets XLA drop the [L, ...] buffer.
    x = h
    h = h + SiglipAttention(self.config, self.dtype, name='self_attn')(
      _layer_norm(self.config, self.dtype, 'layer_norm1')(h)
    )
    h = h + SiglipMLP(self.config, self.dtype, name='mlp')(_layer_norm(self.config, self.dtype, 'layer_norm2')(h))
    return nn.with_logical_constraint(h, ('batch', 'length', 'act_embed')), x


class SiglipEncoder(nn.Module):
  """num_hidden_layers SiglipEncoderLayers as one nn.scan (params stacked on a leading layer axis)."""

  config: TowerConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    """h [B, T, D] (embeddings) -> hidden states [L+1, B, T, D]: h, then every layer's output."""
    layers = nn.scan(
      SiglipEncoderLayer,
      variable_axes={'params': 0},
      split_rngs={'params': True},
      length=self.config.num_hidden_layers,
    )(self.config, self.dtype, name='layers')
    last, inputs = layers(h, None)
    return jnp.concatenate([inputs, last[None]], axis=0)


class _MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch_first) cross-attention: params in_proj_weight/bias + out_proj."""

  embed_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, kv: jnp.ndarray) -> jnp.ndarray:
    """query [B, T, D], kv [B, S, D] -> [B, T, D]."""
    d, n = self.embed_dim, self.num_heads
    w = self.param('in_proj_weight', nn.initializers.xavier_uniform(), (3 * d, d), jnp.float32)
    b = self.param('in_proj_bias', nn.initializers.zeros_init(), (3 * d,), jnp.float32)
    w, b = w.astype(self.dtype), b.astype(self.dtype)
    # in_proj_weight rows are [W_q; W_k; W_v], each [out, in] as in torch.
    proj = lambda y, i: y @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d]
    split = lambda y: y.reshape(*y.shape[:-1], n, d // n)
    out = _attend(split(proj(query, 0)), split(proj(kv, 1)), split(proj(kv, 2)))
    return _dense(d, self.dtype, 'out_proj')(out.reshape(*query.shape[:-1], d))


class SiglipMultiheadAttentionPoolingHead(nn.Module):
  """A learned probe attends over the tokens (torch.nn.MultiheadAttention layout), then LN + MLP residual."""

  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [B, P, D] -> pooled [B, D]."""
    d, n = self.config.hidden_size, self.config.num_attention_heads
    probe = self.param('probe', nn.initializers.normal(1.0), (1, 1, d), jnp.float32)
    pooled = _MultiheadAttention(d, n, self.dtype, name='attention')(
      jnp.broadcast_to(probe, (x.shape[0], 1, d)).astype(self.dtype), x
    )
    pooled = pooled + SiglipMLP(self.config, self.dtype, name='mlp')(
      _layer_norm(self.config, self.dtype, 'layernorm')(pooled)
    )
    return pooled[:, 0]


class SiglipVisionEmbeddings(nn.Module):
  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    """pixel_values [B, H, W, C] -> patch embeddings + position embeddings [B, P, D]."""
    c = self.config
    if pixel_values.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(
        f'pixel_values {pixel_values.shape} != [B, {c.image_size}, {c.image_size}, '
        f'{c.num_channels}] (channels-last; position embeddings are not interpolated)'
      )
    patches = nn.Conv(
      c.hidden_size,
      (c.patch_size, c.patch_size),
      strides=(c.patch_size, c.patch_size),
      padding='VALID',
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='patch_embedding',
    )(pixel_values.astype(self.dtype))
    # Row-major flattening of the [h, w] grid = torch's flatten(2) of NCHW.
    patches = patches.reshape(patches.shape[0], -1, c.hidden_size)
    pos = nn.Embed(c.num_patches, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name='position_embedding')(
      jnp.arange(c.num_patches)
    )
    return patches + pos[None]


class SiglipVisionTransformer(nn.Module):
  """The SigLIP image tower (HF SiglipVisionModel); `vision_tower` inside LLaVA-OneVision."""

  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jnp.ndarray) -> VisionOutput:
    """pixel_values [B, H, W, C], channels-last and already normalized."""
    h = SiglipVisionEmbeddings(self.config, self.dtype, name='embeddings')(pixel_values)
    hidden_states = SiglipEncoder(self.config, self.dtype, name='encoder')(h)
    last = _layer_norm(self.config, self.dtype, 'post_layernorm')(hidden_states[-1])
    pooled = None
    if self.config.vision_use_head:
      pooled = SiglipMultiheadAttentionPoolingHead(self.config, self.dtype, name='head')(last)
    return VisionOutput(last_hidden_state=last, pooled=pooled, hidden_states=hidden_states)


class SiglipTextEmbeddings(nn.Module):
  config: SiglipTextConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    """input_ids [B, S] int -> token + position embeddings [B, S, D] (positions 0..S-1)."""
    c = self.config
    s = input_ids.shape[-1]
    if s > c.max_position_embeddings:
      raise ValueError(f'text length {s} > max_position_embeddings {c.max_position_embeddings}')
    embed = lambda num, name: nn.Embed(num, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    return (
      embed(c.vocab_size, 'token_embedding')(input_ids)
      + embed(c.max_position_embeddings, 'position_embedding')(jnp.arange(s))[None]
    )


class SiglipTextTransformer(nn.Module):
  """The SigLIP text tower (HF SiglipTextModel): bidirectional encoder, no attention mask."""

  config: SiglipTextConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray) -> TextOutput:
    """input_ids [B, S], padded to a fixed length as SigLIP was trained (pad tokens are attended)."""
    h = SiglipTextEmbeddings(self.config, self.dtype, name='embeddings')(input_ids)
    hidden_states = SiglipEncoder(self.config, self.dtype, name='encoder')(h)
    last = _layer_norm(self.config, self.dtype, 'final_layer_norm')(hidden_states[-1])
    # transformers pools the LAST position (which may be padding), not the EOS position.
    pooled = _dense(self.config.output_size, self.dtype, 'head')(last[:, -1])
    return TextOutput(last_hidden_state=last, pooled=pooled, hidden_states=hidden_states)


def _l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """x [B, D] -> x / ||x||, in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class SiglipModel(nn.Module):
  """Both towers plus the sigmoid-loss temperature/bias (HF SiglipModel)."""

  config: SiglipConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    self.vision_model = SiglipVisionTransformer(self.config.vision_config, self.dtype)
    self.text_model = SiglipTextTransformer(self.config.text_config, self.dtype)
    self.logit_scale = self.param('logit_scale', nn.initializers.zeros_init(), (1,), jnp.float32)
    self.logit_bias = self.param('logit_bias', nn.initializers.zeros_init(), (1,), jnp.float32)

  def image_features(self, pixel_values: jnp.ndarray) -> jnp.ndarray:
    """pixel_values [B, H, W, C] -> unnormalized pooled image embeddings [B, D]."""
    # Not None: SiglipConfig requires the vision pooling head.
    return cast(jax.Array, self.vision_model(pixel_values).pooled)

  def text_features(self, input_ids: jnp.ndarray) -> jnp.ndarray:
    """input_ids [B, S] -> unnormalized pooled text embeddings [B, D]."""
    return self.text_model(input_ids).pooled

  def pair_logits(self, image_embeds: jnp.ndarray, text_embeds: jnp.ndarray) -> jnp.ndarray:
    """Pooled embeddings image_embeds [I, D], text_embeds [Q, D] -> logits_per_image [I, Q] (float32)."""
    img, txt = _l2_normalize(image_embeds), _l2_normalize(text_embeds)
    return img @ txt.T * jnp.exp(self.logit_scale) + self.logit_bias

  def __call__(self, pixel_values: jnp.ndarray, input_ids: jnp.ndarray) -> jnp.ndarray:
    """pixel_values [I, H, W, C], input_ids [Q, S] -> logits_per_image [I, Q] (float32)."""
    return self.pair_logits(self.image_features(pixel_values), self.text_features(input_ids))


@functools.partial(jax.jit, static_argnums=0)
def relevance(model: SiglipModel, params: Any, pixel_values: jnp.ndarray, input_ids: jnp.ndarray) -> jnp.ndarray:
  """Query-frame relevance sigmoid(logits): frames [N, H, W, C], queries [Q, S] -> [N, Q] in (0, 1)."""
  return jax.nn.sigmoid(cast(jax.Array, model.apply({'params': params}, pixel_values, input_ids)))
