"""Background input pipeline: prepare (decode, preprocess, prompt) samples in worker threads while the
model computes on earlier batches.

`prefetch_batches(samples, prepare, batch_size, num_workers)` yields `Ready(items, failed)` batches.
Workers run `prepare([sample]) -> (items, failed)` (the experiments' `prepare` signature) on one
sample each, up to `num_workers * 2 + batch_size * prefetch_batches` samples ahead of the consumer, so
memory stays bounded. A batch takes the finished samples in submission order: when everything is fast
the batches are exactly the in-order chunks; a slow video is passed over and joins a later batch,
so it never holds back the samples after it. An exception escaping `prepare` and a sample slower than
`timeout_s` become failure records `(sample id, reason)`, yielded with the next batch; the run goes on.

Workers are threads (`worker_kind='thread'`) or threads that each hand their samples to a process of
their own (`'process'`, what long videos want). Decoding (libav), the RGB conversion, the
resampler's matrix products and JAX's computations all release the GIL, but between them every
decoded packet and every dispatched computation takes it back: with thread workers the model's thread
waits for the GIL behind the workers, and decoding threads scale worse than processes (measured in
docs/results.md, input pipeline). Processes share
no GIL with the model and start without the caller's threads (forkserver, which imports `prepare`'s
module once; spawn where there is none), and a video that crashes the decoder kills only its process:
the sample becomes a failure record and the worker starts a new process. The price is pickling each
prepared sample back to the caller. A timed-out sample cannot be stopped: it finishes in the background
and its result is dropped, and the pool runs one worker short until it does.

Workers run at a lower scheduling priority (`WORKER_NICE`) than the thread that feeds the model: when
the cores are all busy the model's computation, the critical path, keeps its core and the workers take
what is left; on an idle core the priority changes nothing. (Thread workers: Linux only, per thread.)
Each worker resizes its frames in one thread (`resample.set_thread_default(1)`): the workers already
spread the samples over the cores.

`num_workers=0` prepares each sample in the calling thread, in order (no overlap; for debugging and as
the serial baseline of benchmarks/input_overlap.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxvlm import resample

PrepareFn = Callable[[Sequence[Any]], tuple[list, list]]

# Added to a worker thread's nice value. With 10 a busy worker gets about a tenth of a core that the
# model's thread also wants (Linux CFS weights); measured in docs/results.md (input pipeline, overlap).
WORKER_NICE = 10

WORKER_KINDS = ('thread', 'process')


@dataclasses.dataclass(frozen=True)
class Ready:
  """One batch: prepared items (at most batch_size) and failure records [(sample id, reason)]."""

  items: list
  failed: list[tuple[str, str]]

  @property
  def num_samples(self) -> int:
    return len(self.items) + len(self.failed)


def _reason(e: BaseException) -> str:
  return f'{type(e).__name__}: {e}'


def _init_worker(nice: int) -> None:
  """Runs in each worker thread as it starts."""
  resample.set_thread_default(1)
  if nice and sys.platform.startswith('linux'):  # elsewhere setpriority would renice the whole process
    try:
      tid = threading.get_native_id()
      os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as e:  # a sandbox that forbids it: the pipeline works, just without the priority
      logging.warning('input pipeline: could not lower a worker thread\'s priority: %s', e)


def _init_process(nice: int) -> None:
  """Runs in each worker process as it starts (the whole process is the worker)."""
  resample.set_thread_default(1)
  if nice:
    try:
      os.nice(nice)
    except OSError as e:
      logging.warning('input pipeline: could not lower a worker process\'s priority: %s', e)


def _serve(conn: multiprocessing.connection.Connection, prepare: PrepareFn, nice: int) -> None:
  """A worker process: prepares each sample its thread sends, until the pipe closes."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it ends the workers
  _init_process(nice)
  while True:
    try:
      sample = conn.recv()
    except EOFError:
      return
    conn.send(_prepare_one(prepare, sample))


def _main_module() -> str | None:
  """The importable name of the program's main module (`python -m pkg.mod`: 'pkg.mod'), which every
  worker process imports as __mp_main__."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  return getattr(spec, 'name', None)


def _context(modules: Sequence[str] = ()):
  """forkserver (not fork: the caller runs JAX's threads, and a forked copy of them can deadlock),
  importing `modules` and the main module once in the server so each worker starts without importing
  them; spawn where there is no forkserver."""
  if 'forkserver' not in multiprocessing.get_all_start_methods():
    return multiprocessing.get_context('spawn')
  ctx = multiprocessing.get_context('forkserver')
  main = _main_module()
  preload = [m for m in (*modules, main) if m and m != '__main__']
  if preload:
    ctx.set_forkserver_preload(preload)  # no effect once the server runs
  return ctx


def start_worker_server(modules: Sequence[str]) -> None:
  """Starts the server worker processes fork from, importing `modules` (those of `prepare`), so that
  its start-up runs while the caller is busy elsewhere (loading the model) instead of when the first
  samples are wanted. Optional: prefetch_batches starts it otherwise. No-op without forkserver."""
  ctx = _context(modules)
  if ctx.get_start_method() == 'forkserver':
    from multiprocessing import forkserver  # pylint: disable=g-import-not-at-top

    forkserver.ensure_running()


@dataclasses.dataclass
class _Process:
  process: Any  # multiprocessing.Process of the context
  conn: multiprocessing.connection.Connection
  busy: bool = False


class _ProcessWorkers:
  """One worker process per worker thread, started with its thread's first sample and again after one
  dies. prepare(sample) runs in the calling thread's process -> (items, failed)."""

  def __init__(self, prepare: PrepareFn, nice: int):
    self._prepare, self._nice = prepare, nice
    module = getattr(getattr(prepare, 'func', prepare), '__module__', None)
    self._ctx = _context([module] if module else [])
    self._local = threading.local()
    self._lock = threading.Lock()
    self._started: list[_Process] = []

  def _start(self) -> _Process:
    ours, theirs = self._ctx.Pipe()
    process = self._ctx.Process(
      target=_serve, args=(theirs, self._prepare, self._nice), name='input_pipeline', daemon=True
    )
    process.start()
    theirs.close()
    worker = _Process(process, ours)
    with self._lock:
      self._started.append(worker)
    return worker

  def prepare(self, sample) -> tuple[list, list]:
    worker = getattr(self._local, 'worker', None) or self._start()
    self._local.worker = worker
    with self._lock:
      worker.busy = True
    try:
      try:
        worker.conn.send(sample)
      except (BrokenPipeError, ConnectionResetError):
        pass  # the process is gone: recv says so
      except Exception as e:  # pylint: disable=broad-except  # e.g. a sample that does not pickle
        return [], [(sample.id, f'cannot send the sample to a worker process: {_reason(e)}')]
      try:
        return worker.conn.recv()
      except (EOFError, OSError):
        worker.process.join(5)
        self._local.worker = None  # the thread's next sample starts a new process
        return [], [(sample.id, f'WorkerDied: the worker process exited (code {worker.process.exitcode}) preparing it')]
    finally:
      with self._lock:
        worker.busy = False

  def close(self) -> None:
    """Idle workers end at the end of their pipe; busy ones (a timed-out sample, or a consumer that
    stopped early) are terminated, which ends their thread's wait."""
    with self._lock:
      started, self._started = self._started, []
      busy = [w for w in started if w.busy]
      for w in started:
        if not w.busy:
          w.conn.close()
    for w in busy:
      w.process.terminate()
    for w in started:
      w.process.join(5)
      if w.process.is_alive():
        w.process.kill()


def _prepare_one(prepare: PrepareFn, sample) -> tuple[list, list]:
  try:
    items, failed = prepare([sample])
    return list(items), list(failed)
  except Exception as e:  # pylint: disable=broad-except  # recorded per sample, the run goes on
    return [], [(sample.id, _reason(e))]


def _serial(samples: Sequence[Any], prepare: PrepareFn, batch_size: int) -> Iterator[Ready]:
  for start in range(0, len(samples), batch_size):
    items, failed = [], []
    for sample in samples[start : start + batch_size]:
      got, bad = _prepare_one(prepare, sample)
      items.extend(got)
      failed.extend(bad)
    yield Ready(items, failed)


def prefetch_batches(
  samples: Sequence[Any],
  prepare: PrepareFn,
  batch_size: int,
  num_workers: int = 2,
  prefetch_batches: int = 2,
  timeout_s: float | None = None,
  in_order: bool = False,
  worker_nice: int = WORKER_NICE,
  worker_kind: str = 'thread',
) -> Iterator[Ready]:
  """Prepared batches of `samples` (objects with an `id`), prepared by `num_workers` threads.

  Args:
    samples: what to prepare; each yielded exactly once, as an item or as a failure record.
    prepare: fn(list of samples) -> (items, [(sample id, reason)]); called with one sample at a time.
    batch_size: items per batch (the last batches may hold fewer).
    num_workers: worker threads; 0 prepares in the calling thread.
    prefetch_batches: batches prepared ahead of the consumer (besides one sample per worker).
    timeout_s: a sample not prepared this long after its worker started it becomes a failure record.
    in_order: every batch is the next `batch_size` prepared items in the order of `samples` (waiting for
      a slow one instead of taking a later one that finished first), so the batches depend on the samples
      alone, not on the threads' timing: what processes that run every batch together need (a mesh
      spanning processes, `runs.check_same_batch`).
    worker_nice: added to each worker's nice value (thread workers: Linux only; 0 leaves the caller's).
    worker_kind: 'thread' (prepare runs in the worker threads) or 'process' (in one process per worker;
      prepare, the samples and what prepare returns must pickle).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_workers < 0 or prefetch_batches < 0:
    raise ValueError(f'num_workers and prefetch_batches must be >= 0, got {num_workers}, {prefetch_batches}')
  if timeout_s is not None and timeout_s <= 0:
    raise ValueError(f'timeout_s must be positive or None, got {timeout_s}')
  if worker_kind not in WORKER_KINDS:
    raise ValueError(f'worker_kind must be one of {WORKER_KINDS}, got {worker_kind!r}')
  if num_workers == 0:
    yield from _serial(samples, prepare, batch_size)
    return
  started: dict[int, float] = {}  # submission number -> when a worker picked it up
  lock = threading.Lock()

  processes = _ProcessWorkers(prepare, worker_nice) if worker_kind == 'process' else None

  def run(number: int, sample):
    with lock:
      started[number] = time.monotonic()
    if processes is not None:
      return processes.prepare(sample)
    return _prepare_one(prepare, sample)

  window = 2 * num_workers + batch_size * prefetch_batches
  pool = concurrent.futures.ThreadPoolExecutor(
    num_workers,
    thread_name_prefix='input_pipeline',
    initializer=_init_worker,
    initargs=(worker_nice if processes is None else 0,),  # a process worker's thread only waits
  )
  pending: collections.OrderedDict[int, tuple[Any, concurrent.futures.Future]] = collections.OrderedDict()
  next_sample = 0
  try:
    while next_sample < len(samples) or pending:
      while next_sample < len(samples) and len(pending) < window:
        s = samples[next_sample]
        pending[next_sample] = (s, pool.submit(run, next_sample, s))
        next_sample += 1
      items: list[Any] = []
      failed: list[Any] = []
      # Take finished samples in submission order until a batch is full; wait only while none is.
      while pending and len(items) < batch_size:
        for number, (sample, future) in list(pending.items()):
          if len(items) >= batch_size:
            break
          if future.done():
            del pending[number]
            got, bad = future.result()
            items.extend(got)
            failed.extend(bad)
          else:
            with lock:
              since = started.get(number)
            if timeout_s is not None and since is not None and time.monotonic() - since > timeout_s:
              del pending[number]
              future.cancel()
              failed.append((sample.id, f'TimeoutError: not prepared within {timeout_s:g} s'))
            elif in_order:
              break  # the batch continues with this sample: wait for it
        if len(items) >= batch_size or not pending:
          break
        if failed and not items and not in_order:
          break  # hand the failures over now; the consumer logs them while the rest decode
        # Top the window up while waiting, so finished samples keep the workers busy.
        while next_sample < len(samples) and len(pending) < window:
          s = samples[next_sample]
          pending[next_sample] = (s, pool.submit(run, next_sample, s))
          next_sample += 1
        concurrent.futures.wait(
          [f for _, f in pending.values()], timeout=_poll(timeout_s), return_when=concurrent.futures.FIRST_COMPLETED
        )
      yield Ready(items, failed)
  finally:
    for _, future in pending.values():
      future.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    if processes is not None:
      processes.close()


def _poll(timeout_s: float | None) -> float | None:
  """How long to block waiting for a sample: until one finishes, or often enough to see timeouts."""
  return None if timeout_s is None else min(max(timeout_s / 4, 0.01), 1.0)
