"""Timing shared by the benchmarks: methods taking turns, best of several repeats, wall or CPU clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import contextlib
import dataclasses
import os
import resource
import subprocess
import tempfile
import time
from typing import Any


def clock(name: str) -> Callable[[], float]:
  """'wall': elapsed seconds; 'cpu': CPU seconds of this process, all its threads (steadier on a
  machine other jobs share, but blind to work a method moves onto otherwise idle cores)."""
  if name not in ('wall', 'cpu'):
    raise ValueError(f"clock must be 'wall' or 'cpu', got {name!r}")
  return time.process_time if name == 'cpu' else time.perf_counter


def best_times(
  fns: Mapping[str, Callable[[], Any]], repeats: int, clock_name: str = 'wall'
) -> tuple[dict[str, float], dict[str, Any]]:
  """Best of `repeats` seconds per method, the methods taking turns (so a busy spell on a shared
  machine hits all of them, not the one that happened to run then), and each method's last result."""
  now = clock(clock_name)
  best = {name: float('inf') for name in fns}
  results = {}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = now()
      results[name] = fn()
      best[name] = min(best[name], now() - start)
  return best, results


@dataclasses.dataclass
class Took:
  """Wall seconds, and CPU seconds (user + system, every thread) of the same stretch."""

  wall: float = 0.0
  cpu: float = 0.0

  def __add__(self, other: Took) -> Took:
    return Took(self.wall + other.wall, self.cpu + other.cpu)


def children_cpu() -> float:
  """CPU seconds of this process's finished (waited-for) child processes."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def took(cpu_clock: Callable[[], float] = time.process_time) -> Iterator[Took]:
  """`with took() as t:` fills t with the block's wall and CPU seconds when the block ends. cpu_clock:
  this process (default) or `children_cpu` for a block that runs a subprocess to its end."""
  result = Took()
  start, cpu = time.perf_counter(), cpu_clock()
  try:
    yield result
  finally:
    result.wall, result.cpu = time.perf_counter() - start, cpu_clock() - cpu


def _session_cpu(session: int, ticks: float) -> dict[int, float]:
  """CPU seconds so far (user + system) of each live process of `session` (Linux /proc)."""
  out = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()  # after the command name, which may hold spaces
    except OSError:  # ended meanwhile
      continue
    if int(fields[3]) == session:  # field 6 of stat(5); utime and stime are fields 14, 15
      out[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
  return out


def run_process_tree(command: Sequence[str], poll_s: float = 0.05, **popen_kwargs) -> tuple[int, str, Took]:
  """Runs `command` to its end -> (return code, stderr, Took) where the CPU seconds are those of every
  process it starts, waited for or not (worker processes of a forkserver are children of the server,
  which nobody waits for, so `children_cpu` misses them). Linux: the command runs in a session of its
  own and each of its processes' CPU time is read from /proc every `poll_s` (a process's last `poll_s`
  is missed); elsewhere the CPU seconds are `children_cpu`'s."""
  if not os.path.isdir('/proc'):
    with took(children_cpu) as t:
      done = subprocess.run(command, capture_output=True, text=True, check=False, **popen_kwargs)
    return done.returncode, done.stderr, t
  ticks = os.sysconf('SC_CLK_TCK')
  seen: dict[int, float] = {}
  with tempfile.TemporaryFile('w+') as stderr, took() as t:
    process = subprocess.Popen(
      command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True, **popen_kwargs
    )
    while process.poll() is None:
      seen.update(_session_cpu(process.pid, ticks))
      time.sleep(poll_s)
    stderr.seek(0)
    errors = stderr.read()
  t.cpu = sum(seen.values())
  return process.returncode, errors, t
