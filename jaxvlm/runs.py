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

from jaxvlm import checkpoints, data, distributed, prompts, sharding, video
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


class RunLog:
  """This process's part in the sample records of a run on `mesh` (one or many processes).

  Local mesh, several processes: each evaluates its `process_share` and appends to its own
  samples.processNNNNN.jsonl; process 0 merges them. Mesh spanning the processes: every process
  evaluates every sample (together), only process 0 reads and writes samples.jsonl, and the ids to
  skip on a resume are process 0's, sent to all. One process: samples.jsonl, as always.
  """

  def __init__(self, workdir: str, mesh):
    self.workdir, self.mesh = workdir, mesh
    self.writes = distributed.writes_results(mesh)
    self.log = SampleLog(os.path.join(workdir, distributed.sample_log_name(mesh))) if self.writes else None

  def record_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
    """Annotation failures, recorded once (by process 0)."""
    if distributed.is_main():
      for sample_id, reason in skipped:
        if sample_id not in self.log:
          self.log.append({'id': sample_id, 'error': f'annotation: {reason}'})

  def todo(self, samples: Sequence[Any]) -> list:
    """The samples this process evaluates that are not done yet (the same list on every process of a
    spanning mesh)."""
    done = distributed.done_ids(self.mesh, [r['id'] for r in self.log.records()] if self.writes else [])
    return [s for s in distributed.work_share(samples, self.mesh) if s.id not in done]

  def append(self, record: dict) -> None:
    if self.writes:
      self.log.append(record)

  def records(self) -> list[dict]:
    """After every process is done (a barrier): all records on process 0, [] elsewhere."""
    distributed.barrier('samples')
    if not distributed.is_main():
      return []
    if jax.process_count() > 1 and not distributed.mesh_spans_processes(self.mesh):
      return distributed.merge_results(self.workdir)
    return SampleLog(os.path.join(self.workdir, 'samples.jsonl')).records()


# ---------------------------------------------------------------- samples

def csv_list(value) -> list[str]:
  """'a,b' or ('a', 'b') -> ['a', 'b']; '' -> []."""
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return [str(v) for v in value]


def load_model(config, mesh=None):
  """(model, params, processor) of config.checkpoint. With `mesh` (`sharding.mesh_from_config`) the
  params are read shard by shard straight onto it, each process the blocks of its own devices, in
  config.param_dtype; a checkpoint that fails to load on any process fails on every process."""
  if mesh is None:
    return checkpoints.load_pretrained(config.checkpoint, dtype=jnp.dtype(config.dtype))
  param_dtype = jnp.dtype(config.get('param_dtype', 'float32'))
  return distributed.collective(f'load {config.checkpoint}', lambda: checkpoints.load_pretrained(
      config.checkpoint, dtype=jnp.dtype(config.dtype), param_dtype=param_dtype, mesh=mesh))


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
      frames = video.sample_frames(s.video, config.num_frames, start_s=s.start_s, end_s=s.end_s)
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
  """Samples split over the mesh's sample axes; option ids replicated. On a mesh spanning processes
  (every process passes the same whole batch) the prompt-side int arrays (ids, layout, answer slots:
  [B, S] at most) are replicated too, so the sweeps' host-side planning reads them on every process;
  the pixels stay split."""
  if not distributed.mesh_spans_processes(mesh):
    placed = sharding.shard_batch((batch.input_ids, batch.pixels, batch.layout, batch.answer_index), mesh)
    return ModelBatch(*placed, jax.device_put(batch.option_ids, sharding.replicated(mesh)))
  rep = lambda tree: jax.tree.map(lambda x: sharding.put(x, sharding.replicated(mesh)), tree)
  return ModelBatch(rep(batch.input_ids), sharding.shard_batch(batch.pixels, mesh), rep(batch.layout),
                    rep(batch.answer_index), rep(batch.option_ids))
