"""Sharded checkpoint loading: `checkpoints.load_pretrained(..., mesh=mesh)` reads only the slices a
process's devices hold and assembles global arrays in the dtype asked for.

In this process (one CPU device): the mesh path gives exactly the whole-model path's params, bfloat16
stays bfloat16, and its strictness is the whole-model path's (errors raised before any data is read).
Two local processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo): under (fsdp=8) and
(fsdp=4, tensor=2) meshes each process's shards equal the reference's slices, each process reads exactly
the elements its devices hold and no more, and the sharded LLaVA gives the reference logits.

`python -m tests.test_sharded_load CASES_JSON OUT_DIR NUM_PROCESSES PROCESS_ID PORT` is the worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec
from safetensors.numpy import save_file

from jaxvlm import checkpoints, distributed, sharding
from jaxvlm.checkpoints import ShapeMismatchError, TensorSetError
from tests import test_checkpoints as tc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = {'fsdp8': dict(data=1, fsdp=8, tensor=1), 'fsdp4_tensor2': dict(data=1, fsdp=4, tensor=2)}


def _flat(tree) -> dict:
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def write_checkpoints(root) -> dict[str, str]:
  """Tiny random checkpoints written by transformers: SigLIP (conv kernel), untied LLaVA, and a tied
  bfloat16 LLaVA whose file also stores the head as a copy of the embedding (as hub files may)."""
  root = os.fspath(root)
  dirs = {name: os.path.join(root, name) for name in ('siglip', 'llava', 'llava_tied_bf16')}
  torch.manual_seed(0)
  siglip_config = transformers.SiglipConfig(vision_config=tc.SIGLIP_VISION, text_config=tc.SIGLIP_TEXT)
  tc._perturbed(transformers.SiglipModel(siglip_config)).save_pretrained(dirs['siglip'])
  tc._llava_hf(tie=False).save_pretrained(dirs['llava'])
  tied = tc._llava_hf(tie=True).to(torch.bfloat16)
  tied.save_pretrained(dirs['llava_tied_bf16'])
  path = os.path.join(dirs['llava_tied_bf16'], checkpoints.SINGLE_FILE)
  tensors = {k: np.array(v) for k, v in checkpoints.read_safetensors(path).items()}
  tensors['lm_head.weight'] = tensors['language_model.model.embed_tokens.weight'].copy()
  save_file(tensors, path, metadata={'format': 'pt'})
  return dirs


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  return write_checkpoints(tmp_path_factory.mktemp('ckpts'))


def one_device_mesh():
  return sharding.make_mesh(devices=jax.devices()[:1])


# ---------------------------------------------------------------------------------------------------
# One process.


@pytest.mark.parametrize('name', ['siglip', 'llava'])
def test_mesh_path_equals_whole_model_path(ckpts, name):
  _, whole, _ = checkpoints.load_pretrained(ckpts[name])
  mesh = one_device_mesh()
  _, sharded, _ = checkpoints.load_pretrained(ckpts[name], mesh=mesh)
  _assert_equal(sharded, whole)
  want = sharding.param_shardings(whole, mesh)
  for k, x in _flat(sharded).items():
    assert x.sharding == _flat(want)[k], k


def test_bfloat16_stays_bfloat16_and_widens_exactly(ckpts, monkeypatch):
  path = ckpts['llava_tied_bf16']
  stored = {k: np.asarray(v) for k, v in checkpoints.read_state_dict(path).items()}
  assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
  blocks = []
  read_block = checkpoints._read_block

  def spy(*args):
    block = read_block(*args)
    blocks.append(block.dtype)
    return block

  monkeypatch.setattr(checkpoints, '_read_block', spy)
  model, bf16, _ = checkpoints.load_pretrained(path, param_dtype=jnp.bfloat16, mesh=one_device_mesh())
  assert 'lm_head' not in bf16  # tied: the stored head copy was checked equal and dropped
  assert blocks and set(blocks) == {np.dtype(ml_dtypes.bfloat16)}  # no float32 block ever built
  assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
  # Bit-exact against the file's own tensors (renamed to our keys).
  family = checkpoints.FAMILIES['llava_onevision']
  ours = {family.to_ours(k): v for k, v in stored.items()}
  del ours['lm_head.weight']
  got = checkpoints.params_to_state_dict(jax.tree.map(np.asarray, bf16))
  assert got.keys() == ours.keys()
  for k in got:
    np.testing.assert_array_equal(got[k].view(np.uint16), ours[k].view(np.uint16), err_msg=k)
  # float32 when asked: exact widening, by either path.
  _, f32, _ = checkpoints.load_pretrained(path, mesh=one_device_mesh())
  _, whole, _ = checkpoints.load_pretrained(path)
  _assert_equal(f32, whole)
  _assert_equal(f32, jax.tree.map(lambda x: np.asarray(x).astype(np.float32), bf16))
  # The whole-model path also honours param_dtype.
  _, whole_bf16, _ = checkpoints.load_pretrained(path, param_dtype=jnp.bfloat16)
  _assert_equal(whole_bf16, bf16)


def _variant(src: str, dst, edit) -> str:
  path = tc._copy_config(src, dst)
  tensors = {k: np.array(v) for k, v in checkpoints.read_state_dict(src).items()}
  save_file(edit(tensors), os.path.join(path, checkpoints.SINGLE_FILE), metadata={'format': 'pt'})
  return path


def _drop(key):
  def edit(t):
    del t[key]
    return t

  return edit


def _set(key, value):
  def edit(t):
    t[key] = value(t)
    return t

  return edit


@pytest.mark.parametrize(
  'edit, error, message',
  [
    (
      _drop('vision_model.encoder.layers.1.mlp.fc1.weight'),
      TensorSetError,
      r'missing tensors: vision_model.encoder.layers.1.mlp.fc1.weight \(expected shape \(24, 16\)\)',
    ),
    (
      _set('vision_model.extra.weight', lambda t: np.zeros((2, 2), np.float32)),
      TensorSetError,
      r'unexpected tensors: vision_model.extra.weight',
    ),
    (
      _set('text_model.head.weight', lambda t: t['text_model.head.weight'][:, :8].copy()),
      ShapeMismatchError,
      r"'text_model.head.weight' has shape \(16, 8\).*expects \(16, 16\)",
    ),
  ],
)
def test_mesh_path_is_as_strict_and_fails_before_reading(ckpts, tmp_path, monkeypatch, edit, error, message):
  path = _variant(ckpts['siglip'], tmp_path / 'bad', edit)
  reads = []
  read = checkpoints.read_slice
  monkeypatch.setattr(checkpoints, 'read_slice', lambda ref, index: reads.append(ref) or read(ref, index))
  for kwargs in ({}, {'mesh': one_device_mesh()}):
    with pytest.raises(error, match=message):
      checkpoints.load_pretrained(path, **kwargs)
  assert not reads


def test_mesh_path_rejects_a_tied_head_that_differs(ckpts, tmp_path):
  path = _variant(
    ckpts['llava_tied_bf16'],
    tmp_path / 'tied',
    _set('lm_head.weight', lambda t: (t['lm_head.weight'].astype(np.float32) + 1).astype(ml_dtypes.bfloat16)),
  )
  with pytest.raises(TensorSetError, match="'lm_head.weight' that differs"):
    checkpoints.load_pretrained(path, mesh=one_device_mesh())


def test_refs_equal_compares_in_row_blocks(tmp_path):
  a = np.arange(60, dtype=np.float32).reshape(10, 6)
  b = a.copy()
  b[9, 5] += 1  # only in the last block
  save_file(
    {'a': a, 'a2': a.copy(), 'b': b, 's': np.array(1.0, np.float32), 't': np.array(2.0, np.float32)},
    os.fspath(tmp_path / 'x.safetensors'),
  )
  refs = checkpoints.read_tensor_refs(os.fspath(tmp_path / 'x.safetensors'))
  assert checkpoints._refs_equal(refs['a'], refs['a2'], block_bytes=24)
  assert not checkpoints._refs_equal(refs['a'], refs['b'], block_bytes=24)
  assert not checkpoints._refs_equal(refs['s'], refs['t'])


# ---------------------------------------------------------------------------------------------------
# Two processes x 4 CPU devices.


def _owned_elements(x: jax.Array) -> int:
  """Elements of the distinct blocks this process's devices hold (replicas counted once)."""
  seen = {}
  for s in x.addressable_shards:
    seen[tuple((i.start, i.stop) for i in s.index)] = s.data.size
  return sum(seen.values())


def worker(cases: list[dict], out_dir: str, num_processes: int, process_id: int, port: int) -> None:
  distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
  reads = {'elements': 0, 'counting': False}
  read, read_block = checkpoints.read_slice, checkpoints._read_block

  def counted(ref, index):
    block = read(ref, index)
    if reads['counting']:
      reads['elements'] += block.size
    return block

  def counting_block(*args):  # count only the parameter reads, not the tied-head comparison
    reads['counting'] = True
    try:
      return read_block(*args)
    finally:
      reads['counting'] = False

  checkpoints.read_slice, checkpoints._read_block = counted, counting_block
  results = []
  for case in cases:
    dtype = jnp.dtype(case['dtype'])
    mesh = sharding.make_mesh(**MESHES[case['mesh']])
    reads['elements'] = 0
    model, params, _ = checkpoints.load_pretrained(case['dir'], param_dtype=dtype, mesh=mesh)
    _, ref, _ = checkpoints.load_pretrained(case['dir'], param_dtype=dtype)  # whole model, this host
    flat, flat_ref = _flat(params), _flat(jax.tree.map(np.asarray, ref))
    assert flat.keys() == flat_ref.keys()
    want_shardings = _flat(sharding.param_shardings(ref, mesh))
    mismatched, owned, total, split = [], 0, 0, 0
    for k, x in flat.items():
      assert x.dtype == dtype, (k, x.dtype)
      assert x.sharding == want_shardings[k], k
      for s in x.addressable_shards:
        if not np.array_equal(np.asarray(s.data), flat_ref[k][s.index]):
          mismatched.append(k)
      owned += _owned_elements(x)
      total += x.size
      split += len(x.sharding.device_set) == 8 and x.sharding.spec != PartitionSpec()
    out = {
      'case': case,
      'mismatched': sorted(set(mismatched)),
      'elements_read': reads['elements'],
      'elements_owned': owned,
      'elements_total': total,
      'split_params': split,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
    }
    if case['dir'].endswith('llava'):
      ids, pixels = tc._llava_inputs(model.config.video_token_id)
      positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
      from jaxvlm.models import qwen2  # pylint: disable=g-import-not-at-top

      meta = qwen2.text_meta(jnp.ones(ids.shape, bool))

      def logits(p, ids, pixels):
        return model.apply(
          {'params': p}, model.apply({'params': p}, ids, pixels, positions, meta).hidden, method='logits'
        )

      rep = NamedSharding(mesh, PartitionSpec())
      with sharding.activation_rules(mesh):
        got = jax.jit(logits, out_shardings=rep)(params, jax.device_put(ids, rep), jax.device_put(pixels, rep))
      want = jax.jit(logits)(jax.device_put(ref, jax.local_devices()[0]), ids, pixels)
      out['logits_max_abs_diff'] = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    results.append(out)
  with open(os.path.join(out_dir, f'process{process_id}.json'), 'w') as f:
    json.dump(results, f)
  distributed.barrier('done')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_read_only_their_slices(ckpts, tmp_path):
  cases = [
    {'dir': ckpts['llava'], 'mesh': 'fsdp8', 'dtype': 'float32'},
    {'dir': ckpts['llava'], 'mesh': 'fsdp4_tensor2', 'dtype': 'float32'},
    {'dir': ckpts['llava_tied_bf16'], 'mesh': 'fsdp4_tensor2', 'dtype': 'bfloat16'},
    {'dir': ckpts['siglip'], 'mesh': 'fsdp8', 'dtype': 'float32'},
  ]
  cases_path = tmp_path / 'cases.json'
  cases_path.write_text(json.dumps(cases))
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='--xla_force_host_platform_device_count=4',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(var, None)
  port = _free_port()
  t0 = time.time()
  procs = [
    subprocess.Popen(
      [sys.executable, '-m', 'tests.test_sharded_load', str(cases_path), str(tmp_path), '2', str(i), str(port)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    try:
      _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-4000:]
  print(f'2 processes: {time.time() - t0:.1f} s')
  per_process = [json.loads((tmp_path / f'process{i}.json').read_text()) for i in range(2)]
  for results in per_process:
    for r in results:
      print(json.dumps(r))
      assert r['device_count'] == 8 and r['local_device_count'] == 4
      assert r['mismatched'] == [], r['case']
      assert r['split_params'] > 0, r['case']
      # Exactly the elements this process's devices hold were read (replicas read once), which under
      # fsdp is much less than the model.
      assert r['elements_read'] == r['elements_owned'], r['case']
      assert r['elements_owned'] < 0.75 * r['elements_total'], r['case']
      if 'logits_max_abs_diff' in r:
        assert r['logits_max_abs_diff'] <= 1e-5, r['case']
  assert len(per_process[0]) == len(cases)


if __name__ == '__main__':
  worker(json.loads(open(sys.argv[1]).read()), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
