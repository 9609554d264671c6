"""Multi-process faults end in a clear error on every process, never a hang: a mesh that does not divide
the devices, processes launched with different process counts, a checkpoint missing on one host, a
workdir process 0 cannot take, a process that fails or dies mid-run (barriers time out naming the
missing process).

Two real local processes (jax.distributed on 127.0.0.1, 2 CPU devices each) per scenario;
`python -m tests.test_distributed_faults SCENARIO OUT_DIR NUM_PROCESSES PROCESS_ID PORT` is the worker,
which writes what it saw (or the error it raised) to OUT_DIR/processN.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARRIER_TIMEOUT_S = 4.0


def _error(e: BaseException) -> dict:
  return {'type': type(e).__name__, 'message': str(e)}


def worker(scenario: str, out_dir: str, num_processes: int, process_id: int, port: int) -> None:
  from jaxvlm import checkpoints, distributed, sharding  # pylint: disable=g-import-not-at-top

  seen: dict = {}

  def save():
    with open(os.path.join(out_dir, f'process{process_id}.json'), 'w') as f:
      json.dump(seen, f)

  if scenario == 'count_mismatch':
    try:  # process 1 believes in a run of 3
      distributed.initialize(f'127.0.0.1:{port}', num_processes + process_id, process_id, timeout_s=20)
    except distributed.DistributedError as e:
      seen['init'] = _error(e)
    save()
    return
  distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id, timeout_s=60)
  if scenario == 'errors':
    try:
      sharding.mesh_from_config({'devices': 'global', 'data': 1, 'fsdp': 3, 'tensor': 1})
    except ValueError as e:
      seen['mesh'] = _error(e)
    seen['mesh_ok'] = dict(sharding.mesh_from_config({'devices': 'global', 'data': 1, 'fsdp': -1}).shape)
    # The checkpoint exists on process 0's "host" only.
    path = os.path.join(REPO, 'assets', 'siglip_tiny') if process_id == 0 else os.path.join(out_dir, 'nowhere')
    try:
      distributed.collective(
        'load checkpoint', lambda: checkpoints.load_pretrained(path), timeout_s=BARRIER_TIMEOUT_S * 5
      )
      seen['load'] = 'ok'
    except distributed.DistributedError as e:
      seen['load'] = _error(e)
      seen['load_cause'] = type(e.__cause__).__name__ if e.__cause__ else None
    distributed.barrier('after load', timeout_s=BARRIER_TIMEOUT_S * 5)  # the run itself goes on fine
    seen['after_load'] = 'ok'

    @distributed.guarded
    def step():
      if process_id == 1:
        raise ValueError('sample v7 has no frames')
      distributed.barrier('step', timeout_s=BARRIER_TIMEOUT_S * 5)

    t0 = time.time()
    try:
      step()
    except (ValueError, distributed.DistributedError) as e:
      seen['step'] = _error(e)
    seen['step_s'] = time.time() - t0
  elif scenario == 'workdir':
    from ml_collections import config_dict  # pylint: disable=g-import-not-at-top
    from jaxvlm import runs  # pylint: disable=g-import-not-at-top

    @distributed.guarded
    def prepare():  # an experiment's start: process 0 takes the workdir (held by another run here)
      if distributed.is_main():
        runs.prepare_workdir(os.path.join(out_dir, 'w'), config_dict.ConfigDict({'num_frames': 4}))
      distributed.barrier('workdir', timeout_s=BARRIER_TIMEOUT_S * 5)

    t0 = time.time()
    try:
      prepare()
    except (runs.WorkdirLockedError, distributed.DistributedError) as e:
      seen['prepare'] = _error(e)
    seen['prepare_s'] = time.time() - t0
    save()
    return  # a normal exit: jax.distributed's shutdown keeps process 0's store up for the other
  elif scenario.startswith('dies'):
    victim = int(scenario[-1])
    distributed.barrier('started', timeout_s=BARRIER_TIMEOUT_S * 5)
    if process_id == victim:
      os._exit(3)  # like a kill -9 / OOM: no error posted, nothing flushed
    t0 = time.time()
    try:
      distributed.barrier('results', timeout_s=BARRIER_TIMEOUT_S)
    except distributed.DistributedError as e:
      seen['barrier'] = _error(e)
    seen['barrier_s'] = time.time() - t0
  save()
  os._exit(0)  # skip jax.distributed's shutdown barrier, which would wait for the dead process


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_scenario(scenario: str, out_dir) -> tuple[list[dict | None], float, list[str]]:
  os.makedirs(out_dir, exist_ok=True)
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(var, None)
  port = _free_port()
  t0 = time.time()
  procs = [
    subprocess.Popen(
      [sys.executable, '-m', 'tests.test_distributed_faults', scenario, str(out_dir), '2', str(i), str(port)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  errs = []
  for p in procs:
    try:
      errs.append(p.communicate(timeout=180)[1])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError(f'{scenario}: a process hung')
  seconds = time.time() - t0
  out = []
  for i in range(2):
    path = os.path.join(out_dir, f'process{i}.json')
    out.append(json.load(open(path)) if os.path.exists(path) else None)
  return out, seconds, errs


def test_mesh_checkpoint_and_failing_process_errors_reach_every_process(tmp_path):
  seen, seconds, _ = run_scenario('errors', tmp_path)
  print(json.dumps(seen, indent=1), f'{seconds:.1f} s')
  for i, s in enumerate(seen):
    assert s is not None, f'process {i} wrote nothing'
    assert s['mesh']['type'] == 'ValueError'
    assert 'devices=global: 4 devices, 2 process(es), 2 devices each' in s['mesh']['message']
    assert 'multiple of 3 devices' in s['mesh']['message']
    assert s['mesh_ok'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
    # Missing on one host: every process fails, each naming process 1 and the missing directory.
    assert s['load']['type'] == 'DistributedError'
    assert 'load checkpoint: process 1 failed: CheckpointNotFoundError' in s['load']['message']
    assert 'nowhere' in s['load']['message']
    assert s['after_load'] == 'ok'
  assert seen[1]['load_cause'] == 'CheckpointNotFoundError' and seen[0]['load_cause'] is None
  # A process whose step raised: it sees its own error, the other stops at its barrier naming it, fast.
  assert seen[1]['step'] == {'type': 'ValueError', 'message': 'sample v7 has no frames'}
  assert seen[0]['step']['type'] == 'DistributedError'
  assert "process 1 failed: ValueError: sample v7 has no frames" in seen[0]['step']['message']
  assert seen[0]['step_s'] < BARRIER_TIMEOUT_S * 5


@pytest.mark.parametrize('victim', [1, 0])
def test_a_process_that_dies_is_named_when_the_barrier_times_out(tmp_path, victim):
  seen, seconds, errs = run_scenario(f'dies{victim}', tmp_path)
  print(json.dumps(seen), f'{seconds:.1f} s')
  assert seen[victim] is None
  survivor = seen[1 - victim]
  if victim == 1:  # a worker vanished: named once the timeout passes
    assert survivor['barrier']['type'] == 'DistributedError'
    assert "results: process(es) 1 of 2 did not arrive within 4 s" in survivor['barrier']['message']
    assert BARRIER_TIMEOUT_S <= survivor['barrier_s'] < BARRIER_TIMEOUT_S + 10
  elif survivor is not None:  # the coordinator vanished: the key-value store went with it
    assert (
      'lost the coordinator (process 0)' in survivor['barrier']['message']
      or 'cannot reach the coordinator (process 0)' in survivor['barrier']['message']
    )
  else:  # or jax's own coordination client noticed first and stopped the process, saying why
    print(errs[1][-2000:])
    assert 'coordination' in errs[1].lower() or 'distributed service' in errs[1].lower(), errs[1][-2000:]


def test_a_workdir_refused_on_process_0_stops_every_process(tmp_path):
  """Only process 0 takes the workdir's lock; when it cannot (another run holds it), the others stop at
  the 'workdir' barrier naming process 0 and its reason, long before the barrier's timeout."""
  from jaxvlm import runs  # pylint: disable=g-import-not-at-top

  os.makedirs(tmp_path / 'w')
  lock = runs.WorkdirLock(str(tmp_path / 'w'))
  lock.acquire()
  try:
    seen, seconds, _ = run_scenario('workdir', tmp_path)
  finally:
    lock.release()
  print(json.dumps(seen), f'{seconds:.1f} s')
  assert seen[0]['prepare']['type'] == 'WorkdirLockedError' and 'in use by another run' in seen[0]['prepare']['message']
  assert seen[1]['prepare']['type'] == 'DistributedError'
  assert 'workdir: process 0 failed: WorkdirLockedError: workdir' in seen[1]['prepare']['message']
  assert seen[1]['prepare_s'] < BARRIER_TIMEOUT_S * 5
  assert not os.path.exists(tmp_path / 'w' / 'run.json')  # nothing written for the refused run


def test_processes_launched_with_different_counts_both_fail(tmp_path):
  seen, _, _ = run_scenario('count_mismatch', tmp_path)
  for s in seen:
    assert s['init']['type'] == 'DistributedError'
    assert 'different process counts: process 0: 2, process 1: 3' in s['init']['message']


if __name__ == '__main__':
  worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
