"""One global mesh across processes (`--config.mesh.devices=global`): 2 local processes x 4 CPU devices
(jax.distributed on 127.0.0.1, gloo), the embedded default's weights split over fsdp=8 across both
processes, or over fsdp=4 x tensor=2, against single-process runs.

References: one process on the same mesh over its own 8 devices (`local_<mesh>`: the same SPMD program,
only the process boundary differs), and for the knockout also one process on one device (`one`: the plain
unsharded path), whose float32 reduction order differs (docs/results.md).

- knockout: summary.json equals the single-process runs' (counts and accuracies exactly, log-prob
  metrics within float32 noise);
- keyframe diagnosis: every per-sample score within that noise, and the summary equal over the samples
  whose causal oracle ranks frames by more than the noise (a frame-independent sample's oracle is ~1e-5
  nats of pure rounding: its top-k is arbitrary in any run);
- train_selector: teacher labels within the noise and the training loss curve equal within float
  tolerance;
- score: option log-probs and the greedy answer equal.

Every run of a mesh happens in one launch (`python -m tests.test_global_mesh ROOT MESH...` runs the
experiments' `run` functions one after another in the same processes): the processes start, join and
compile the programs the experiments share once, not once per experiment. Each process compiles every
SPMD program on a 2-core machine, so the launches use XLA's cheapest CPU codegen (references and global
runs alike).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mesh name -> config.mesh. one: a single process on one device; local_<m>: a single process, mesh <m>
# over its 8 devices; <m>: mesh <m> spanning both processes.
# fsdp=4 x tensor=2 runs all-to-alls (attention head reshapes), which hung now and then on the CPU
# backend until `import jaxvlm` gave XLA's CPU client two threads per device (jaxvlm/cpu_threads.py).
GLOBAL = ['fsdp8', 'fsdp4_tensor2']
_SHAPES = {'fsdp8': {'data': 1, 'fsdp': 8, 'tensor': 1}, 'fsdp4_tensor2': {'data': 1, 'fsdp': 4, 'tensor': 2}}
MESHES = {
  'one': {'devices': 'local', 'data': -1, 'fsdp': 1, 'tensor': 1},
  **{f'local_{m}': {'devices': 'local', **shape} for m, shape in _SHAPES.items()},
  **{m: {'devices': 'global', **shape} for m, shape in _SHAPES.items()},
}
# float32 log-probs of order 10 summed in another order (8-way fsdp, 2-way tensor splits of the
# contractions): differences up to a few 1e-6 measured; 2e-5 is a few ulps at that scale, not a fudge.
ATOL = 2e-5
# Config overrides per experiment (dotted fields), on each configs/<experiment>.py default. All three read
# the same 4 synthetic test clips in one batch of 4 frames / candidates, so the prompts, and with them most
# compiled programs (the clean run, the frame-knockout sweep), are the same in the three.
DATA = {'data.split': 'test', 'data.num': 10, 'data.seed': 1234}
KNOCKOUT = {**DATA, 'max_samples': 4, 'batch_size': 4, 'settings': 'global2', 'num_frames': 4, 'tail_multiple': 8}
DIAGNOSIS = {
  **DATA,
  'max_samples': 4,
  'batch_size': 4,
  'num_candidates': 4,
  'ks': '1,2',
  'sensitive_k': 1,
  'strip_samples': 1,
  'tail_multiple': 8,
}
SELECTOR = {
  **DATA,
  'max_samples': 4,
  'label_batch_size': 4,
  'num_candidates': 4,
  'tail_multiple': 8,
  'val_fraction': 0.5,
  'num_steps': 6,
  'batch_size': 8,
  'eval_every': 3,
  'checkpoint_every': 3,
  'warmup_steps': 1,
  'model.width': 16,
  'model.depth': 1,
}
STEPS = 6
# Cheapest XLA CPU codegen: most of a launch is compiling (each process compiles every SPMD program).
FAST_XLA = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


# ---------------------------------------------------------------- the driver (runs in the launched processes)


def _config(module, overrides: dict, mesh: dict):
  config = module.get_config()
  for name, value in {**overrides, **{f'mesh.{k}': v for k, v in mesh.items()}}.items():
    *groups, leaf = name.split('.')
    node = config
    for g in groups:
      node = node[g]
    node[leaf] = value
  return config


def _score(root: str, name: str, mesh_config: dict) -> None:
  """experiments.score's result on one synthetic clip (3 greedy tokens) -> root/score_<mesh>.json."""
  from experiments import score  # pylint: disable=g-import-not-at-top
  from jaxvlm import checkpoints, distributed, sharding, video  # pylint: disable=g-import-not-at-top
  from jaxvlm.data import synthetic  # pylint: disable=g-import-not-at-top

  clips = os.path.join(root, 'clips')
  if distributed.is_main() and not os.path.exists(os.path.join(clips, 'meta.json')):
    synthetic.generate(clips, num=1, seed=3, num_frames=16, split='test')
  distributed.barrier('clip')
  (item,) = synthetic.generate_specs(num=1, seed=3, num_frames=16, split='test')
  mesh = sharding.mesh_from_config(mesh_config)
  model, params, processor = checkpoints.load_pretrained('assets/llava_ov_tiny', mesh=mesh)
  frames = video.sample_frames(os.path.join(clips, 'videos', f'{item.id}.mp4'), 4)
  out = score.score(
    model,
    params,
    processor,
    frames.pixels,
    item.question.question,
    list(item.question.options),
    3,
    frames.timestamps_s,
    mesh=mesh,
  )
  if distributed.is_main():
    with open(os.path.join(root, f'score_{name}.json'), 'w') as f:
      json.dump(out, f)


def drive(root: str, names: list[str]) -> None:
  """Every experiment of the test on each mesh of `names`, in this process (one of a launch)."""
  from configs import keyframe_diagnosis as diagnosis_config  # pylint: disable=g-import-not-at-top
  from configs import knockout as knockout_config  # pylint: disable=g-import-not-at-top
  from configs import train_selector as selector_config  # pylint: disable=g-import-not-at-top
  from experiments import keyframe_diagnosis, knockout, train_selector  # pylint: disable=g-import-not-at-top
  from jaxvlm import distributed  # pylint: disable=g-import-not-at-top

  distributed.initialize()
  for name in names:
    mesh = MESHES[name]
    for experiment, module, overrides, run in (
      ('knockout', knockout_config, KNOCKOUT, knockout.run),
      ('keyframe_diagnosis', diagnosis_config, DIAGNOSIS, keyframe_diagnosis.run),
      ('train_selector', selector_config, SELECTOR, train_selector.run),
    ):
      if name == 'one' and experiment != 'knockout':
        continue  # the one-device reference is the knockout's only
      t0 = time.time()
      run(_config(module, overrides, mesh), os.path.join(root, f'{experiment}_{name}'))
      print(f'{experiment}/{name}: {time.time() - t0:.0f} s', file=sys.stderr)
    if name != 'one':
      _score(root, name, mesh)


# ---------------------------------------------------------------- launching


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(root, names: list[str], num_processes: int, devices: int = 8) -> list[subprocess.Popen]:
  """Starts the driver on `num_processes` local processes (`devices` CPU devices in all); wait with
  `finish`."""
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    JAXVLM_BARRIER_TIMEOUT_S='600',
    XLA_FLAGS=FAST_XLA,
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(var, None)
  port = _free_port()
  procs = []
  for i in range(num_processes):
    extra = {'XLA_FLAGS': f'{FAST_XLA} --xla_force_host_platform_device_count={devices // num_processes}'}
    if num_processes > 1:
      extra.update(
        {
          'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
          'JAX_NUM_PROCESSES': str(num_processes),
          'JAX_PROCESS_ID': str(i),
        }
      )
    procs.append(
      subprocess.Popen(
        [sys.executable, '-m', 'tests.test_global_mesh', str(root), *names],
        cwd=REPO,
        env={**env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return procs


def finish(procs: list[subprocess.Popen], timeout_s: float = 900) -> list[str]:
  """Waits for every process; returns their stderr; fails with the stderr of one that failed."""
  errs = []
  for p in procs:
    try:
      _, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-4000:]
    errs.append(err)
  return errs


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """The directory holding every run: <experiment>_<mesh>/ and score_<mesh>.json, for every mesh. The
  references and the two-process launch run at the same time (the 2 cores are shared either way)."""
  root = tmp_path_factory.mktemp('global')
  t0 = time.time()
  refs = launch(root, ['one'], 1, devices=1) + launch(root, [f'local_{m}' for m in GLOBAL], 1)
  two = launch(root, GLOBAL, 2)
  errs = finish(refs) + finish(two)
  print(
    f'launches: {time.time() - t0:.0f} s;',
    '; '.join(l for e in errs[:3] for l in e.splitlines() if l.endswith(' s') and '/' in l.split(':')[0]),
  )
  return root


# ---------------------------------------------------------------- checks


def assert_close(a, b, where: str = ''):
  """Equal structure and non-float values; floats within ATOL."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), where
    for k in a:
      assert_close(a[k], b[k], f'{where}/{k}')
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close(x, y, f'{where}[{i}]')
  elif isinstance(a, float) and isinstance(b, float):
    assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= ATOL, (where, a, b)
  else:
    assert a == b, (where, a, b)


def read_json(path) -> dict:
  with open(path) as f:
    return json.load(f)


def records(workdir) -> dict[str, dict]:
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    return {r['id']: r for r in map(json.loads, f)}


@pytest.mark.parametrize('mesh', GLOBAL)
@pytest.mark.parametrize('reference', ['one', 'local'])
def test_knockout_summary_equals_the_single_process_run(root, mesh, reference):
  one = root / ('knockout_one' if reference == 'one' else f'knockout_local_{mesh}')
  glob_ = root / f'knockout_{mesh}'
  # Only process 0 wrote, one samples.jsonl and no per-process files.
  assert not glob.glob(os.path.join(glob_, 'samples.process*'))
  assert records(one).keys() == records(glob_).keys() and len(records(one)) == 4
  a, b = read_json(one / 'summary.json'), read_json(glob_ / 'summary.json')
  assert_close(a, b, 'summary')
  # The comparison has teeth: the knockouts move the log-probs far more than the tolerance.
  assert max(abs(r['delta_logp_correct']) for r in a['rows']) > 100 * ATOL
  assert read_json(glob_ / 'config.json')['mesh'] == MESHES[mesh]


def _separated(record: dict, ks: list[int], gap: float = 1e-4) -> bool:
  """Whether the causal oracle's top-k and bottom-k boundaries (every k) are wider than `gap`."""
  c = np.sort(np.asarray(record['scores']['causal']))[::-1]
  return all(c[k - 1] - c[k] > gap and c[-k - 1] - c[-k] > gap for k in ks)


@pytest.mark.parametrize('mesh', GLOBAL)
def test_keyframe_diagnosis_equals_the_single_process_run(root, mesh):
  from configs import keyframe_diagnosis as diagnosis_config  # pylint: disable=g-import-not-at-top
  from jaxvlm.keyframes import diagnosis  # pylint: disable=g-import-not-at-top

  one_dir, glob_dir = root / f'keyframe_diagnosis_local_{mesh}', root / f'keyframe_diagnosis_{mesh}'
  one, glob_ = records(one_dir), records(glob_dir)
  assert one.keys() == glob_.keys() and len(one) == 4
  for sample_id in one:
    for field in ('clean', 'text_only', 'scores', 'attention_per_layer', 'candidates'):
      assert_close(one[sample_id][field], glob_[sample_id][field], f'{sample_id}/{field}')
  ks = [1, 2]
  decisive = [i for i in one if _separated(one[i], ks)]
  assert len(decisive) >= 2, 'the test needs samples whose frames matter to the model'
  for i in decisive:
    assert one[i]['selections'] == glob_[i]['selections'], i
    assert_close(one[i]['k_logp'], glob_[i]['k_logp'], f'{i}/k_logp')
  config = _config(diagnosis_config, DIAGNOSIS, MESHES['one'])
  with open(os.path.join(REPO, 'assets', 'llava_ov_tiny', 'config.json')) as f:
    num_layers = json.load(f)['text_config']['num_hidden_layers']
  plan = diagnosis.plan_from_config(config, num_layers)
  summary = lambda recs: diagnosis.summarize([recs[i] for i in decisive], plan, 1)
  assert_close(summary(one), summary(glob_), 'summary over the decisive samples')
  if len(decisive) == len(one):
    assert_close(read_json(one_dir / 'summary.json'), read_json(glob_dir / 'summary.json'), 'summary.json')


@pytest.mark.parametrize('mesh', GLOBAL)
def test_selector_labels_and_loss_curve_equal_the_single_process_run(root, mesh):
  one_dir, glob_dir = root / f'train_selector_local_{mesh}', root / f'train_selector_{mesh}'
  teacher = lambda w: {os.path.basename(p): np.load(p) for p in sorted(glob.glob(str(w / 'teacher' / '*.npz')))}
  a, b = teacher(one_dir), teacher(glob_dir)
  assert a.keys() == b.keys() and len(a) == 4
  for name in a:
    for field in ('frame_emb', 'text_emb', 'relevance', 'evidence'):
      np.testing.assert_allclose(a[name][field], b[name][field], atol=ATOL, err_msg=f'{name}/{field}')
  curve = lambda w: [(r['step'], r['loss']) for r in map(json.loads, open(w / 'metrics.jsonl')) if 'loss' in r]
  one, glob_ = curve(one_dir), curve(glob_dir)
  assert [s for s, _ in one] == [s for s, _ in glob_] == list(range(1, STEPS + 1))  # process 0 logged each once
  np.testing.assert_allclose([l for _, l in glob_], [l for _, l in one], rtol=1e-4, atol=ATOL)
  assert abs(one[0][1] - one[-1][1]) > 100 * ATOL  # it trained
  s1, s2 = read_json(one_dir / 'summary.json'), read_json(glob_dir / 'summary.json')
  assert s1['num_devices'] == s2['num_devices'] == 8


@pytest.mark.parametrize('mesh', GLOBAL)
def test_score_equals_the_single_process_run(root, mesh):
  a, b = read_json(root / f'score_local_{mesh}.json'), read_json(root / f'score_{mesh}.json')
  assert_close(a, b, 'score')
  assert a['choice'] == b['choice'] and a['generated'] == b['generated'] and a['generated']


def test_global_mesh_helpers_single_process():
  """One process: a 'global' mesh is the local one, every item is this process's, it writes."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxvlm import distributed, sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.mesh_from_config({'devices': 'global', 'data': -1, 'fsdp': 1, 'tensor': 1})
  assert mesh.devices.size == jax.device_count()
  assert not distributed.mesh_spans_processes(mesh)
  assert distributed.work_share([1, 2, 3], mesh) == [1, 2, 3] and distributed.writes_results(mesh)
  assert distributed.sample_log_name(mesh) == 'samples.jsonl'
  assert distributed.done_ids(mesh, ['a']) == {'a'} and distributed.broadcast_json({'x': 1}) == {'x': 1}
  x = np.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(sharding.to_host(sharding.put(x, sharding.replicated(mesh))), x)
  with pytest.raises(ValueError, match="mesh.devices='everywhere'"):
    sharding.mesh_from_config({'devices': 'everywhere'})
  with pytest.raises(ValueError, match=r"unknown fields \['pipeline'\]"):
    sharding.mesh_from_config({'devices': 'local', 'pipeline': 2})


if __name__ == '__main__':
  drive(sys.argv[1], sys.argv[2:])
