"""Compiled temporary memory of one 7B-shaped decoder layer on a 64-frame x 196-token video prompt,
clean vs knocked out (XLA's memory analysis of the compiled program; nothing is allocated).

  python -m benchmarks.knockout_memory
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvlm.knockout import specs as knockout
from jaxvlm.models import qwen2
from jaxvlm.models.attention import TokenMeta

QWEN2_7B = dict(
  hidden_size=3584,
  intermediate_size=18944,
  num_hidden_layers=28,
  num_attention_heads=28,
  num_key_value_heads=4,
  vocab_size=152128,
)
FRAMES, TOKENS_PER_FRAME, TEXT = 64, 196, 64


def layer_temp_bytes(kind: str | None, dtype=jnp.bfloat16) -> tuple[int, int]:
  """(temporary bytes of the compiled layer, prompt length S) for knockout `kind` or clean (None)."""
  cfg = qwen2.Qwen2Config.from_hf(QWEN2_7B)
  s = FRAMES * TOKENS_PER_FRAME + 1 + TEXT
  layer = qwen2.Qwen2DecoderLayer(cfg, dtype=dtype)
  sds = jax.ShapeDtypeStruct
  h = sds((1, s, cfg.hidden_size), dtype)
  cache = sds((1, s, cfg.num_key_value_heads, cfg.head_dim), dtype)
  meta = TokenMeta(*(sds((1, s), t) for t in (jnp.int32, jnp.bool_, jnp.int32, jnp.int32)))
  positions = sds((1, s), jnp.int32)
  write = sds((1,), jnp.int32)
  rule = None
  if kind is not None:
    spec = knockout.knockout_spec(kind, knockout.all_layers(1), FRAMES)
    rule = jax.tree.map(lambda x: sds(x.shape[1:], x.dtype), spec)
  params = jax.eval_shape(
    lambda: layer.init(
      jax.random.PRNGKey(0),
      jnp.zeros(h.shape, dtype),
      jnp.zeros(positions.shape, jnp.int32),
      jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), meta),
      jnp.zeros(cache.shape, dtype),
      jnp.zeros(cache.shape, dtype),
      jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), meta),
      jnp.zeros((1,), jnp.int32),
    )
  )

  def apply(p, h, positions, meta, k, v, write, rule):
    return layer.apply(p, h, positions, meta, k, v, meta, write, rule)

  compiled = jax.jit(apply).lower(params, h, positions, meta, cache, cache, write, rule).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes), s


def main():
  clean, s = layer_temp_bytes(None)
  dense_scores = s * s * QWEN2_7B['num_attention_heads'] * 4
  print(f'prompt S = {s} ({FRAMES} frames x {TOKENS_PER_FRAME} tokens + newline + {TEXT} text), bf16 layer')
  print(
    f'clean layer temp memory: {clean / 2**20:9.1f} MiB   (one dense f32 S x S x H score tensor would be '
    f'{dense_scores / 2**30:.1f} GiB)'
  )
  for kind in knockout.KINDS:
    knocked, _ = layer_temp_bytes(kind)
    print(f'{kind} layer temp memory:    {knocked / 2**20:9.1f} MiB   ratio to clean {knocked / clean:.3f}')


if __name__ == '__main__':
  main()
