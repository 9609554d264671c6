"""Qwen2.5-VL parity against transformers (PyTorch) on tiny random models: vision features (ragged windows,
two temporal patches, a non-square grid), M-RoPE positions, padded-batch logits, greedy decoding and
knockouts driven by dense per-layer masks in transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxvlm import checkpoints
from jaxvlm.knockout import specs as knockout
from jaxvlm.prompts import TokenLayout
from jaxvlm.models import qwen2
from jaxvlm.models import qwen2_5_vl as qv
from jaxvlm.models import qwen2_5_vl_vision as qvv
from jaxvlm.models.attention import Group
from tests.test_sweep import dense_mask

IMAGE_ID, VIDEO_ID, START_ID, END_ID = 110, 111, 112, 113
PATCH, MERGE = 4, 2
# 4 frames of 24 x 40 pixels: 2 temporal patches of a 6 x 10 patch grid = a 3 x 5 merged grid. Windows of
# 16 px = 2 x 2 merged units, so the last window row (1 unit high) and column (1 unit wide) are ragged.
FRAMES, HEIGHT, WIDTH = 4, 24, 40
GRID = (FRAMES // 2, HEIGHT // PATCH, WIDTH // PATCH)
PADS = GRID[0] * (GRID[1] // MERGE) * (GRID[2] // MERGE)


def tiny_config(tie: bool = False, layers: int = 2) -> transformers.Qwen2_5_VLConfig:
  vision = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=48,
    num_heads=2,
    in_channels=3,
    patch_size=PATCH,
    spatial_merge_size=MERGE,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=16,
    out_hidden_size=64,
    fullatt_block_indexes=[1],
  )
  text = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=layers,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=120,
    max_position_embeddings=512,
    tie_word_embeddings=tie,
    rope_parameters={'rope_type': 'default', 'mrope_section': [2, 3, 3], 'rope_theta': 10000.0},
    bos_token_id=None,
    eos_token_id=None,
  )
  return transformers.Qwen2_5_VLConfig(
    vision_config=vision,
    text_config=text,
    image_token_id=IMAGE_ID,
    video_token_id=VIDEO_ID,
    vision_start_token_id=START_ID,
    vision_end_token_id=END_ID,
    tie_word_embeddings=tie,
  )


def build(tie: bool = False, seed: int = 0, layers: int = 2):
  """-> (torch model, our model, our params) with identical random weights (noise on every tensor so
  zero-initialised biases cannot hide a layout bug)."""
  torch.manual_seed(seed)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(tiny_config(tie, layers)).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model = qv.Qwen25VLForConditionalGeneration(qv.Qwen25VLConfig.from_hf(hf.config.to_dict()))
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  params = checkpoints.convert_state_dict('qwen2_5_vl', sd, qv.param_shapes(model), model)
  return hf, model, jax.tree.map(jnp.asarray, params)


def video_span() -> np.ndarray:
  return np.concatenate([[START_ID], np.full(PADS, VIDEO_ID), [END_ID]]).astype(np.int32)


def prompt(before: int, after: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  text = lambda k: rng.integers(1, 100, size=k)
  return np.concatenate([text(before), video_span(), text(after)]).astype(np.int32)


def flat_pixels(seed: int) -> np.ndarray:
  """One video as transformers takes it: [T * gh * gw, C * tp * p * p]."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(int(np.prod(GRID)), 3 * 2 * PATCH * PATCH)).astype(np.float32)


def our_pixels(flats: list[np.ndarray]) -> np.ndarray:
  return np.stack([qvv.patches_from_flat(f, GRID, MERGE) for f in flats])


def padded(prompts: list[np.ndarray], left: bool) -> tuple[np.ndarray, np.ndarray]:
  s = max(map(len, prompts))
  ids = np.zeros((len(prompts), s), np.int32)
  mask = np.zeros((len(prompts), s), bool)
  for i, x in enumerate(prompts):
    sl = slice(s - len(x), s) if left else slice(0, len(x))
    ids[i, sl], mask[i, sl] = x, True
  return ids, mask


def hf_inputs(ids, mask, flats, seconds=None) -> dict:
  out = dict(
    input_ids=torch.from_numpy(ids).long(),
    attention_mask=torch.from_numpy(np.array(mask)).long(),
    mm_token_type_ids=torch.from_numpy(np.where(ids == VIDEO_ID, 2, 0)).int(),
    pixel_values_videos=torch.from_numpy(np.concatenate(flats)),
    video_grid_thw=torch.tensor([GRID] * len(flats)),
  )
  if seconds is not None:
    out['second_per_grid_ts'] = torch.tensor(seconds, dtype=torch.float32)
  return out


@pytest.fixture(scope='module')
def tiny():
  return build()


def test_window_tables_are_ragged_and_cover_every_unit():
  tables = qvv.window_tables(3, 5, 2)
  assert tables.gather.shape == (2 * 3, 4)
  # Window rows of 2 + 1 units, columns of 2 + 2 + 1: the right column and the bottom row are ragged.
  assert tables.valid.sum(1).tolist() == [4, 4, 2, 2, 2, 1]
  flat = tables.gather.reshape(-1)
  np.testing.assert_array_equal(flat[tables.scatter], np.arange(15))


def test_vision_features_match_transformers(tiny):
  hf, model, params = tiny
  flats = [flat_pixels(1), flat_pixels(2)]
  with torch.no_grad():
    ref = hf.model.get_video_features(torch.from_numpy(np.concatenate(flats)), torch.tensor([GRID, GRID])).pooler_output
  ref = np.stack([r.numpy() for r in ref])
  ours = np.asarray(
    jax.jit(lambda p, x: model.apply({'params': p}, x, method='video_features'))(params, our_pixels(flats))
  )
  assert ours.shape == ref.shape == (2, PADS, 64)
  err = np.abs(ours - ref).max()
  print(f'qwen2.5-vl vision features max abs diff: {err:.2e}')
  assert err <= 1e-4
  # The two temporal patches must not see each other: changing frames 2-3 leaves patch 0 unchanged.
  other = flats[0].copy().reshape(GRID[0], -1)
  other[1] += 1.0
  again = np.asarray(
    model.apply({'params': params}, our_pixels([other.reshape(flats[0].shape)]), method='video_features')
  )
  half = PADS // 2
  np.testing.assert_allclose(again[0, :half], ours[0, :half], atol=1e-6)
  assert np.abs(again[0, half:] - ours[0, half:]).max() > 1e-3


def _hf_rope(hf, ids, mask, grids, seconds):
  kwargs = dict(
    mm_token_type_ids=torch.from_numpy(np.where(ids == VIDEO_ID, 2, 0)).int(),
    attention_mask=None if mask is None else torch.from_numpy(mask).long(),
  )
  if grids is not None:
    kwargs['video_grid_thw'] = torch.tensor(grids)
  if seconds is not None:
    kwargs['second_per_grid_ts'] = torch.tensor(seconds, dtype=torch.float32)
  pos, deltas = hf.model.get_rope_index(torch.from_numpy(ids).long(), **kwargs)
  return pos.numpy(), deltas.numpy()


@pytest.mark.parametrize('case', ['text', 'video', 'left', 'right', 'fractional', 'long_video'])
def test_rope_index_equals_transformers(tiny, case):
  hf, model, _ = tiny
  cfg = model.config
  grids, seconds, mask = None, None, None
  if case == 'text':
    ids, mask = padded([np.arange(1, 9), np.arange(1, 6)], left=False)
  else:
    ids, mask = padded([prompt(3, 5, 1), prompt(6, 2, 2)], left=(case != 'right'))
    grids = [GRID, GRID]
    if case == 'video':
      mask = None
      ids = np.stack([prompt(3, 5, 1), prompt(3, 5, 3)])
    if case == 'fractional':
      seconds = [0.3, 1.7]
    if case == 'long_video':
      seconds = [5.0, 0.5]  # temporal positions reach past the text that follows the video
  ref, ref_deltas = _hf_rope(hf, ids, mask, grids, seconds)
  ours, deltas = qv.rope_index(ids, cfg, grids, seconds, mask)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(deltas, ref_deltas)
  if case == 'long_video':
    # transformers 5.x: text after the video continues at start + max(Hm, Wm), not after the temporal max.
    row = ours[:, 0]
    end = np.flatnonzero(ids[0] == END_ID)[0]
    assert row[0, end - 1] > row[0, end]


def _logits(model, params, ids, pixels, positions, mask):
  @jax.jit
  def run(params):
    out = model.apply({'params': params}, ids, pixels, positions, qwen2.text_meta(jnp.asarray(mask)))
    return model.apply({'params': params}, out.hidden, method='logits')

  return np.asarray(run(params))


@pytest.mark.parametrize('left', [False, True])
def test_padded_batch_logits_match_transformers(tiny, left):
  hf, model, params = tiny
  ids, mask = padded([prompt(3, 7, 1), prompt(5, 2, 2)], left=left)
  flats = [flat_pixels(3), flat_pixels(4)]
  seconds = [0.5, 1.25]
  with torch.no_grad():
    ref = hf(**hf_inputs(ids, mask, flats, seconds)).logits.numpy()
  positions, _ = qv.rope_index(ids, model.config, [GRID, GRID], seconds, mask)
  ours = _logits(model, params, ids, our_pixels(flats), positions, mask)
  err = np.abs(ours - ref)[mask].max()
  print(f'qwen2.5-vl padded logits max abs diff (left={left}): {err:.2e}')
  assert err <= 1e-4


def test_tied_embeddings_logits_match_transformers():
  hf, model, params = build(tie=True, seed=3)
  assert 'lm_head' not in params
  ids, mask = padded([prompt(2, 4, 5)], left=False)
  flats = [flat_pixels(5)]
  with torch.no_grad():
    ref = hf(**hf_inputs(ids, mask, flats)).logits.numpy()
  positions, _ = qv.rope_index(ids, model.config, [GRID], None, mask)
  assert np.abs(_logits(model, params, ids, our_pixels(flats), positions, mask) - ref).max() <= 1e-4


def test_greedy_generation_matches_transformers_generate():
  hf, model, params = build(seed=1)
  ids, mask = padded([prompt(2, 6, 5), prompt(4, 1, 6)], left=True)
  flats = [flat_pixels(7), flat_pixels(8)]
  seconds = [1.0, 2.0]
  s = ids.shape[1]
  with torch.no_grad():
    ref = hf.generate(
      **hf_inputs(ids, mask, flats, seconds), do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0
    )[:, s:].numpy()
  positions, _ = qv.rope_index(ids, model.config, [GRID, GRID], seconds, mask)
  ours = np.asarray(
    qv.generate(model, params, ids, our_pixels(flats), positions, qwen2.text_meta(jnp.asarray(mask)), 8)
  )
  np.testing.assert_array_equal(ours, ref)


# ------------------------------------------------------------------------------------------------ knockouts


def qa_prompt(n_system, n_question, n_options, n_last, seed):
  """ids, group, frame [S] of a video QA prompt with the real group structure and Qwen's video span."""
  rng = np.random.default_rng(seed)
  span = video_span()
  parts = [
    (Group.SYSTEM, n_system),
    (Group.VIDEO, len(span)),
    (Group.QUESTION, n_question),
    (Group.OPTIONS, n_options),
    (Group.LAST, n_last),
  ]
  group = np.concatenate([np.full(n, g) for g, n in parts]).astype(np.int32)
  ids = rng.integers(1, 100, size=len(group)).astype(np.int32)
  ids[group == Group.VIDEO] = span
  return ids, group


def test_video_layout_helpers_follow_the_conventions(tiny):
  _, model, _ = tiny
  ids, group = qa_prompt(3, 4, 5, 2, 0)
  frame = qv.video_frames(ids, model.config, PADS // GRID[0])
  np.testing.assert_array_equal(qv.video_groups(ids, model.config) == Group.VIDEO, group == Group.VIDEO)
  video = np.flatnonzero(group == Group.VIDEO)
  assert frame[video[0]] == frame[video[-1]] == -1  # vision_start / vision_end: no frame
  np.testing.assert_array_equal(frame[video[1:-1]], np.repeat(np.arange(GRID[0]), PADS // GRID[0]))
  assert (frame[group != Group.VIDEO] == -1).all()


def qa_batch(model):
  """A right-padded batch of two QA prompts: ids [B, S], layout (M-RoPE positions [3, B, S]), answer
  slots [B], and the two videos (transformers' flat patches)."""
  prompts = [qa_prompt(3, 4, 6, 3, 0), qa_prompt(2, 7, 5, 2, 1)]
  ids, valid = padded([p[0] for p in prompts], left=False)
  group = np.full(ids.shape, Group.LAST, np.int32)
  for i, (_, g) in enumerate(prompts):
    group[i, : len(g)] = g
  frame = np.where(valid, qv.video_frames(ids, model.config, PADS // GRID[0]), -1)
  positions, _ = qv.rope_index(ids, model.config, [GRID, GRID], [0.5, 1.0], valid)
  layout = TokenLayout(
    group=jnp.asarray(group), frame=jnp.asarray(frame), positions=jnp.asarray(positions), valid=jnp.asarray(valid)
  )
  return ids, layout, valid.sum(1) - 1, [flat_pixels(9), flat_pixels(10)]


def test_knockouts_match_transformers_dense_masks():
  hf, model, params = build(seed=2, layers=3)
  hf.config.text_config._attn_implementation = 'eager'
  hf.model.language_model.config._attn_implementation = 'eager'
  ids, layout, answer, flats = qa_batch(model)
  group, frame, valid = (np.asarray(x) for x in (layout.group, layout.frame, layout.valid))
  num_layers, f = 3, GRID[0]
  specs = []
  for kind in knockout.KINDS:
    specs.append((f'{kind}/all', knockout.knockout_spec(kind, knockout.all_layers(num_layers), f)))
    specs.append((f'{kind}/win1-2', knockout.knockout_spec(kind, knockout.window(num_layers, 1, 2), f)))
  specs.append(('frames/1', knockout.knockout_spec('frames', knockout.window(num_layers, 0, 2), f, frames=[1])))
  specs.append(('clean', knockout.clean_spec(num_layers, f)))

  @jax.jit
  def ours(params, spec):
    out = model.apply({'params': params}, ids, our_pixels(flats), layout.positions, layout.meta(), spec)
    last = out.hidden[jnp.arange(2), answer]
    return jax.nn.log_softmax(model.apply({'params': params}, last, method='logits'), -1)

  results, worst = {}, 0.0
  for name, spec in specs:
    handles = []
    for l, layer in enumerate(hf.model.language_model.layers):
      spec_l = {
        'block': spec.block[l],
        'cross_frame': spec.cross_frame[l],
        'same_frame': spec.same_frame[l],
        'frames': spec.frames[l],
      }
      mask = torch.from_numpy(dense_mask(group, frame, valid, spec_l))

      def hook(module, args, kwargs, mask=mask):
        kwargs['attention_mask'] = mask
        return args, kwargs

      handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
      with torch.no_grad():
        logits = hf(**hf_inputs(ids, valid, flats, [0.5, 1.0])).logits
    finally:
      for h in handles:
        h.remove()
    ref = torch.log_softmax(logits[torch.arange(2), torch.from_numpy(answer)], -1).numpy()
    got = np.asarray(ours(params, jax.tree.map(jnp.asarray, spec)))
    err = float(np.abs(got - ref).max())
    worst = max(worst, err)
    results[name] = got
    assert err <= 1e-4, (name, err)
  print(f'qwen2.5-vl knockouts: max |ours - transformers dense-mask| over {len(specs)} specs: {worst:.2e}')
  for name in ('LV/all', 'VT/all', 'VS/all'):  # each knockout must change something
    assert np.abs(results[name] - results['clean']).max() > 1e-4, name
