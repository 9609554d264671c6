"""Multi-host runs: start jax.distributed when launched on several hosts, split the samples between
processes, and merge the per-process result files on process 0.

Launch modes of `initialize`:
  * explicit arguments, or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (e.g. two local processes with coordinator 127.0.0.1:PORT);
  * a Cloud TPU VM / GKE TPU slice (libtpu installed and TPU devices present, or the TPU worker
    environment variables set): jax.distributed.initialize() discovers the slice itself;
  * anything else: single process, nothing to do.

Sharing: `process_share` gives each process one contiguous block of the item list (block sizes differ
by at most one, earlier processes take the extra items), so per-process result files are contiguous
runs of the input order and the split depends only on (len(items), process count). On a mesh spanning
every process (`--config.mesh.devices=global`) all processes run every batch together instead
(`work_share`), and only process 0 writes results.

Faults: barriers and `agree` go through the coordination service's key-value store, polled with a
timeout, never through a device collective. A process that fails posts its error there (`report_error`,
`guarded`), so every other process stops at its next barrier with an error naming it; a process that
vanished is named when the barrier times out.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import time
from typing import Any, Callable, Sequence, TypeVar

import jax

T = TypeVar('T')

_TPU_ENV_VARS = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES', 'MEGASCALE_COORDINATOR_ADDRESS')
# Seconds a barrier waits for the other processes (JAXVLM_BARRIER_TIMEOUT_S overrides): long enough for
# the slowest step between two barriers of a real run (loading 72B, a long sweep), short of forever.
DEFAULT_BARRIER_TIMEOUT_S = 3600.0
# Seconds jax.distributed.initialize waits for every process to join (JAXVLM_INIT_TIMEOUT_S overrides).
DEFAULT_INIT_TIMEOUT_S = 300
_KV = 'jaxvlm'


class DistributedError(RuntimeError):
  """A multi-process run cannot go on; the message names the process(es) involved and why."""


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  process_index: int
  process_count: int
  multi_process: bool


def _on_tpu_vm() -> bool:
  if any(os.environ.get(v) for v in _TPU_ENV_VARS):
    return True
  has_chips = bool(glob.glob('/dev/accel*')) or bool(glob.glob('/dev/vfio/[0-9]*'))
  return has_chips and importlib.util.find_spec('libtpu') is not None


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int | None = None,
) -> ProcessInfo:
  """Starts jax.distributed if this is a multi-process launch (see the module docstring); idempotent.

  Must run before anything touches jax devices. On CPU the cross-process collectives use gloo. Joining
  waits at most `timeout_s` (default JAXVLM_INIT_TIMEOUT_S or 300) for every process, then raises a
  `DistributedError`; so does a launch whose processes disagree on the process count.
  """
  coordinator = coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if not jax.distributed.is_initialized():
    if explicit:
      if coordinator is None or num_processes is None or process_id is None:
        raise ValueError(
          'a multi-process launch needs coordinator, num_processes and process_id together '
          f'(got {coordinator!r}, {num_processes!r}, {process_id!r})'
        )
      if not 0 <= process_id < num_processes:
        raise DistributedError(
          f'process_id {process_id} is outside [0, {num_processes}) (JAX_PROCESS_ID / JAX_NUM_PROCESSES)'
        )
      # Only affects the CPU backend; without it CPU computations cannot span processes.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      timeout_s = int(timeout_s or os.environ.get('JAXVLM_INIT_TIMEOUT_S') or DEFAULT_INIT_TIMEOUT_S)
      try:
        jax.distributed.initialize(
          coordinator,
          num_processes,
          process_id,
          initialization_timeout=timeout_s,
          heartbeat_timeout_seconds=max(10, min(100, timeout_s)),
          shutdown_timeout_seconds=max(5, min(60, timeout_s)),
        )
      except Exception as e:  # pylint: disable=broad-except  # jax raises bare RuntimeErrors/XlaRuntimeErrors
        raise DistributedError(
          f'process {process_id} could not join a run of {num_processes} processes at {coordinator} within '
          f'{timeout_s} s: are all {num_processes} processes started, with the same JAX_NUM_PROCESSES and '
          f'distinct JAX_PROCESS_ID? ({type(e).__name__}: {e})'
        ) from e
      _check_process_count(num_processes)
    elif _on_tpu_vm():
      jax.distributed.initialize()
  return ProcessInfo(jax.process_index(), jax.process_count(), jax.process_count() > 1)


def _check_process_count(num_processes: int) -> None:
  """Every process posts the process count it was launched with; any disagreement fails everywhere."""
  counts = agree('process_count', value=num_processes)
  if len(set(counts.values())) > 1:
    raise DistributedError(
      'processes were launched with different process counts: '
      + ', '.join(f'process {p}: {n}' for p, n in sorted(counts.items()))
    )


def is_main() -> bool:
  """True on process 0, the one that writes summaries and plots."""
  return jax.process_index() == 0


def share_bounds(num_items: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of process `process_index`'s contiguous block of `num_items`."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} outside [0, {process_count})')
  base, extra = divmod(num_items, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def process_share(items: Sequence[T], process_index: int | None = None, process_count: int | None = None) -> list[T]:
  """This process's contiguous block of `items` (defaults: jax's process index and count)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  start, stop = share_bounds(len(items), index, count)
  return list(items[start:stop])


def process_filename(stem: str, ext: str = '.jsonl', process_index: int | None = None) -> str:
  """'samples' -> 'samples.process00003.jsonl': one result file per process (matches merge_results)."""
  index = jax.process_index() if process_index is None else process_index
  return f'{stem}.process{index:05d}{ext}'


def _read_records(path: str) -> list[dict]:
  """Whole JSON lines of `path` (a torn last line from a killed writer is ignored)."""
  with open(path, 'rb') as f:
    data = f.read()
  whole = data[: data.rfind(b'\n') + 1].decode()
  return [json.loads(line) for line in whole.splitlines() if line.strip()]


def merge_results(workdir: str, pattern: str = 'samples.process*.jsonl', out_name: str = 'samples.jsonl') -> list[dict]:
  """Process 0 merges the per-process JSON-lines files matching `pattern` in workdir into `out_name`.

  Records are keyed by 'id' and written sorted by id (string order), one per line with sorted keys,
  so the merged file is byte-identical however the work was split. A record already in `out_name`
  (an earlier run) is kept; the same id with different content in two files is an error, except that
  a failure record ({'id', 'error'}) gives way to a later record of the id (a retry; see runs.SampleLog).
  Returns the merged records.
  """
  out_path = os.path.join(workdir, out_name)
  paths = sorted(p for p in glob.glob(os.path.join(workdir, pattern)) if p != out_path)
  if os.path.exists(out_path):
    paths.insert(0, out_path)
  merged: dict[str, tuple[dict, str]] = {}
  for path in paths:
    for rec in _read_records(path):
      seen = merged.get(rec['id'])
      if seen is None or 'error' in seen[0]:
        merged[rec['id']] = (rec, path)  # the first record, or a later one after a failure (a retry)
      elif seen[0] != rec and 'error' not in rec:
        raise ValueError(f'sample {rec["id"]!r} differs between {seen[1]} and {path}')
  records = [merged[k][0] for k in sorted(merged)]
  tmp = out_path + '.tmp'
  with open(tmp, 'w') as f:
    for rec in records:
      f.write(json.dumps(rec, sort_keys=True) + '\n')
  os.replace(tmp, out_path)
  return records


# ---------------------------------------------------------------------------------------------------
# Barriers and agreement through the coordination service (never a device collective: a dead process
# cannot make them hang).


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  client = jax_distributed.global_state.client
  if client is None:
    raise DistributedError('jax.distributed is not initialized (call distributed.initialize first)')
  return client


_uses: collections.Counter = collections.Counter()


def _round_key(name: str) -> str:
  """Every process calls its barriers in the same order, so the n-th use of `name` has one key."""
  _uses[name] += 1
  return f'{_KV}/sync/{name}/{_uses[name]}'


def _timeout(timeout_s: float | None) -> float:
  return float(
    timeout_s if timeout_s is not None else os.environ.get('JAXVLM_BARRIER_TIMEOUT_S', DEFAULT_BARRIER_TIMEOUT_S)
  )


def report_error(message: str) -> None:
  """Posts this process's fatal error, so other processes waiting at a barrier stop naming it."""
  if jax.process_count() > 1:
    try:
      _client().key_value_set(f'{_KV}/error/{jax.process_index()}', message[:4000], allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  # the coordinator may be gone already
      pass


def reported_errors() -> dict[int, str]:
  """process index -> the error it posted with `report_error` (other processes only)."""
  try:
    entries = _client().key_value_dir_get(f'{_KV}/error/')
  except Exception:  # pylint: disable=broad-except
    return {}
  errors = {int(k.rsplit('/', 1)[-1]): v for k, v in entries}
  errors.pop(jax.process_index(), None)
  return errors


def _describe(errors: dict[int, str]) -> str:
  return '; '.join(f'process {p} failed: {m}' for p, m in sorted(errors.items()))


def agree(name: str, value: Any = None, error: str | None = None, timeout_s: float | None = None) -> dict[int, Any]:
  """Every process posts `value` (json) or its `error` under `name` and waits for all the others.

  Returns {process index: value}. Raises `DistributedError` on every process if any process posted an
  error (naming each, with its message), reported a fatal error, or did not arrive within `timeout_s`
  (naming the missing ones). Single-process: {0: value}, or the error raised here.
  """
  me, count = jax.process_index(), jax.process_count()
  if count == 1:
    if error is not None:
      raise DistributedError(f'{name}: process 0 failed: {error}')
    return {0: value}
  client, key, timeout = _client(), _round_key(name), _timeout(timeout_s)
  post = {'error': error} if error is not None else {'value': value}
  try:
    client.key_value_set(f'{key}/{me}', json.dumps(post))
  except Exception as e:  # pylint: disable=broad-except
    raise DistributedError(f'{name}: cannot reach the coordinator (process 0): {e}') from e
  # A failing process waits (briefly) for the others to arrive, so that they read its error before it
  # exits: when process 0 exits, the key-value store goes with it.
  deadline = time.monotonic() + (min(timeout, 60.0) if error is not None else timeout)
  pause = 0.01
  while True:
    try:
      posted = {int(k.rsplit('/', 1)[-1]): json.loads(v) for k, v in client.key_value_dir_get(key + '/')}
    except Exception as e:  # pylint: disable=broad-except
      raise DistributedError(f'{name}: lost the coordinator (process 0) while waiting: {e}') from e
    failed = {p: v['error'] for p, v in posted.items() if 'error' in v}
    if len(posted) == count or (failed and error is None):
      if failed:
        raise DistributedError(f'{name}: {_describe(failed)}')
      return {p: v['value'] for p, v in sorted(posted.items())}
    errors = reported_errors()
    if errors and error is None:
      raise DistributedError(f'{name}: {_describe(errors)}')
    if time.monotonic() > deadline:
      if error is not None:
        raise DistributedError(f'{name}: {_describe(failed)}')
      missing = sorted(set(range(count)) - set(posted))
      raise DistributedError(
        f'{name}: process(es) {", ".join(map(str, missing))} of {count} did not arrive within {timeout:g} s '
        f'(died, hung, or took another code path)'
      )
    time.sleep(pause)
    pause = min(pause * 2, 0.5)


def barrier(name: str, timeout_s: float | None = None) -> None:
  """Blocks until every process reaches the barrier `name` (no-op single-process); raises
  `DistributedError` naming the process(es) that failed or did not arrive within `timeout_s`."""
  if jax.process_count() > 1:
    agree(name, timeout_s=timeout_s)


def collective(name: str, fn: Callable[[], T], timeout_s: float | None = None) -> T:
  """Runs `fn` on every process and returns its result where it succeeded on all of them; if it raised on
  any process, every process raises `DistributedError` naming the failing process(es) and their errors
  (the failing process chains its own exception). E.g. loading a checkpoint missing on one host."""
  try:
    out = fn()
  except Exception as e:  # pylint: disable=broad-except
    message = f'{type(e).__name__}: {e}'
    if jax.process_count() == 1:
      raise
    try:
      agree(name, error=message, timeout_s=timeout_s)
    except DistributedError as everyone:
      raise everyone from e
    raise  # unreachable: agree raises when an error was posted
  agree(name, timeout_s=timeout_s)
  return out


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
  """Decorator for an experiment's run(): an exception is posted with `report_error` before it
  propagates, so the other processes stop at their next barrier instead of waiting for this one."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except BaseException as e:
      report_error(f'{type(e).__name__}: {e}')
      raise

  return call


# ---------------------------------------------------------------------------------------------------
# Work and results on a mesh that spans every process.


def mesh_spans_processes(mesh) -> bool:
  """True when `mesh` holds devices of more than one process (`--config.mesh.devices=global`)."""
  return len({d.process_index for d in mesh.devices.flat}) > 1


def work_share(items: Sequence[T], mesh) -> list[T]:
  """The items this process evaluates: all of them when `mesh` spans the processes (they run every
  batch together), else its `process_share`."""
  return list(items) if mesh_spans_processes(mesh) else process_share(items)


def writes_results(mesh) -> bool:
  """Whether this process writes sample records: every process for its own share on a local mesh,
  only process 0 on a mesh spanning the processes (every process computes the same records)."""
  return is_main() or not mesh_spans_processes(mesh)


def sample_log_name(mesh, stem: str = 'samples') -> str:
  """The sample log this process appends to: per-process files for local meshes of a multi-process run
  (merged by `merge_results`), else the one `samples.jsonl`."""
  if jax.process_count() > 1 and not mesh_spans_processes(mesh):
    return process_filename(stem)
  return stem + '.jsonl'


def broadcast_json(value: Any, name: str = 'broadcast', timeout_s: float | None = None) -> Any:
  """Process 0's `value` (json-serialisable) on every process, e.g. the ids already done in a resumed
  run's log, which only process 0 reads (workdirs need not be shared between hosts)."""
  if jax.process_count() == 1:
    return value
  return agree(name, value=value if is_main() else None, timeout_s=timeout_s)[0]


def done_ids(mesh, ids: Sequence[str]) -> set[str]:
  """The ids a resumed run skips: this process's own log's on a local mesh; process 0's log's, sent to
  every process, on a mesh spanning the processes (they must all skip the same samples)."""
  if mesh_spans_processes(mesh):
    return set(broadcast_json(sorted(ids) if is_main() else [], name='done ids'))
  return set(ids)
