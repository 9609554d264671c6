"""The results contract every experiment follows.

workdir/config.json      the resolved config
workdir/samples.jsonl    one JSON object per finished (or failed) sample, append-only: a rerun reads
                         it, skips what is there and never writes a sample twice
workdir/summary.json/csv aggregate rows, rewritten from samples.jsonl at the end of every run
workdir/*.png            plots
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable

import numpy as np


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path: str, obj: Any) -> None:
  """Atomic write: a kill mid-write never leaves a half file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class SampleLog:
  """Append-only JSON lines keyed by `id`. A torn last line (the run was killed mid-write) is cut off
  on open, so the file always holds whole records."""

  def __init__(self, path: str):
    self.path = path
    self._records: dict[str, dict] = {}
    if os.path.exists(path):
      self._load()

  def _load(self) -> None:
    with open(self.path, 'rb') as f:
      data = f.read()
    whole = data[:data.rfind(b'\n') + 1]
    if len(whole) != len(data):
      with open(self.path, 'r+b') as f:
        f.truncate(len(whole))
    for line in whole.decode().splitlines():
      if line.strip():
        rec = json.loads(line)
        self._records.setdefault(rec['id'], rec)

  def __contains__(self, sample_id: str) -> bool:
    return sample_id in self._records

  def __len__(self) -> int:
    return len(self._records)

  def append(self, record: dict) -> None:
    if record['id'] in self._records:
      raise ValueError(f'sample {record["id"]!r} is already in {self.path}')
    with open(self.path, 'a') as f:
      f.write(json.dumps(_jsonable(record), sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())
    self._records[record['id']] = record

  def records(self) -> list[dict]:
    return list(self._records.values())


def write_summary(workdir: str, summary: dict, rows: Iterable[dict]) -> None:
  """summary.json (the dict, with `rows`) and summary.csv (the rows)."""
  rows = [_jsonable(r) for r in rows]
  write_json(os.path.join(workdir, 'summary.json'), {**summary, 'rows': rows})
  fields = list(dict.fromkeys(k for r in rows for k in r))
  tmp = os.path.join(workdir, 'summary.csv.tmp')
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, os.path.join(workdir, 'summary.csv'))


def prepare_workdir(workdir: str, config) -> None:
  """Creates workdir and writes config.json (the config as a plain dict)."""
  os.makedirs(workdir, exist_ok=True)
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
