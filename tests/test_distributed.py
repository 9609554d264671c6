"""Multi-process runs: the share of each process, deterministic merging, and two real local processes
(jax.distributed with a 127.0.0.1 coordinator, gloo collectives on CPU) whose merged results equal a
single-process run byte for byte.

`python -m tests.test_distributed WORKDIR NUM_PROCESSES PROCESS_ID PORT` is the worker the last test
launches (NUM_PROCESSES=1: the single-process reference, no jax.distributed).
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
import numpy as np
import pytest

from jaxvlm import distributed, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = [f'item{i:02d}' for i in range(11)]


def test_shares_are_contiguous_balanced_and_cover_everything():
  for n in (0, 1, 5, 11, 16):
    for count in (1, 2, 3, 4):
      shares = [distributed.process_share(ITEMS[:n] if n <= 11 else list(range(n)), i, count) for i in range(count)]
      flat = [x for s in shares for x in s]
      assert flat == (ITEMS[:n] if n <= 11 else list(range(n)))  # contiguous blocks, in order
      sizes = [len(s) for s in shares]
      assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
  assert distributed.share_bounds(11, 1, 2) == (6, 11)
  assert distributed.process_share(ITEMS) == ITEMS  # this pytest process is alone
  with pytest.raises(ValueError, match='outside'):
    distributed.share_bounds(11, 2, 2)


def write_lines(path, records, torn: str = ''):
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
    f.write(torn)


def test_merge_sorts_by_id_dedups_and_ignores_a_torn_line(tmp_path):
  write_lines(
    tmp_path / 'samples.process00001.jsonl', [{'id': 'c', 'v': 3}, {'id': 'a', 'v': 1}], torn='{"id": "z", "v"'
  )
  write_lines(tmp_path / 'samples.process00000.jsonl', [{'id': 'b', 'v': 2}, {'id': 'a', 'v': 1}])
  merged = distributed.merge_results(str(tmp_path))
  assert [r['id'] for r in merged] == ['a', 'b', 'c']
  text = (tmp_path / 'samples.jsonl').read_text()
  assert text.splitlines() == [json.dumps(r, sort_keys=True) for r in merged]
  # Merging again (the merged file now exists) changes nothing.
  distributed.merge_results(str(tmp_path))
  assert (tmp_path / 'samples.jsonl').read_text() == text
  write_lines(tmp_path / 'samples.process00002.jsonl', [{'id': 'b', 'v': 99}])
  with pytest.raises(ValueError, match="sample 'b' differs"):
    distributed.merge_results(str(tmp_path))


def test_initialize_is_a_noop_single_process(monkeypatch):
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(var, raising=False)
  info = distributed.initialize()
  assert info == distributed.ProcessInfo(0, 1, False)
  assert distributed.is_main()
  with pytest.raises(ValueError, match='together'):
    distributed.initialize(coordinator='127.0.0.1:1')
  assert distributed.process_filename('samples') == 'samples.process00000.jsonl'


# ---------------------------------------------------------------------------------------------------
# Two real processes.


def item_value(item: str) -> np.ndarray:
  """A per-item integer vector (integers: sums are exact in any reduction order)."""
  k = int(item[4:])
  return np.arange(4, dtype=np.int32) * (k + 1) + k


def worker(workdir: str, num_processes: int, process_id: int, port: int) -> None:
  """Evaluates this process's share on a mesh spanning every process, writes its records, and on
  process 0 merges them and writes the summary."""
  if num_processes > 1:
    info = distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
  else:
    info = distributed.initialize()
  mine = distributed.process_share(ITEMS)
  rows = -(-len(ITEMS) // info.process_count)  # every process contributes the same number of rows
  local = np.zeros((rows, 4), np.int32)
  local[: len(mine)] = [item_value(i) for i in mine]
  mesh = sharding.make_mesh()  # data = all devices of all processes
  x = sharding.global_batch(local, mesh)
  # Each row's output needs the global total: a collective across processes.
  f = jax.jit(lambda x: x * 3 + jnp.sum(x), out_shardings=sharding.batch_sharding(mesh))
  out = sharding.local_rows(f(x))
  name = distributed.process_filename('samples', process_index=info.process_index)
  with open(os.path.join(workdir, name), 'w') as fh:
    for item, row in zip(mine, out):
      fh.write(json.dumps({'id': item, 'value': row.tolist()}) + '\n')
  with open(os.path.join(workdir, f'info{info.process_index}.json'), 'w') as fh:
    json.dump(
      {
        'process_count': info.process_count,
        'device_count': jax.device_count(),
        'local_device_count': jax.local_device_count(),
        'share': mine,
      },
      fh,
    )
  distributed.barrier('results_written')
  if distributed.is_main():
    records = distributed.merge_results(workdir)
    with open(os.path.join(workdir, 'summary.json'), 'w') as fh:
      json.dump({'num': len(records), 'total': int(sum(sum(r['value']) for r in records))}, fh)
  distributed.barrier('merged')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, num_processes: int, port: int) -> list[subprocess.Popen]:
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env.pop('XLA_FLAGS', None)  # one CPU device per process
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(var, None)
  return [
    subprocess.Popen(
      [sys.executable, '-m', 'tests.test_distributed', str(workdir), str(num_processes), str(i), str(port)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(num_processes)
  ]


def wait(procs):
  for p in procs:
    try:
      _, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-4000:]


def test_two_processes_equal_one_process(tmp_path):
  t0 = time.time()
  two = launch(tmp_path / 'two', 2, free_port())
  one = launch(tmp_path / 'one', 1, 0)
  wait(two + one)
  print(f'2-process + reference runs: {time.time() - t0:.1f} s')
  infos = [json.loads((tmp_path / 'two' / f'info{i}.json').read_text()) for i in range(2)]
  assert [i['process_count'] for i in infos] == [2, 2]
  assert [i['device_count'] for i in infos] == [2, 2] and [i['local_device_count'] for i in infos] == [1, 1]
  assert infos[0]['share'] == ITEMS[:6] and infos[1]['share'] == ITEMS[6:]
  assert json.loads((tmp_path / 'one' / 'info0.json').read_text())['share'] == ITEMS
  for name in ('samples.jsonl', 'summary.json'):
    assert (tmp_path / 'two' / name).read_bytes() == (tmp_path / 'one' / name).read_bytes(), name
  # The values needed the cross-process sum: check the last one against numpy.
  total = int(sum(item_value(i).sum() for i in ITEMS))
  last = json.loads((tmp_path / 'two' / 'samples.jsonl').read_text().splitlines()[-1])
  assert last['id'] == ITEMS[-1] and last['value'] == (item_value(ITEMS[-1]) * 3 + total).tolist()


if __name__ == '__main__':
  worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
