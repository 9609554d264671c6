"""Background input pipeline: prepare (decode, preprocess, prompt) samples in worker threads while the
model computes on earlier batches.

`prefetch_batches(samples, prepare, batch_size, num_workers)` yields `Ready(items, failed)` batches.
Workers run `prepare([sample]) -> (items, failed)` (the experiments' `prepare` signature) on one
sample each, up to `num_workers * 2 + batch_size * prefetch_batches` samples ahead of the consumer, so
memory stays bounded. A batch takes the finished samples in submission order: when everything is fast
the batches are exactly the in-order chunks; a slow video is passed over and joins a later batch,
so it never holds back the samples after it. An exception escaping `prepare` and a sample slower than
`timeout_s` become failure records `(sample id, reason)`, yielded with the next batch; the run goes on.

Why threads: decoding (libav), the RGB conversion (libswscale), the resampler's matrix products
(BLAS) and numpy's elementwise work all release the GIL, and JAX releases it while a computation
runs, so threads overlap with each other and with the model without pickling frames between
processes. A timed-out sample's thread cannot be stopped: it finishes its work in the background and
its result is dropped, and the pool runs one worker short until it does.

Workers run at a lower scheduling priority (`WORKER_NICE`, Linux) than the thread that feeds the model:
when the cores are all busy the model's computation, the critical path, keeps its core and the workers
take what is left; on an idle core the priority changes nothing. Each worker resizes its frames in its
own thread (`resample.set_thread_default(1)`): the workers already spread the samples over the cores.

`num_workers=0` prepares each sample in the calling thread, in order (no overlap; for debugging and as
the serial baseline of benchmarks/input_overlap.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
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
    worker_nice: added to each worker thread's nice value (Linux; 0 leaves it as the caller's).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if num_workers < 0 or prefetch_batches < 0:
    raise ValueError(f'num_workers and prefetch_batches must be >= 0, got {num_workers}, {prefetch_batches}')
  if timeout_s is not None and timeout_s <= 0:
    raise ValueError(f'timeout_s must be positive or None, got {timeout_s}')
  if num_workers == 0:
    yield from _serial(samples, prepare, batch_size)
    return
  started: dict[int, float] = {}  # submission number -> when a worker picked it up
  lock = threading.Lock()

  def run(number: int, sample):
    with lock:
      started[number] = time.monotonic()
    return _prepare_one(prepare, sample)

  window = 2 * num_workers + batch_size * prefetch_batches
  pool = concurrent.futures.ThreadPoolExecutor(
    num_workers, thread_name_prefix='input_pipeline', initializer=_init_worker, initargs=(worker_nice,)
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


def _poll(timeout_s: float | None) -> float | None:
  """How long to block waiting for a sample: until one finishes, or often enough to see timeouts."""
  return None if timeout_s is None else min(max(timeout_s / 4, 0.01), 1.0)
