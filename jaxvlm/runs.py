"""The results contract every experiment follows, and the sample path they share.

Results:
workdir/config.json      the resolved config
workdir/samples.jsonl    one JSON object per finished (or failed) sample, append-only: a rerun reads
                         it, skips what is there and never writes a sample twice
workdir/summary.json/csv aggregate rows, rewritten from samples.jsonl at the end of every run
workdir/*.png            plots

Samples: the config's model and benchmark (`load_model`, `load_samples`), decoding + preprocessing +
prompting with per-sample failure capture (`prepare`), device-ready batches (`collate`, `place_batch`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import checkpoints, data, frame_folders, prompts, sharding
from jaxvlm.data import synthetic
from jaxvlm.prompts import TokenLayout


def jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path: str, obj: Any) -> None:
  """Atomic write: a kill mid-write never leaves a half file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(jsonable(obj), f, indent=2, sort_keys=True)
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
      f.write(json.dumps(jsonable(record), sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())
    self._records[record['id']] = record

  def records(self) -> list[dict]:
    return list(self._records.values())


def write_summary(workdir: str, summary: dict, rows: Iterable[dict]) -> None:
  """summary.json (the dict, with `rows`) and summary.csv (the rows)."""
  rows = [jsonable(r) for r in rows]
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


# ---------------------------------------------------------------- samples

def csv_list(value) -> list[str]:
  """'a,b' or ('a', 'b') -> ['a', 'b']; '' -> []."""
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return [str(v) for v in value]


def load_model(config):
  return checkpoints.load_pretrained(config.checkpoint, dtype=jnp.dtype(config.dtype))


def load_samples(config, workdir: str):
  """-> (samples (at most config.max_samples), skipped [(id, reason)]). The synthetic benchmark is
  generated under workdir/synthetic on first use (deterministic by seed)."""
  kwargs = dict(config.data)
  if config.benchmark == 'synthetic':
    root = os.path.join(workdir, 'synthetic')
    kwargs = {'ann': synthetic.ensure(root, **kwargs)}
  loaded = data.load_benchmark(config.benchmark, **kwargs)
  samples = interleave_tasks(loaded.samples)
  samples = samples if config.max_samples < 0 else samples[:config.max_samples]
  return samples, list(loaded.skipped)


def interleave_tasks(samples: Sequence[data.VideoQASample]) -> list[data.VideoQASample]:
  """Round-robin over tasks (each task keeps its order), so any prefix (max_samples) covers every task."""
  by_task: dict[str, list] = {}
  for s in samples:
    by_task.setdefault(s.task, []).append(s)
  queues = list(by_task.values())
  return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
  for i in range(0, len(items), size):
    yield items[i:i + size]


@dataclasses.dataclass(frozen=True)
class Prepared:
  sample: data.VideoQASample
  prompt: prompts.Prompt
  pixels: np.ndarray  # [F, H, W, C]


def prepare(samples: Sequence[data.VideoQASample], processor, config
            ) -> tuple[list[Prepared], list[tuple[str, str]]]:
  """Decodes, preprocesses and prompts each sample; a failing one becomes (id, reason), never a crash."""
  ok, failed = [], []
  for s in samples:
    try:
      if not s.options:
        raise ValueError('empty option list')
      if s.answer is None or not 0 <= s.answer < len(s.options):
        raise ValueError(f'answer {s.answer} outside the {len(s.options)} options')
      frames = frame_folders.sample_frames_of(s, config.num_frames)  # a video file or a frame folder
      pixels = processor.preprocess(frames.pixels)
      ok.append(Prepared(s, prompts.build_prompt(processor, s.question, s.options, config.num_frames), pixels))
    except Exception as e:  # pylint: disable=broad-except  # recorded per sample, the run goes on
      failed.append((s.id, f'{type(e).__name__}: {e}'))
  return ok, failed


@dataclasses.dataclass(frozen=True)
class ModelBatch:
  """Device-ready batch: input_ids [B, S], pixels [B, F, H, W, C], layout [B, S], answer_index [B],
  option_ids [O] (letters A.. up to the largest option count in the batch)."""
  input_ids: jnp.ndarray
  pixels: jnp.ndarray
  layout: TokenLayout
  answer_index: jnp.ndarray
  option_ids: jnp.ndarray


def batch_multiple(mesh) -> int:
  """Batches are padded to a multiple of the mesh's sample axes (data x fsdp)."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def collate(prepared: Sequence[Prepared], processor, multiple: int = 1) -> ModelBatch:
  """Pads the batch to a multiple of `multiple` rows by repeating the last sample (its extra rows are
  computed and ignored: callers read the first len(prepared) rows)."""
  rows = list(prepared) + [prepared[-1]] * (-len(prepared) % multiple)
  pad_id = processor.tokenizer.pad_token_id or 0
  pb = prompts.collate([p.prompt for p in rows], pad_id)
  n_options = max(len(p.sample.options) for p in rows)
  return ModelBatch(jnp.asarray(pb.input_ids), jnp.asarray(np.stack([p.pixels for p in rows])),
                    TokenLayout(*(jnp.asarray(x) for x in (pb.layout.group, pb.layout.frame,
                                                           pb.layout.positions, pb.layout.valid))),
                    jnp.asarray(pb.answer_index), jnp.asarray(processor.option_letter_ids(n_options)))


def place_batch(batch: ModelBatch, mesh) -> ModelBatch:
  """Samples split over the mesh's sample axes; option ids replicated."""
  placed = sharding.shard_batch((batch.input_ids, batch.pixels, batch.layout, batch.answer_index), mesh)
  return ModelBatch(*placed, jax.device_put(batch.option_ids, sharding.replicated(mesh)))
