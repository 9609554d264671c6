"""The learned selector network (jaxvlm/keyframes/selector_model.py) and the teacher cache and SigLIP
features (jaxvlm/keyframes/teacher.py), on tiny random models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.keyframes import selector_model, teacher
from jaxvlm.models import siglip
from jaxvlm.processor import SiglipProcessor
from tests import test_processor

N, D = 12, 24


@pytest.fixture(scope='module')
def selector():
  model = selector_model.FrameSelector(selector_model.SelectorConfig(width=16, depth=2, num_heads=2))
  return model, selector_model.init_params(model, N, D, seed=1)


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(0)
  return rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(D,)).astype(np.float32)


def test_params_are_float32_and_depth_is_configurable(selector):
  model, params = selector
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert sorted(k for k in params if k.startswith('layers_')) == ['layers_0', 'layers_1']


def test_select_returns_k_distinct_sorted_indices_for_every_k(selector, inputs):
  s = selector_model.scores(*selector, *inputs)
  assert s.shape == (N,) and s.dtype == np.float32 and np.all(np.isfinite(s))
  for k in range(1, N + 1):
    idx = selector_model.select(s, k)
    assert len(idx) == k and np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < N
    # They are the k best scores.
    assert s[idx].min() >= np.sort(s)[::-1][k - 1]
  with pytest.raises(ValueError, match=f'k={N + 1}.*N={N}'):
    selector_model.select(s, N + 1)


def test_scores_depend_on_text_and_on_temporal_position(selector, inputs):
  frames, text = inputs
  base = selector_model.scores(*selector, frames, text)
  other_text = selector_model.scores(*selector, frames, -text)
  assert np.abs(base - other_text).max() > 1e-3
  # Reversing the frames in time is not a plain reversal of their scores: position is an input.
  reversed_scores = selector_model.scores(*selector, frames[::-1], text)[::-1]
  assert np.abs(base - reversed_scores).max() > 1e-3


def test_batched_scores_match_per_sample(selector, inputs):
  frames, text = inputs
  batch = selector_model.batch_scores(
    selector[0], selector[1], jnp.stack([frames, frames[::-1]]), jnp.stack([text, 2 * text])
  )
  np.testing.assert_allclose(batch[0], selector_model.scores(*selector, frames, text), atol=1e-5)
  # Embeddings are L2-normalised first: scaling the text changes nothing.
  np.testing.assert_allclose(batch[1], selector_model.scores(*selector, frames[::-1], text), atol=1e-5)


def test_bfloat16_compute_stays_close(selector, inputs):
  model, params = selector
  bf16 = selector_model.FrameSelector(model.config, dtype=jnp.bfloat16)
  got = selector_model.scores(bf16, params, *inputs)
  want = selector_model.scores(model, params, *inputs)
  assert got.dtype == np.float32
  assert np.abs(got - want).max() < 0.1 * (np.abs(want).max() + 1)


def test_temporal_code_is_distinct_per_frame():
  code = np.asarray(selector_model.temporal_code(32, 8))
  assert code.shape == (32, 16)
  dist = np.linalg.norm(code[:, None] - code[None], axis=-1) + np.eye(32)
  assert dist.min() > 1e-2


def test_teacher_cache_round_trip_and_resume(tmp_path):
  cache = teacher.TeacherCache(str(tmp_path / 'cache'))
  rng = np.random.default_rng(0)
  labels = [
    teacher.Label(
      f'video/{i}.mp4#q', rng.normal(size=(N, D)), rng.normal(size=(D,)), rng.normal(size=(N,)), np.asarray([i, i + 1])
    )
    for i in range(3)
  ]
  for label in labels[:2]:
    cache.put(label)
  (tmp_path / 'cache' / 'torn.tmp.npz').write_bytes(b'half a file')  # a kill mid-write
  reopened = teacher.TeacherCache(str(tmp_path / 'cache'))
  assert reopened.ids() == sorted(l.id for l in labels[:2])
  assert labels[0].id in reopened and labels[2].id not in reopened
  got = reopened.get(labels[1].id)
  np.testing.assert_allclose(got.frame_emb, labels[1].frame_emb.astype(np.float32))
  np.testing.assert_allclose(got.relevance, labels[1].relevance.astype(np.float32))
  assert got.evidence.tolist() == [1, 2] and got.id == labels[1].id


def test_siglip_features_reproduce_siglip_relevance():
  """The cached embeddings are SigLIP's own: cosine * scale + bias through a sigmoid == relevance."""
  tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
  config = siglip.SiglipConfig(
    siglip.SiglipVisionConfig(**tiny, image_size=28, patch_size=7),
    siglip.SiglipTextConfig(**tiny, vocab_size=64, max_position_embeddings=24),
  )
  model = siglip.SiglipModel(config)
  processor = SiglipProcessor(test_processor.make_tokenizer(None), 24, test_processor.PIXELS)
  pixels = jnp.zeros((1, 28, 28, 3))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), pixels, jnp.zeros((1, 24), jnp.int32))['params']
  params = {**params, 'logit_scale': jnp.asarray([1.5]), 'logit_bias': jnp.asarray([-0.5])}
  frames = np.random.default_rng(0).integers(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)
  text = 'What colour is the ball ? red blue'
  image, txt = teacher.siglip_features(model, params, processor, frames, text)
  assert image.shape == (5, 16) and txt.shape == (16,)
  cos = (image / np.linalg.norm(image, axis=-1, keepdims=True)) @ (txt / np.linalg.norm(txt))
  want = siglip.relevance(
    model, params, jnp.asarray(processor.preprocess(frames)), jnp.asarray(processor.tokenize([text]))
  )[:, 0]
  np.testing.assert_allclose(1 / (1 + np.exp(-(cos * np.exp(1.5) - 0.5))), want, atol=1e-5)
