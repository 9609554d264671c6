"""masked_attention vs a dense softmax whose mask is built entry by entry from the docstring definition."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.models.attention import Group, LayerRule, TokenMeta, masked_attention

# One compilation per (block_size, rule structure); rule values are traced.
attend = jax.jit(masked_attention, static_argnames='block_size')

NUM_FRAMES = 4
TOKENS_PER_FRAME = 3


def _row_layout(num_pad: int, left: bool) -> list[tuple[int, int]]:
  """(group, frame) per slot: system, frames, image_newline, question, options, last, padding."""
  layout = [(Group.SYSTEM, -1)] * 3
  for f in range(NUM_FRAMES):
    layout += [(Group.VIDEO, f)] * TOKENS_PER_FRAME
  layout += [(Group.VIDEO, -1)]  # image_newline
  layout += [(Group.QUESTION, -1)] * 4 + [(Group.OPTIONS, -1)] * 2 + [(Group.LAST, -1)]
  pad = [(Group.SYSTEM, -1)] * num_pad
  return pad + layout if left else layout + pad


def _metas(num_pad: tuple[int, int], left: tuple[bool, bool]) -> TokenMeta:
  """TokenMeta [2, S] of two rows of the same length S with different padding."""
  rows = [_row_layout(p, l) for p, l in zip(num_pad, left)]
  assert len(rows[0]) == len(rows[1])
  group = np.array([[g for g, _ in r] for r in rows], np.int32)
  frame = np.array([[f for _, f in r] for r in rows], np.int32)
  valid = np.ones_like(group, bool)
  for b, (p, l) in enumerate(zip(num_pad, left)):
    if p:
      valid[b, slice(0, p) if l else slice(-p, None)] = False
  index = np.broadcast_to(np.arange(group.shape[1], dtype=np.int32), group.shape)
  return TokenMeta(jnp.asarray(index), jnp.asarray(valid), jnp.asarray(group), jnp.asarray(frame))


def _rule(block=None, cross_frame=False, same_frame=False, frames=None) -> LayerRule:
  g = len(Group)
  block = np.zeros((g, g), bool) if block is None else np.asarray(block, bool)
  frames = np.zeros(NUM_FRAMES, bool) if frames is None else np.asarray(frames, bool)
  return LayerRule(jnp.asarray(block), jnp.asarray(cross_frame), jnp.asarray(same_frame), jnp.asarray(frames))


def _reference_mask(qm: TokenMeta, km: TokenMeta, rule: LayerRule | None) -> np.ndarray:
  """bool [B, T, S], one entry at a time, straight from the module docstring."""
  qm, km, rule = jax.tree.map(np.asarray, (qm, km, rule))
  b_, t_ = qm.index.shape
  s_ = km.index.shape[1]
  mask = np.zeros((b_, t_, s_), bool)
  for b in range(b_):
    for t in range(t_):
      for s in range(s_):
        qi, ki = qm.index[b, t], km.index[b, s]
        qg, kg = qm.group[b, t], km.group[b, s]
        qf, kf = qm.frame[b, t], km.frame[b, s]
        ok = ki <= qi and km.valid[b, s]
        if rule is not None:
          video = qg == Group.VIDEO and kg == Group.VIDEO
          framed = video and qf >= 0 and kf >= 0
          ok = ok and not rule.block[qg, kg]
          ok = ok and not (bool(rule.cross_frame) and framed and qf != kf)
          ok = ok and not (bool(rule.same_frame) and framed and qf == kf and qi != ki)
          ok = ok and not (qg != Group.VIDEO and 0 <= kf < len(rule.frames) and rule.frames[kf])
        mask[b, t, s] = ok or qi == ki
  return mask


def _reference(q, k, v, mask) -> np.ndarray:
  """Dense grouped-query softmax attention in float64. q [B,T,H,D], k/v [B,S,K,D], mask [B,T,S]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[:, None], scores, -np.inf)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhts,bshd->bthd', p, v)


def _qkv(key, t, s, dtype=jnp.float32, heads=4, kv_heads=2, dim=8):
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (2, t, heads, dim), dtype)
  k = jax.random.normal(kk, (2, s, kv_heads, dim), dtype)
  v = jax.random.normal(kv, (2, s, kv_heads, dim), dtype)
  return q, k, v


META = _metas(num_pad=(3, 3), left=(False, True))
S = META.index.shape[1]  # 26
RNG = np.random.default_rng(0)
GROUPS = np.arange(len(Group))
RULES = {
  'none': None,
  'empty': _rule(),
  'block_random': _rule(block=RNG.random((len(Group), len(Group))) < 0.4),
  'language_to_video': _rule(block=(GROUPS[:, None] != Group.VIDEO) & (GROUPS[None, :] == Group.VIDEO)),
  'cross_frame': _rule(cross_frame=True),
  'same_frame': _rule(same_frame=True),
  'frames': _rule(frames=[True, False, True, False]),
  'frames_short': LayerRule(
    jnp.zeros((len(Group),) * 2, bool), jnp.asarray(False), jnp.asarray(False), jnp.asarray([False, True])
  ),
  'cross_and_same': _rule(cross_frame=True, same_frame=True),
  'all_kinds': _rule(
    block=RNG.random((len(Group), len(Group))) < 0.3,
    cross_frame=True,
    same_frame=True,
    frames=[False, True, True, False],
  ),
}


def _check(out, q, k, v, qm, km, rule, name):
  expected = _reference(q, k, v, _reference_mask(qm, km, rule))
  diff = np.abs(np.asarray(out, np.float64) - expected).max()
  assert diff <= 1e-5, (name, diff)


@pytest.mark.parametrize('block_size', [7, 13, 512])  # 7 does not divide S = 26, 13 does, 512 > S
def test_matches_dense_reference(block_size):
  q, k, v = _qkv(jax.random.PRNGKey(1), S, S)
  _check(attend(q, k, v, META, META, None, block_size=block_size), q, k, v, META, META, None, 'none')
  # All rules with the same shapes in one vmapped call: one compilation, and vmap over specs is tested.
  names = [n for n in RULES if n not in ('none', 'frames_short')]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[RULES[n] for n in names])
  outs = jax.jit(jax.vmap(lambda r: masked_attention(q, k, v, META, META, r, block_size=block_size)))(stacked)
  for name, out in zip(names, outs):
    _check(out, q, k, v, META, META, RULES[name], name)


def test_rule_with_fewer_frames_than_the_video():
  q, k, v = _qkv(jax.random.PRNGKey(1), S, S)
  rule = RULES['frames_short']
  _check(attend(q, k, v, META, META, rule, block_size=7), q, k, v, META, META, rule, 'frames_short')


def test_rules_change_the_output():
  """Guards the test above against rules that happen to mask nothing."""
  q, k, v = _qkv(jax.random.PRNGKey(1), S, S)
  base = attend(q, k, v, META, META, None, block_size=7)
  np.testing.assert_allclose(attend(q, k, v, META, META, RULES['empty'], block_size=7), base, atol=1e-6)
  for name, rule in RULES.items():
    if name in ('none', 'empty'):
      continue
    out = attend(q, k, v, META, META, rule, block_size=7)
    assert np.abs(np.asarray(out - base)).max() > 1e-2, name


def test_queries_are_a_suffix_of_the_keys():
  """Decode-like: the last 3 tokens query the whole cache, which has 4 extra empty slots."""
  t = 3
  pad_slots = 4
  km = jax.tree.map(lambda a: jnp.pad(a, ((0, 0), (0, pad_slots)), mode='edge'), META)
  km = km.replace(valid=km.valid.at[:, S:].set(False), index=km.index.at[:, S:].set(jnp.arange(S, S + pad_slots)))
  qm = jax.tree.map(lambda a: a[:, S - t : S], META)
  rule = RULES['all_kinds']
  q, k, v = _qkv(jax.random.PRNGKey(2), t, S + pad_slots)
  _check(attend(q, k, v, qm, km, rule, block_size=7), q, k, v, qm, km, rule, 'suffix')


def test_row_with_only_the_diagonal_is_finite():
  """Blocking every group edge leaves each query only itself: output = its own value, no NaN."""
  rule = _rule(block=np.ones((len(Group),) * 2, bool))
  q, k, v = _qkv(jax.random.PRNGKey(3), S, S)

  def loss(q, k, v):
    return masked_attention(q, k, v, META, META, rule, block_size=4).sum()

  out = attend(q, k, v, META, META, rule, block_size=4)
  np.testing.assert_allclose(out, jnp.repeat(v, 2, axis=2), atol=1e-6)
  for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v):
    assert np.isfinite(np.asarray(g)).all()


def test_bfloat16_close_to_float32():
  q, k, v = _qkv(jax.random.PRNGKey(4), S, S)
  rule = RULES['all_kinds']
  out32 = attend(q, k, v, META, META, rule, block_size=7)
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out16 = attend(q16, k16, v16, META, META, rule, block_size=7)
  assert out16.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out16, np.float32)).all()
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=3e-2)


def test_rule_values_do_not_retrace():
  q, k, v = _qkv(jax.random.PRNGKey(5), S, S)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attend_rule(rule):
    return masked_attention(q, k, v, META, META, rule, block_size=8)

  outs = [attend_rule(RULES[n]) for n in ('block_random', 'cross_frame', 'all_kinds')]
  assert np.abs(np.asarray(outs[0] - outs[1])).max() > 1e-2


@pytest.mark.parametrize('block_size', [4, 512])  # 4: several shared and own key tiles, padded
def test_states_sharing_keys_match_each_state_on_its_own_copy(block_size):
  """C = 3 states per sample (query row c * B + b), each with its own rule and its own keys/values at
  the last t slots (a sweep's recomputed tail), scored against one copy of the other slots == each
  state alone on a copy of the keys with its tail written in (checked against the dense reference)."""
  states, t, f = 3, 9, NUM_FRAMES
  names = ('frames', 'cross_frame', 'all_kinds')
  batch = META.index.shape[0]
  rows = lambda x: jnp.concatenate([x] * states)  # [B, ...] -> [C * B, ...]
  rules = jax.tree.map(lambda *a: jnp.repeat(jnp.stack(a), batch, axis=0), *[RULES[n] for n in names])
  kq, kk, ko = jax.random.split(jax.random.PRNGKey(6), 3)
  q = jax.random.normal(kq, (states * batch, t, 4, 8))
  k, v = jax.random.normal(kk, (2, batch, S, 2, 8))
  own_k, own_v = jax.random.normal(ko, (2, states * batch, t, 2, 8))
  qm = jax.tree.map(lambda a: rows(a[:, S - t :]), META)
  int_max = jnp.iinfo(jnp.int32).max
  shared_meta = META.replace(
    index=META.index.at[:, S - t :].set(int_max), valid=META.valid.at[:, S - t :].set(False)
  )  # the tail slots, hidden
  out, mass = jax.jit(masked_attention, static_argnames=('block_size', 'frame_mass'))(
    q, k, v, qm, shared_meta, rules, own=(own_k, own_v, qm), block_size=block_size, frame_mass=f
  )
  # Each state on its own copy: the shared slots, then its tail.
  full_k, full_v = (jnp.concatenate([rows(x[:, : S - t]), own], axis=1) for x, own in ((k, own_k), (v, own_v)))
  full_meta = jax.tree.map(rows, META)
  alone, alone_mass = masked_attention(q, full_k, full_v, qm, full_meta, rules, block_size=block_size, frame_mass=f)
  np.testing.assert_allclose(mass, alone_mass, atol=1e-5)
  for r in range(states * batch):
    row = lambda x: jax.tree.map(lambda a: a[r : r + 1], x)
    _check(
      out[r : r + 1],
      q[r : r + 1],
      full_k[r : r + 1],
      full_v[r : r + 1],
      row(qm),
      row(full_meta),
      RULES[names[r // batch]],
      names[r // batch],
    )
    np.testing.assert_allclose(out[r], alone[r], atol=1e-5)


def test_query_rows_must_be_a_multiple_of_key_rows():
  q, k, v = _qkv(jax.random.PRNGKey(7), S, S)
  with pytest.raises(ValueError, match='not a multiple'):
    masked_attention(jnp.concatenate([q, q[:1]]), k, v, META, META, None)
