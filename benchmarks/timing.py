"""Timing shared by the benchmarks: methods taking turns, best of several repeats, wall or CPU clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import contextlib
import dataclasses
import resource
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
