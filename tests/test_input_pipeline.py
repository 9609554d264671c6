"""jaxvlm.input_pipeline: every sample once, in order when fast, a stuck or broken sample never holds
the others back, failures as records."""

from __future__ import annotations

import dataclasses
import multiprocessing
from multiprocessing import forkserver
import os
import sys
import threading
import time

import pytest

from jaxvlm import input_pipeline, resample


@dataclasses.dataclass(frozen=True)
class S:
  id: str


def _samples(n):
  return [S(f's{i}') for i in range(n)]


def _ok(chunk):
  return [s.id for s in chunk], []


@pytest.mark.parametrize('workers', [0, 1, 2, 3])
def test_fast_samples_come_in_order_chunks(workers):
  got = list(input_pipeline.prefetch_batches(_samples(10), _ok, 4, num_workers=workers))
  # The consumer takes batches no faster than the workers fill them only if it waits; either way
  # every sample arrives once, and batches are the in-order chunks when each is ready in time.
  flat = [i for b in got for i in b.items]
  assert sorted(flat) == sorted(s.id for s in _samples(10)) and len(flat) == 10
  assert all(not b.failed for b in got)
  assert all(len(b.items) <= 4 for b in got)
  if workers == 0:
    assert [b.items for b in got] == [['s0', 's1', 's2', 's3'], ['s4', 's5', 's6', 's7'], ['s8', 's9']]


def test_a_stuck_sample_does_not_hold_back_the_others():
  release = threading.Event()

  def prepare(chunk):
    if chunk[0].id == 's0':
      assert release.wait(timeout=30)  # stuck until every other sample has been consumed
    return _ok(chunk)

  seen = []
  for batch in input_pipeline.prefetch_batches(_samples(9), prepare, 2, num_workers=2):
    seen.extend(batch.items)
    if len(seen) == 8:
      release.set()
  assert seen[-1] == 's0' and sorted(seen[:-1]) == [f's{i}' for i in range(1, 9)]


def test_failures_are_records_and_the_run_goes_on():
  def prepare(chunk):
    s = chunk[0]
    if s.id == 's1':
      raise RuntimeError('decoder exploded')
    if s.id == 's2':
      return [], [(s.id, 'VideoError: video file not found: x.mp4')]
    return _ok(chunk)

  for workers in (0, 2):
    batches = list(input_pipeline.prefetch_batches(_samples(5), prepare, 2, num_workers=workers))
    items = sorted(i for b in batches for i in b.items)
    failed = dict(f for b in batches for f in b.failed)
    assert items == ['s0', 's3', 's4']
    assert failed == {'s1': 'RuntimeError: decoder exploded', 's2': 'VideoError: video file not found: x.mp4'}
    assert sum(b.num_samples for b in batches) == 5


@pytest.mark.parametrize('workers', [0, 2])
def test_prepare_sees_one_sample_at_a_time(workers):
  sizes = []

  def prepare(chunk):
    sizes.append(len(chunk))
    return _ok(chunk)

  list(input_pipeline.prefetch_batches(_samples(7), prepare, 3, num_workers=workers))
  assert sizes == [1] * 7


def test_a_sample_past_the_timeout_becomes_a_failure():
  release = threading.Event()

  def prepare(chunk):
    if chunk[0].id == 's1':
      release.wait(timeout=30)
    return _ok(chunk)

  try:
    batches = list(input_pipeline.prefetch_batches(_samples(4), prepare, 2, num_workers=2, timeout_s=0.2))
  finally:
    release.set()
  failed = [f for b in batches for f in b.failed]
  assert failed == [('s1', 'TimeoutError: not prepared within 0.2 s')]
  assert sorted(i for b in batches for i in b.items) == ['s0', 's2', 's3']


@pytest.mark.parametrize(
  'kwargs,match',
  [(dict(batch_size=0), 'batch_size'), (dict(num_workers=-1), 'num_workers'), (dict(timeout_s=0), 'timeout_s')],
)
def test_bad_arguments(kwargs, match):
  args = dict(batch_size=2, num_workers=2) | kwargs
  with pytest.raises(ValueError, match=match):
    list(input_pipeline.prefetch_batches(_samples(2), _ok, **args))
  with pytest.raises(ValueError, match="worker_kind must be one of \\('thread', 'process'\\), got 'fork'"):
    list(input_pipeline.prefetch_batches(_samples(2), _ok, 2, worker_kind='fork'))


def test_batches_are_the_in_order_chunks_when_samples_finish_in_order():
  done = [threading.Event() for _ in range(10)]

  def prepare(chunk):
    i = int(chunk[0].id[1:])
    if i:
      assert done[i - 1].wait(timeout=30)
    done[i].set()
    return _ok(chunk)

  got = [b.items for b in input_pipeline.prefetch_batches(_samples(10), prepare, 4, num_workers=3)]
  assert got == [['s0', 's1', 's2', 's3'], ['s4', 's5', 's6', 's7'], ['s8', 's9']]


def test_in_order_batches_wait_for_a_slow_sample():
  """in_order (a mesh spanning processes): the batches are the samples' in-order chunks whatever the
  timing; a failure keeps its place among them, and a stuck sample still times out."""
  release = threading.Event()

  def prepare(chunk):
    (s,) = chunk
    if s.id == 's1':
      release.wait(0.5)  # slower than every later sample: out of order without in_order
    if s.id == 's4':
      raise ValueError('no frames')
    return [s.id], []

  got = list(input_pipeline.prefetch_batches(_samples(9), prepare, 3, num_workers=3, in_order=True))
  assert [b.items for b in got] == [['s0', 's1', 's2'], ['s3', 's5', 's6'], ['s7', 's8']]
  assert [[i for i, _ in b.failed] for b in got] == [[], ['s4'], []]

  def stuck(chunk):
    if chunk[0].id == 's0':
      release.wait(5)
    return [chunk[0].id], []

  got = list(input_pipeline.prefetch_batches(_samples(3), stuck, 2, num_workers=2, in_order=True, timeout_s=0.3))
  assert [b.items for b in got] == [['s1', 's2']] and got[0].failed[0][0] == 's0'
  release.set()


def _thread_nice() -> int:
  return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread priority is Linux only')
@pytest.mark.parametrize('nice', [input_pipeline.WORKER_NICE, 0])
def test_workers_run_below_the_callers_priority_and_resize_in_their_own_thread(nice):
  seen = {}

  def prepare(chunk):
    seen[chunk[0].id] = (_thread_nice(), resample.default_threads())
    return [s.id for s in chunk], []

  caller = _thread_nice()
  got = list(input_pipeline.prefetch_batches(_samples(6), prepare, 2, num_workers=2, worker_nice=nice))
  assert sum(len(b.items) for b in got) == 6
  assert {v for v in seen.values()} == {(min(caller + nice, 19), 1)}
  assert _thread_nice() == caller  # the caller's own priority is untouched


def test_serial_preparation_keeps_the_callers_priority_and_resize_threads():
  seen = []
  caller = (_thread_nice(), resample.default_threads())

  def prepare(chunk):
    seen.append((_thread_nice(), resample.default_threads()))
    return [s.id for s in chunk], []

  list(input_pipeline.prefetch_batches(_samples(3), prepare, 2, num_workers=0))
  assert set(seen) == {caller}


# Process workers: prepare runs in other processes, so it is a module-level function (it must pickle).


def _in_a_process(chunk):
  (s,) = chunk
  if s.id == 's1':
    raise RuntimeError('decoder exploded')
  if s.id == 's2':
    os._exit(3)  # a decoder that crashes takes its process down
  if s.id == 's3':
    time.sleep(60)  # stuck: only the timeout ends it
  return [(s.id, os.getpid(), os.getpriority(os.PRIO_PROCESS, 0), resample.default_threads())], []


def test_process_workers_isolate_crashes_and_stuck_samples():
  """Every sample once; an exception, a crashed process and a stuck sample are failure records; the
  crashed worker's later samples run in a new process; workers are niced and resize in one thread."""
  caller = os.getpriority(os.PRIO_PROCESS, 0)
  t = time.monotonic()
  batches = list(
    input_pipeline.prefetch_batches(_samples(10), _in_a_process, 3, num_workers=2, timeout_s=12, worker_kind='process')
  )
  elapsed = time.monotonic() - t  # the stuck sample's process is terminated, not waited for
  items = {i[0]: i[1:] for b in batches for i in b.items}
  failed = dict(f for b in batches for f in b.failed)
  assert sorted(items) == ['s0', 's4', 's5', 's6', 's7', 's8', 's9']
  assert failed['s1'] == 'RuntimeError: decoder exploded'
  assert failed['s2'] == 'WorkerDied: the worker process exited (code 3) preparing it'
  assert failed['s3'] == 'TimeoutError: not prepared within 12 s'
  assert len(failed) == 3
  assert os.getpid() not in {pid for pid, _, _ in items.values()}
  assert {(nice, threads) for _, nice, threads in items.values()} == {(min(caller + input_pipeline.WORKER_NICE, 19), 1)}
  assert elapsed < 40, elapsed


def test_a_crashed_worker_process_is_replaced():
  samples = [S('s0'), S('s2'), S('s4')]  # s2 crashes its process
  got = list(input_pipeline.prefetch_batches(samples, _in_a_process, 1, num_workers=1, worker_kind='process'))
  items = {i[0]: i[1] for b in got for i in b.items}
  assert sorted(items) == ['s0', 's4'] and [i for b in got for i, _ in b.failed] == ['s2']
  assert items['s0'] != items['s4']  # one worker: the sample after the crash ran in a new process


def _pid(chunk):
  return [(chunk[0].id, os.getpid())], []


def test_process_workers_keep_the_order_and_end_with_the_pipeline():
  got = list(input_pipeline.prefetch_batches(_samples(7), _pid, 3, num_workers=2, in_order=True, worker_kind='process'))
  assert [[i for i, _ in b.items] for b in got] == [['s0', 's1', 's2'], ['s3', 's4', 's5'], ['s6']]
  pids = {pid for b in got for _, pid in b.items}
  for _ in range(50):  # the workers exit once the pipeline is done
    if not any(_alive(pid) for pid in pids):
      break
    time.sleep(0.1)
  assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_the_worker_server_can_start_before_the_pipeline():
  """Started early (beside the model load), the server the workers fork from is up and serves them."""
  input_pipeline.start_worker_server(['tests.test_input_pipeline'])
  server = getattr(forkserver._forkserver, '_forkserver_pid', None)  # pylint: disable=protected-access
  if 'forkserver' in multiprocessing.get_all_start_methods():
    assert server is not None and _alive(server)
  got = list(input_pipeline.prefetch_batches(_samples(4), _pid, 2, num_workers=2, worker_kind='process'))
  assert sorted(i for b in got for i, _ in b.items) == ['s0', 's1', 's2', 's3']
