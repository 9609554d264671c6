"""Flax Qwen2 vs transformers Qwen2ForCausalLM on tiny random models: logits, hidden states, greedy
generation, cache writes at offsets, per-layer specs without retracing."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxvlm.checkpoints import params_to_state_dict, state_dict_to_params
from jaxvlm.models import qwen2
from jaxvlm.models.attention import Group, LayerRule, TokenMeta

LAYERS = 3
TOL = 1e-4


def _hf_config(tie: bool) -> transformers.Qwen2Config:
  return transformers.Qwen2Config(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    rope_parameters={'rope_type': 'default', 'rope_theta': 500.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=tie,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
    attn_implementation='eager',
  )


@functools.cache
def _models(tie: bool):
  """(hf model, our model, our params) with every HF weight randomised so that no term is trivial."""
  torch.manual_seed(int(tie))
  hf = transformers.Qwen2ForCausalLM(_hf_config(tie)).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if 'norm' in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif 'embed' in name:
        p.normal_(0.0, 1.0)
      else:
        p.normal_(0.0, 0.15)
  state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
  if tie:  # the tied head is the embedding; our tree has no lm_head
    np.testing.assert_array_equal(state_dict.pop('lm_head.weight'), state_dict['model.embed_tokens.weight'])
  model = qwen2.Qwen2ForCausalLM(qwen2.Qwen2Config.from_hf(hf.config.to_dict()))
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
  params = jax.tree.map(jnp.asarray, state_dict_to_params(state_dict, target))
  return hf, model, params


def _batch(lengths, total, padding_side, seed=0):
  """input_ids [B, total] and attention_mask [B, total] for rows of the given lengths."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 128, size=(len(lengths), total)).astype(np.int64)
  mask = np.zeros((len(lengths), total), np.int64)
  for b, n in enumerate(lengths):
    mask[b, :n] = 1 if padding_side == 'right' else 0
    if padding_side == 'left':
      mask[b, total - n :] = 1
  return np.where(mask == 1, ids, 0), mask


@functools.partial(jax.jit, static_argnames=('model', 'return_hidden_states'))
def _forward(model, params, ids, mask, spec=None, return_hidden_states=False):
  """(logits [B, T, V], hidden_states [L+1, B, T, D] | None) of a plain forward."""
  b, t = ids.shape
  meta = qwen2.text_meta(mask)
  cache = qwen2.KVCache.empty(model.config, b, t)
  embeds = model.apply({'params': params}, ids, method='embed')
  hidden, _, states = model.apply(
    {'params': params},
    embeds,
    qwen2.positions_from_mask(mask),
    meta,
    cache,
    meta,
    jnp.zeros((b,), jnp.int32),
    spec,
    return_hidden_states,
    method='decode',
  )
  return model.apply({'params': params}, hidden, method='logits'), states


def test_config_from_hf():
  cfg = qwen2.Qwen2Config.from_hf(_hf_config(True).to_dict())
  assert (cfg.rope_theta, cfg.head_dim, cfg.num_key_value_heads) == (500.0, 16, 2)
  assert cfg.tie_word_embeddings
  v4 = dict(
    vocab_size=8,
    hidden_size=32,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=None,
    rope_theta=1e6,
  )
  cfg = qwen2.Qwen2Config.from_hf(v4)
  assert (cfg.rope_theta, cfg.head_dim, cfg.num_key_value_heads) == (1e6, 8, 4)
  with pytest.raises(ValueError, match='yarn'):
    qwen2.Qwen2Config.from_hf({**v4, 'rope_parameters': {'rope_type': 'yarn', 'rope_theta': 1.0}})


@pytest.mark.parametrize('tie', [True, False])
def test_logits_and_hidden_states_match_transformers(tie):
  hf, model, params = _models(tie)
  ids, mask = _batch([11, 7], 11, 'right')
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
  logits, states = _forward(model, params, jnp.asarray(ids), jnp.asarray(mask), return_hidden_states=True)
  valid = mask.astype(bool)
  assert np.abs(out.logits.numpy()).max() > 1.0  # logits are not trivially small
  np.testing.assert_array_less(np.abs(np.asarray(logits) - out.logits.numpy())[valid], TOL)

  hf_states = [h.numpy() for h in out.hidden_states]
  assert len(hf_states) == LAYERS + 1 == states.shape[0]
  for layer in range(LAYERS):  # inputs of every layer
    np.testing.assert_array_less(np.abs(np.asarray(states[layer]) - hf_states[layer])[valid], TOL)
  # HF's last entry is the final-normed output; ours is before the norm.
  final_norm = lambda h: model.apply({'params': params}, h, method=lambda m, x: m.model.norm(x))
  np.testing.assert_array_less(np.abs(np.asarray(final_norm(states[LAYERS])) - hf_states[LAYERS])[valid], TOL)
  assert np.abs(np.asarray(states[LAYERS]) - hf_states[LAYERS])[valid].max() > 1e-2

  # __call__ is the same plain forward; the params round-trip to the HF state dict.
  np.testing.assert_allclose(
    jax.jit(model.apply)({'params': params}, jnp.asarray(ids), jnp.asarray(mask)), logits, atol=1e-6
  )
  back = params_to_state_dict(params)
  for key, value in hf.state_dict().items():
    if key in back or not tie:
      np.testing.assert_array_equal(back[key], value.numpy())


def test_greedy_generate_matches_transformers():
  hf, model, params = _models(False)
  ids, mask = _batch([9, 5], 9, 'left', seed=1)
  with torch.no_grad():
    expected = hf.generate(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=8, pad_token_id=0
    )[:, ids.shape[1] :].numpy()
  got = qwen2.greedy_generate(model, params, jnp.asarray(ids), jnp.asarray(mask), 8)
  assert len(set(expected.ravel().tolist())) > 2  # not a degenerate repeat of one token
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_prefill_then_decode_steps_reproduce_full_forward():
  """Rows written at different offsets: prefill the first n_b tokens of row b, then 3 one-token steps
  written at slot n_b + i of each row must give the full forward's logits at those slots."""
  _, model, params = _models(True)
  lengths, steps = np.array([10, 7]), 3
  ids, mask = _batch(lengths.tolist(), 10, 'right', seed=2)
  full, _ = _forward(model, params, jnp.asarray(ids), jnp.asarray(mask))

  prefix = lengths - steps  # [B] = (7, 4)
  t0 = int(prefix.max())
  pre_mask = np.arange(t0)[None] < prefix[:, None]
  k_meta = qwen2.text_meta(jnp.zeros((2, 10), bool))
  k_meta = k_meta.replace(valid=jnp.asarray(np.pad(pre_mask, ((0, 0), (0, 10 - t0)))))
  cache = qwen2.KVCache.empty(model.config, 2, 10)

  @jax.jit
  def run(ids, positions, q_meta, cache, k_meta, write_index):
    """Tokens ids [B, T] written at write_index [B] -> (logits [B, T, V], cache)."""
    apply = functools.partial(model.apply, {'params': params})
    hidden, cache, _ = apply(apply(ids, method='embed'), positions, q_meta, cache, k_meta, write_index, method='decode')
    return apply(hidden, method='logits'), cache

  logits, cache = run(
    jnp.asarray(ids[:, :t0]),
    qwen2.positions_from_mask(jnp.asarray(pre_mask)),
    qwen2.text_meta(jnp.asarray(pre_mask)),
    cache,
    k_meta,
    jnp.zeros((2,), jnp.int32),
  )
  rows = np.arange(2)
  np.testing.assert_array_less(np.abs(logits[rows, prefix - 1] - full[rows, prefix - 1]), TOL)
  for i in range(steps):
    slot = jnp.asarray(prefix + i, jnp.int32)  # [B], differs per row
    k_meta = k_meta.replace(valid=k_meta.valid.at[rows, slot].set(True))
    q_meta = TokenMeta(slot[:, None], jnp.ones((2, 1), bool), jnp.full((2, 1), Group.QUESTION), jnp.full((2, 1), -1))
    logits, cache = run(jnp.asarray(ids[rows, prefix + i])[:, None], slot[:, None], q_meta, cache, k_meta, slot)
    np.testing.assert_array_less(np.abs(logits[:, 0] - full[rows, prefix + i]), TOL)


def _spec(block_layers) -> LayerRule:
  """QUESTION -> QUESTION edges (all edges of a text batch but the diagonal) removed in block_layers."""
  g = len(Group)
  block = np.zeros((LAYERS, g, g), bool)
  block[list(block_layers), Group.QUESTION, Group.QUESTION] = True
  return LayerRule(
    jnp.asarray(block), jnp.zeros((LAYERS,), bool), jnp.zeros((LAYERS,), bool), jnp.zeros((LAYERS, 3), bool)
  )


def test_spec_is_applied_per_layer_without_retracing():
  _, model, params = _models(False)
  ids, mask = (jnp.asarray(x) for x in _batch([8, 6], 8, 'right', seed=3))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(spec):
    return _forward(model, params, ids, mask, spec, True)

  clean_logits, clean = _forward(model, params, ids, mask, None, True)
  empty_logits, _ = forward(_spec([]))
  last_logits, last = forward(_spec([LAYERS - 1]))
  first_logits, first = forward(_spec([0]))
  np.testing.assert_allclose(empty_logits, clean_logits, atol=1e-6)
  # A knockout in layer l leaves the inputs of layers <= l untouched and changes everything after.
  np.testing.assert_allclose(last[:LAYERS], clean[:LAYERS], atol=1e-6)
  np.testing.assert_allclose(first[:1], clean[:1], atol=1e-6)
  assert np.abs(np.asarray(last[LAYERS] - clean[LAYERS])).max() > 1e-2
  assert np.abs(np.asarray(first[1] - clean[1])).max() > 1e-2
  assert np.abs(np.asarray(first_logits - last_logits)).max() > 1e-2


def test_bfloat16_compute_is_close_to_float32():
  _, model, params = _models(False)
  ids, mask = (jnp.asarray(x) for x in _batch([8, 6], 8, 'right', seed=4))
  model16 = qwen2.Qwen2ForCausalLM(model.config, dtype=jnp.bfloat16)
  logits32 = jax.jit(model.apply)({'params': params}, ids, mask)
  logits16 = jax.jit(model16.apply)({'params': params}, ids, mask)
  valid = np.asarray(mask, bool)
  assert np.isfinite(np.asarray(logits16)).all()
  scale = np.abs(np.asarray(logits32)[valid]).max()
  # bfloat16 keeps 8 mantissa bits (~0.4 % per rounding); a few % of the logit range over 3 layers.
  assert np.abs(np.asarray(logits16 - logits32)[valid]).max() < 0.05 * scale
