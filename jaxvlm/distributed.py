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
runs of the input order and the split depends only on (len(items), process count).
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os
from typing import Sequence, TypeVar

import jax

T = TypeVar('T')

_TPU_ENV_VARS = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES', 'MEGASCALE_COORDINATOR_ADDRESS')


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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> ProcessInfo:
  """Starts jax.distributed if this is a multi-process launch (see the module docstring); idempotent.

  Must run before anything touches jax devices. On CPU the cross-process collectives use gloo.
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
        raise ValueError('a multi-process launch needs coordinator, num_processes and process_id together '
                         f'(got {coordinator!r}, {num_processes!r}, {process_id!r})')
      # Only affects the CPU backend; without it CPU computations cannot span processes.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      jax.distributed.initialize(coordinator, num_processes, process_id)
    elif _on_tpu_vm():
      jax.distributed.initialize()
  return ProcessInfo(jax.process_index(), jax.process_count(), jax.process_count() > 1)


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


def process_share(items: Sequence[T], process_index: int | None = None,
                  process_count: int | None = None) -> list[T]:
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
  whole = data[:data.rfind(b'\n') + 1].decode()
  return [json.loads(line) for line in whole.splitlines() if line.strip()]


def merge_results(workdir: str, pattern: str = 'samples.process*.jsonl',
                  out_name: str = 'samples.jsonl') -> list[dict]:
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
        merged[rec['id']] = (rec, path)   # the first record, or a later one after a failure (a retry)
      elif seen[0] != rec and 'error' not in rec:
        raise ValueError(f'sample {rec["id"]!r} differs between {seen[1]} and {path}')
  records = [merged[k][0] for k in sorted(merged)]
  tmp = out_path + '.tmp'
  with open(tmp, 'w') as f:
    for rec in records:
      f.write(json.dumps(rec, sort_keys=True) + '\n')
  os.replace(tmp, out_path)
  return records


def barrier(name: str) -> None:
  """Blocks until every process reaches the barrier `name` (no-op single-process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)

