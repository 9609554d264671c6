"""Enough threads in XLA's CPU client for programs that span several CPU devices (`PJRT_NPROC`).

Why: the CPU client runs each local device's share of a multi-device program, and the dispatch of the
next program to each device, on one thread pool of max(cores, local CPU devices) threads (the env vars
PJRT_NPROC / NPROC replace the core count), and lets at most 32 programs be in flight per device. When
the host enqueues programs faster than they run (the sweep engine does: many small steps, no host sync),
one device can lag until its in-flight limit is reached; its next dispatch then waits for a program of
its own to finish, inside a pool thread, while the other devices' shares of the program being launched
hold the remaining threads, waiting for it in a collective. With one thread per device nothing is left
to run the lagging device's queue: every thread waits forever (gdb: three threads in
`GlooCommunicator::AllToAll`, the fourth in `Semaphore::ScopedAcquire`; in one process: an all-to-all
rendezvous "waiting for 8 threads"). fsdp x tensor meshes meet it first, since their attention head
reshapes are all-to-alls. `python -m tests.test_cpu_threads` reproduces it in seconds (the thread counts
it needs: docs/results.md).

Two threads per device are enough: at most one dispatch per device waits for its in-flight slot and at
most (devices - 1) shares wait in the collective, which leaves a thread to drain the lagging queue. Only
CPU devices matter: a TPU/GPU program's shares do not run on this pool.

`jaxvlm/__init__.py` calls `ensure()` on import, before anything creates a backend (the pool is sized
once, when JAX first makes its CPU client); a value set by the user is never changed.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Mapping, MutableMapping

_DEVICE_COUNT_FLAG = re.compile(r'--xla_force_host_platform_device_count=(\d+)')
_THREAD_VARS = ('PJRT_NPROC', 'NPROC')  # read by XLA in this order


def local_cpu_devices(environ: Mapping[str, str] = os.environ) -> int:
  """How many CPU devices JAX will create in this process: JAX_NUM_CPU_DEVICES (jax_num_cpu_devices)
  when set and >= 0, else XLA_FLAGS' --xla_force_host_platform_device_count, else 1."""
  num = environ.get('JAX_NUM_CPU_DEVICES', '').strip()
  if num.lstrip('-').isdigit() and int(num) >= 0:
    return int(num)
  found = _DEVICE_COUNT_FLAG.findall(environ.get('XLA_FLAGS', ''))
  return int(found[-1]) if found else 1  # XLA takes the last occurrence of a flag


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def pool_threads(environ: Mapping[str, str] = os.environ) -> int:
  """The CPU client's pool size for this environment (XLA's rule: max(PJRT_NPROC or NPROC or cores,
  local CPU devices))."""
  for var in _THREAD_VARS:
    value = environ.get(var, '').strip()
    if value.isdigit():
      return max(int(value), local_cpu_devices(environ))
  return max(_cores(), local_cpu_devices(environ))


def needed_threads(devices: int) -> int:
  """Pool threads that keep `devices` local CPU devices' collectives from starving (see the docstring)."""
  return 2 * devices if devices > 1 else 1


def ensure(environ: MutableMapping[str, str] = os.environ) -> int | None:
  """Sets PJRT_NPROC so the CPU client's pool has needed_threads(local CPU devices), when it would
  have fewer and neither PJRT_NPROC nor NPROC is set. Returns the value set (None: nothing to do)."""
  if any(environ.get(var, '').strip() for var in _THREAD_VARS):
    return None
  want = needed_threads(local_cpu_devices(environ))
  if pool_threads(environ) >= want:
    return None
  environ['PJRT_NPROC'] = str(want)
  return want


def warn_if_short(local_devices: int, environ: Mapping[str, str] = os.environ) -> bool:
  """Logs a warning (and returns True) when a mesh puts `local_devices` CPU devices of this process
  into one program and the pool is too small for them, e.g. a user's PJRT_NPROC, or JAX's CPU client
  made before jaxvlm was imported with another device count."""
  have, want = pool_threads(environ), needed_threads(local_devices)
  if have >= want:
    return False
  logging.warning(
    'XLA CPU client: %d pool threads for a mesh of %d local CPU devices; collectives can deadlock with '
    'fewer than %d (set PJRT_NPROC=%d before JAX starts; see jaxvlm/cpu_threads.py)',
    have,
    local_devices,
    want,
    want,
  )
  return True
