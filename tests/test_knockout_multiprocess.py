"""Two local processes (jax.distributed, 127.0.0.1 coordinator, gloo) run the knockout experiment on the
embedded default and write the same summary as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  '--config=configs/knockout.py',
  '--config.max_samples=4',
  '--config.batch_size=2',
  '--config.settings=global2,fine',
  '--config.window=4',
  '--config.window_stride=2',
  '--config.data.num=10',
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir: str, env_extra: dict) -> subprocess.Popen:
  env = {**os.environ, **env_extra}
  return subprocess.Popen(
    [sys.executable, '-m', 'experiments.knockout', f'--workdir={workdir}', *ARGS],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)['rows']


def test_two_processes_give_the_single_process_summary(tmp_path):
  single = _launch(str(tmp_path / 'one'), {})
  out, err = single.communicate(timeout=900)
  assert single.returncode == 0, err[-3000:]
  port = _free_port()
  procs = [
    _launch(
      str(tmp_path / 'two'),
      {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)},
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
  shards = sorted(f for f in os.listdir(tmp_path / 'two') if f.startswith('samples.process'))
  assert len(shards) == 2
  with open(tmp_path / 'two' / 'samples.jsonl') as f:
    assert len(f.readlines()) == 4
  one, two = _rows(str(tmp_path / 'one')), _rows(str(tmp_path / 'two'))
  assert [r['name'] for r in one] == [r['name'] for r in two]
  for a, b in zip(one, two):
    for key in ('accuracy', 'performance_ratio', 'delta_logp_correct', 'flip_rate'):
      assert abs(a[key] - b[key]) <= 1e-6 or (a[key] is None and b[key] is None), (a['name'], key)
