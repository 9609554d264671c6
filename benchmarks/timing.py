"""Timing shared by the benchmarks: methods taking turns, best of several repeats, wall or CPU clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
