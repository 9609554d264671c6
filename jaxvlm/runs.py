"""The results contract every experiment follows, and the sample path they share.

Results:
workdir/config.json      the resolved config
workdir/run.json         the binding: experiment, fingerprint of the result-affecting fields, the
                         fields that may differ on resume (`prepare_workdir`)
workdir/.lock            held while a run writes (`WorkdirLock`): who holds it (host, pid, command)
workdir/samples.jsonl    one JSON object per finished (or failed) sample, append-only: a rerun reads
                         it, skips what is there and never writes a sample twice; a failed sample
                         ({'id', 'error'}) is retried by a rerun (config.retry_failures) and its new
                         record supersedes the failure
workdir/summary.json/csv aggregate rows, rewritten from samples.jsonl at the end of every run
workdir/*.png            plots

A workdir is bound to the config that wrote it: a rerun whose result-affecting fields differ (the
spec of each experiment says which fields may differ: batch size, mesh, max_samples, ...) refuses,
naming the fields, unless config.fresh=True asks to discard the results there first.

Samples: the config's model and benchmark (`load_model`, `load_samples`), decoding + preprocessing +
prompting with per-sample failure capture (`prepare`), device-ready batches (`collate`, `place_batch`).
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxvlm import (
  benchmark_scores,
  checkpoints,
  config_checks,
  data,
  distributed,
  frame_folders,
  input_pipeline,
  lmms_eval_format,
  prompts,
  sharding,
)
from jaxvlm.data import synthetic
from jaxvlm.prompts import TokenLayout
from jaxvlm.qwen2_5_vl_processor import Qwen25VLProcessor


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


def is_failure(record: dict) -> bool:
  return 'error' in record


class SampleLog:
  """Append-only JSON lines keyed by `id`. A torn last line (the run was killed mid-write) is cut off
  on open, so the file always holds whole records.

  A failure record ({'id', 'error'}) may be superseded: a later line with the same id replaces it
  (a retry), so `records()` holds each id's latest outcome. A finished record is final.
  retry_failures: whether `done(id)` counts a failed id as done (False: failures are kept as they are).
  """

  def __init__(self, path: str, retry_failures: bool = True):
    self.path = path
    self.retry_failures = retry_failures
    self._records: dict[str, dict] = {}
    if os.path.exists(path):
      self._load()

  def _load(self) -> None:
    with open(self.path, 'rb') as f:
      data = f.read()
    whole = data[: data.rfind(b'\n') + 1]
    if len(whole) != len(data):
      with open(self.path, 'r+b') as f:
        f.truncate(len(whole))
    for line in whole.decode().splitlines():
      if line.strip():
        rec = json.loads(line)
        if rec['id'] not in self._records or is_failure(self._records[rec['id']]):
          self._records[rec['id']] = rec

  def __contains__(self, sample_id: str) -> bool:
    return sample_id in self._records

  def __len__(self) -> int:
    return len(self._records)

  def get(self, sample_id: str) -> dict | None:
    return self._records.get(sample_id)

  def done(self, sample_id: str) -> bool:
    """Has a final record: finished, or failed with retries off."""
    rec = self._records.get(sample_id)
    return rec is not None and (not is_failure(rec) or not self.retry_failures)

  def failed_ids(self) -> list[str]:
    return [k for k, r in self._records.items() if is_failure(r)]

  def append(self, record: dict) -> None:
    old = self._records.get(record['id'])
    if old is not None and not is_failure(old):
      raise ValueError(f'sample {record["id"]!r} is already in {self.path}')
    if old is not None and is_failure(record) and old.get('error') == record.get('error'):
      return  # failed again for the same reason: the line is already there
    with open(self.path, 'a') as f:
      f.write(json.dumps(jsonable(record), sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())
    self._records[record['id']] = record

  def records(self) -> list[dict]:
    return list(self._records.values())


def record_skipped(log: SampleLog, skipped: Iterable[tuple[str, str]]) -> None:
  """Records the annotation's skipped items ({'id', 'error': 'annotation: ...'}); an id that already has
  a finished record keeps it (it loaded then), one that failed before gets the current reason."""
  for sample_id, reason in skipped:
    rec = log.get(sample_id)
    if rec is None or is_failure(rec):
      log.append({'id': sample_id, 'error': f'annotation: {reason}'})


def pending(samples: Sequence[data.VideoQASample], log: SampleLog) -> list[data.VideoQASample]:
  """The samples still to run: no record yet, or a failure record to retry (log.retry_failures).
  Says how many recorded failures it retries."""
  todo = [s for s in samples if not log.done(s.id)]
  retried = sum(1 for s in todo if s.id in log)
  if retried:
    logging.info(
      'retrying %d recorded failure%s in %s (config.retry_failures=False keeps them)',
      retried,
      's' * (retried > 1),
      log.path,
    )
  elif not log.retry_failures and log.failed_ids():
    logging.info('keeping %d recorded failures in %s (config.retry_failures=False)', len(log.failed_ids()), log.path)
  return todo


# Errors that are never one sample's fault: they stop the run.
_FATAL = (KeyboardInterrupt, SystemExit, MemoryError)


def batch_records(
  items: Sequence[Any],
  make_records: Callable[[Sequence[Any]], list[dict]],
  item_id: Callable[[Any], str] = lambda p: p.sample.id,
) -> list[dict]:
  """make_records(items) -> one record per item. When the batch fails on the model side (e.g. out of
  device memory on an unusually long prompt), each item is retried alone, and one that still fails
  becomes a failure record {'id', 'error'}, so the run goes on and a resume does not die on it again."""
  try:
    return make_records(items)
  except _FATAL:
    raise
  except Exception as e:  # pylint: disable=broad-except  # retried one by one below
    if len(items) == 1:
      return [{'id': item_id(items[0]), 'error': f'model: {type(e).__name__}: {_short(e)}'}]
    logging.warning(
      'a batch of %d samples failed (%s: %s); retrying them one by one', len(items), type(e).__name__, _short(e)
    )
  out = []
  for item in items:
    try:
      out.extend(make_records([item]))
    except _FATAL:
      raise
    except Exception as e:  # pylint: disable=broad-except  # this sample's failure, recorded
      out.append({'id': item_id(item), 'error': f'model: {type(e).__name__}: {_short(e)}'})
  return out


def _short(e: Exception, limit: int = 500) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  return text if len(text) <= limit else text[:limit] + '...'


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


def write_results(workdir: str, summary: dict, samples: Sequence, records: Sequence[dict], processor, config) -> None:
  """A study's result files (process 0): summary.json/csv, summary_scores.csv (per-task rows and the
  benchmark's official aggregates) and lmms-eval's per-sample log and results file of the clean
  answers, each prompt rendered as the processor renders it."""
  write_summary(workdir, summary['header'], summary['rows'])
  benchmark_scores.write_csv(os.path.join(workdir, 'summary_scores.csv'), summary['header'].get('scores', []))
  lmms_eval_format.write_clean_answers(
    workdir,
    config.benchmark,
    samples,
    records,
    lambda s: processor.render(processor.question_text(s.question, s.options)),
    config.checkpoint,
    ann=config.data.get('ann', ''),
    run_config=config.to_dict(),
  )


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirConfigError(ValueError):
  """The workdir holds results of a config whose result-affecting fields differ."""


class WorkdirLock:
  """An exclusive lock on `workdir/.lock` (flock on the open file, so it dies with its process: a
  stale lock file of a dead run is simply taken over). The file says who holds it."""

  NAME = '.lock'

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.NAME)
    self._fd: int | None = None

  def acquire(self) -> None:
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirLockedError(
          f'workdir {os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to '
          f'finish or use another --workdir'
        ) from None
      try:
        if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)  # the holder released and removed the file between our open and flock: again
    previous = _read_holder(fd)
    if previous != 'unknown holder':
      logging.warning('took over the stale lock of a run that is gone (%s) in %s', previous, self.path)
    os.ftruncate(fd, 0)
    os.write(
      fd,
      json.dumps(
        {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time(), 'command': ' '.join(sys.argv)}
      ).encode(),
    )
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
        os.remove(self.path)
      except OSError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read_holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 65536).decode() or 'null')
  except (OSError, ValueError):
    info = None
  if not isinstance(info, dict):
    return 'unknown holder'
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('started', 0)))
  return f"pid {info.get('pid')} on host {info.get('host')}, since {started}: {info.get('command', '')}"


_HELD: dict[str, WorkdirLock] = {}  # realpath -> the lock this process holds


def lock_workdir(workdir: str) -> None:
  """Takes the workdir's lock for this process (a no-op if it holds it already); released by
  `release_workdir` or when the process ends."""
  key = os.path.realpath(workdir)
  if key not in _HELD:
    lock = WorkdirLock(workdir)
    lock.acquire()
    _HELD[key] = lock


def release_workdir(workdir: str) -> None:
  lock = _HELD.pop(os.path.realpath(workdir), None)
  if lock is not None:
    lock.release()


# What a run writes into its workdir (globs); `fresh` removes these. Caches keyed by their own
# arguments (synthetic/, whose meta.json says what it holds) stay.
RESULT_ENTRIES = (
  'config.json',
  'run.json',
  'samples.jsonl',
  'samples.process*.jsonl',
  'summary.json',
  'summary.csv',
  'summary_scores.csv',
  'timing.json',
  'lmms_eval',
  '*.png',
  'metrics.jsonl',
  'checkpoints',
  'best',
  'teacher',
)
# Entries whose presence means the workdir holds results a rerun would build on.
_HOLDS_RESULTS = ('samples.jsonl', 'samples.process*.jsonl', 'metrics.jsonl', 'checkpoints', 'best', 'teacher')


def _entries(workdir: str, patterns: Sequence[str]) -> list[str]:
  return sorted({p for pat in patterns for p in glob.glob(os.path.join(glob.escape(workdir), pat))})


def config_fingerprint(config, spec: config_checks.Spec | None = None) -> tuple[str, dict]:
  """(sha256 prefix, the bound fields) of the fields that can change results."""
  flat = config_checks.flatten(config.to_dict())
  bound = {k: v for k, v in flat.items() if spec is None or spec.affects_results(k)}
  digest = hashlib.sha256(json.dumps(jsonable(bound), sort_keys=True).encode()).hexdigest()[:16]
  return digest, bound


def config_differences(old: dict, new: dict, spec: config_checks.Spec | None = None) -> list[str]:
  """'field: old (there) vs new (now)' for every result-affecting field that differs. A field only one
  side has counts as equal when its value there is empty ('', None, False): configs that grew a field
  still resume."""
  a, b = config_checks.flatten(old), config_checks.flatten(new)
  out = []
  for k in sorted(set(a) | set(b)):
    if spec is not None and not spec.affects_results(k):
      continue
    if k in a and k in b:
      if jsonable(a[k]) != jsonable(b[k]):
        out.append(f'{k}: {a[k]!r} (there) vs {b[k]!r} (now)')
    elif a.get(k, b.get(k)) not in ('', None, False):
      out.append(f'{k}: {a.get(k, "<absent>")!r} (there) vs {b.get(k, "<absent>")!r} (now)')
  return out


def prepare_workdir(workdir: str, config, spec: config_checks.Spec | None = None) -> None:
  """Creates workdir, takes its lock, binds it to `config` and writes config.json + run.json.

  Binding: when the workdir already holds results, its config.json must agree with `config` on every
  field `spec` says can change results (spec None: on every field); otherwise this raises
  WorkdirConfigError naming the differing fields. config.fresh=True discards the results there
  (RESULT_ENTRIES) first, so the run starts over.
  """
  os.makedirs(workdir, exist_ok=True)
  lock_workdir(workdir)
  config_path = os.path.join(workdir, 'config.json')
  if config.get('fresh', False):
    removed = _entries(workdir, RESULT_ENTRIES)
    if removed:
      logging.info('fresh run: removing %s', ', '.join(os.path.basename(p) for p in removed))
    for path in removed:
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  elif os.path.exists(config_path) and _entries(workdir, _HOLDS_RESULTS):
    with open(config_path) as f:
      old = json.load(f)
    diff = config_differences(old, config.to_dict(), spec)
    if diff:
      free = ', '.join(spec.free_fields()) if spec is not None else 'none'
      raise WorkdirConfigError(
        f'workdir {workdir} holds results of another config; resuming would mix them. Fields that differ:\n  '
        + '\n  '.join(diff)
        + f'\nFields that may differ on resume: {free}.\nUse another --workdir, or '
        f'--config.fresh=True to discard the results in {workdir} and start over.'
      )
  write_json(config_path, config.to_dict())
  digest, _ = config_fingerprint(config, spec)
  write_json(
    os.path.join(workdir, 'run.json'),
    {
      'experiment': spec.experiment if spec is not None else None,
      'fingerprint': digest,
      'free_fields': spec.free_fields() if spec is not None else [],
    },
  )


class RunLog:
  """This process's part in the sample records of a run on `mesh` (one or many processes).

  Local mesh, several processes: each evaluates its `process_share` and appends to its own
  samples.processNNNNN.jsonl; process 0 merges them. Mesh spanning the processes: every process
  evaluates every sample (together), only process 0 reads and writes samples.jsonl, and the ids to
  skip on a resume are process 0's, sent to all. One process: samples.jsonl, as always.
  """

  def __init__(self, workdir: str, mesh, retry_failures: bool = True):
    self.workdir, self.mesh = workdir, mesh
    self.writes = distributed.writes_results(mesh)
    self.log = (
      SampleLog(os.path.join(workdir, distributed.sample_log_name(mesh)), retry_failures) if self.writes else None
    )

  def record_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
    """Annotation failures, recorded once (by process 0; see `record_skipped`)."""
    if distributed.is_main():
      assert self.log is not None, 'process 0 always writes'
      record_skipped(self.log, skipped)

  def todo(self, samples: Sequence[Any]) -> list:
    """The samples this process evaluates that are not done yet (`pending`: no record, or a failure to
    retry); on a spanning mesh process 0's list, sent to every process (they run every batch together)."""
    share = distributed.work_share(samples, self.mesh)
    todo = pending(share, self.log) if self.log is not None else []  # None: not the writing process
    if not distributed.mesh_spans_processes(self.mesh):
      return todo
    ids = set(distributed.broadcast_json([s.id for s in todo], name='todo ids'))
    return [s for s in share if s.id in ids]

  def append(self, record: dict) -> None:
    if self.log is not None:  # the writing process
      self.log.append(record)

  def records(self) -> list[dict]:
    """After every process is done (a barrier): all records on process 0, [] elsewhere."""
    distributed.barrier('samples')
    if not distributed.is_main():
      return []
    if jax.process_count() > 1 and not distributed.mesh_spans_processes(self.mesh):
      return distributed.merge_results(self.workdir)
    assert self.log is not None, 'process 0 always writes'
    return self.log.records()


def open_run(workdir: str, config, spec: config_checks.Spec, mesh) -> tuple[list[data.VideoQASample], RunLog, list]:
  """The start every per-sample study shares: process 0 prepares the workdir (lock, bound to the config)
  and generates a synthetic split once; then every process loads the samples and its RunLog.
  -> (samples, log, the samples this process still evaluates)."""
  if distributed.is_main():
    prepare_workdir(workdir, config, spec)
    load_samples(config, workdir)  # generates the synthetic split once, before the others read it
  distributed.barrier('workdir')
  samples, skipped = load_samples(config, workdir)
  log = RunLog(workdir, mesh, config.retry_failures)
  log.record_skipped(skipped)
  return samples, log, log.todo(samples)


def evaluate_pending(
  todo: Sequence[data.VideoQASample],
  prepare: Callable[[Any], Any],
  evaluate: Callable[[Sequence[Any]], list[dict]],
  log: RunLog,
  config,
  mesh,
  desc: str,
) -> None:
  """The loop every per-sample study shares. Worker threads `prepare` the next samples while
  `evaluate(prepared batch) -> records` computes (jaxvlm/input_pipeline.py; in sample order on a mesh
  spanning processes, where every process must feed the same batch: checked). A sample that fails to
  prepare is a record; a batch that fails on the model side is retried sample by sample
  (`batch_records`). Progress bar on process 0."""
  start = time.time()
  with tqdm(total=len(todo), unit='sample', desc=desc, dynamic_ncols=True, disable=not distributed.is_main()) as bar:
    for ready in input_pipeline.prefetch_batches(
      todo,
      prepare,
      config.batch_size,
      config.input_workers,
      in_order=distributed.mesh_spans_processes(mesh),
      worker_kind=config.input_worker_kind,
    ):
      check_same_batch([p.sample.id for p in ready.items] + [i for i, _ in ready.failed], mesh)
      for sample_id, reason in ready.failed:
        log.append({'id': sample_id, 'error': reason})
      if ready.items:
        for record in batch_records(ready.items, evaluate):
          log.append(record)
      bar.update(ready.num_samples)
      bar.set_postfix(samples_per_s=f'{bar.n / max(time.time() - start, 1e-9):.2f}')


def start_worker_server(config, *modules: str) -> None:
  """With process input workers: starts the server they fork from now, importing `modules` (those of
  the experiment's prepare), so its start-up overlaps the model load (`input_pipeline.start_worker_server`)."""
  if config.input_workers and config.input_worker_kind == 'process':
    input_pipeline.start_worker_server(modules)


def finish_run(workdir: str) -> None:
  """Process 0 releases the workdir lock (its results are written); every process waits for that."""
  if distributed.is_main():
    release_workdir(workdir)
  distributed.barrier('summary')


# ---------------------------------------------------------------- samples


def csv_list(value) -> list[str]:
  """'a,b' or ('a', 'b') -> ['a', 'b']; '' -> []."""
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return [str(v) for v in value]


VIDEO_LLM_TYPES = ('llava_onevision', 'qwen2_5_vl')


def load_model(config, mesh=None):
  """(model, params, processor) of config.checkpoint in config.dtype. With `mesh`
  (`sharding.mesh_from_config`) the params are read shard by shard straight onto it, each process the
  blocks of its own devices, in config.param_dtype; a checkpoint that fails to load on any process fails
  on every process. config.frame_size ('H,W'; '' or absent: the processor's own rule) fixes a
  Qwen2.5-VL run's frame size (static shapes); LLaVA's frame size is the checkpoint's and cannot be set.
  A checkpoint of another kind (a SigLIP) is refused by name."""
  if mesh is None:
    model, params, processor = checkpoints.load_pretrained(
      config.checkpoint, dtype=jnp.dtype(config.dtype), expect=VIDEO_LLM_TYPES, field='checkpoint'
    )
  else:
    param_dtype = jnp.dtype(config.get('param_dtype', 'float32'))
    model, params, processor = distributed.collective(
      f'load {config.checkpoint}',
      lambda: checkpoints.load_pretrained(
        config.checkpoint,
        dtype=jnp.dtype(config.dtype),
        expect=VIDEO_LLM_TYPES,
        field='checkpoint',
        param_dtype=param_dtype,
        mesh=mesh,
      ),
    )
  size = [int(v) for v in csv_list(config.get('frame_size', ''))]
  if size:
    if not isinstance(processor, Qwen25VLProcessor):
      raise ValueError(
        f'frame_size={config.frame_size!r}: only a Qwen2.5-VL processor takes a frame size '
        f'({config.checkpoint} gave {type(processor).__name__})'
      )
    if len(size) != 2:
      raise ValueError(f"frame_size={config.frame_size!r}: expected 'H,W'")
    processor.set_frame_size(size)
  return model, params, processor


def load_siglip(config):
  """The keyframe scorer of config.siglip_checkpoint (a SigLIP checkpoint, by model_type)."""
  return checkpoints.load_pretrained(
    config.siglip_checkpoint, dtype=jnp.dtype(config.dtype), expect=('siglip',), field='siglip_checkpoint'
  )


def max_positions(model) -> int | None:
  """The longest prompt the Video-LLM's decoder takes (its max_position_embeddings), if it says."""
  return getattr(getattr(model.config, 'text', None), 'max_position_embeddings', None)


def load_samples(config, workdir: str):
  """-> (samples (at most config.max_samples), skipped [(id, reason)]). The synthetic benchmark is
  generated under workdir/synthetic on first use (deterministic by seed)."""
  kwargs = dict(config.data)
  if config.benchmark == 'synthetic':
    ann = kwargs.get('ann', '')  # '' -> generated under workdir; else a split directory
    generate = {k: v for k, v in kwargs.items() if k in config_checks.SYNTHETIC_FIELDS}
    kwargs = {'ann': ann or synthetic.ensure(os.path.join(workdir, 'synthetic'), **generate)}
  else:
    kwargs = config_checks.loader_kwargs(config.benchmark, kwargs)
  loaded = data.load_benchmark(config.benchmark, **kwargs)
  samples = interleave_tasks(loaded.samples)
  samples = samples if config.max_samples < 0 else samples[: config.max_samples]
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
    yield items[i : i + size]


@dataclasses.dataclass(frozen=True)
class Prepared:
  sample: data.VideoQASample
  prompt: prompts.Prompt
  pixels: np.ndarray  # the model's pixels, one entry per knockout frame (see `video_inputs`)


def video_inputs(
  processor,
  question: str,
  options: Sequence[str],
  frames: np.ndarray,
  timestamps_s: np.ndarray | None = None,
  keyframes: bool = False,
) -> tuple[prompts.Prompt, np.ndarray]:
  """(prompt, model pixels) of one multiple-choice question over uint8 frames [F, H, W, 3] at times
  timestamps_s [F]: the one place the model families differ on the sample path.

  LLaVA-OneVision: pixels [F, h, w, 3], one per frame (keyframes or not). Qwen2.5-VL: patches
  [T, Hm, Wm, M, P], one per temporal patch; a uniform clip pairs consecutive frames (T = ceil(F / 2)),
  keyframes (selected or candidate frames) fill one patch each (T = F), with M-RoPE positions in the
  prompt (`jaxvlm.qwen2_5_vl_processor`). Either way pixels[f] is knockout frame f of the prompt.
  """
  if isinstance(processor, Qwen25VLProcessor):
    return processor.video_inputs(question, options, frames, timestamps_s, keyframes)
  return prompts.build_prompt(processor, question, options, len(frames)), processor.preprocess(frames)


def prompt_for_pixels(processor, question: str, options: Sequence[str], pixels: np.ndarray) -> prompts.Prompt:
  """The prompt of a question over model pixels taken from a keyframe pool (`video_inputs` with
  keyframes=True, then indexed [k]): one knockout frame per entry."""
  if isinstance(processor, Qwen25VLProcessor):
    return processor.build_prompt(
      question, options, processor.grid_of(pixels), processor.seconds_per_patch(keyframes=True)
    )
  return prompts.build_prompt(processor, question, options, len(pixels))


def check_prompt_length(prompt: prompts.Prompt, limit: int | None) -> None:
  """Raises when the prompt is longer than the model's positions (it would run on positions the model
  never learned, with no error anywhere else)."""
  if limit is not None and len(prompt.input_ids) > limit:
    raise ValueError(
      f'prompt of {len(prompt.input_ids)} tokens is longer than the model\'s max_position_embeddings={limit}'
    )


def prepare(
  samples: Sequence[data.VideoQASample], processor, config, max_positions: int | None = None
) -> tuple[list[Prepared], list[tuple[str, str]]]:
  """Decodes, preprocesses and prompts each sample; a failing one becomes (id, reason), never a crash.
  max_positions: the model's limit (`max_positions(model)`); a longer prompt is that sample's failure."""
  ok, failed = [], []
  for s in samples:
    try:
      if not s.options:
        raise ValueError('empty option list')
      if s.answer is None or not 0 <= s.answer < len(s.options):
        raise ValueError(f'answer {s.answer} outside the {len(s.options)} options')
      frames = frame_folders.sample_frames_of(s, config.num_frames)  # a video file or a frame folder
      prompt, pixels = video_inputs(processor, s.question, s.options, frames.pixels, frames.timestamps_s)
      check_prompt_length(prompt, max_positions)
      ok.append(Prepared(s, prompt, pixels))
    except Exception as e:  # pylint: disable=broad-except  # recorded per sample, the run goes on
      failed.append((s.id, f'{type(e).__name__}: {e}'))
  return ok, failed


@dataclasses.dataclass(frozen=True)
class ModelBatch:
  """Device-ready batch: input_ids [B, S], pixels [B, F, ...] (LLaVA [B, F, H, W, C], Qwen2.5-VL
  [B, T, Hm, Wm, M, P]), layout [B, S] (positions [B, S] or M-RoPE [3, B, S]), answer_index [B],
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
  shapes = {p.pixels.shape for p in rows}
  if len(shapes) > 1:
    raise ValueError(
      f'samples {[p.sample.id for p in prepared]} have pixels of shapes {sorted(shapes)}: a '
      'batch needs one shape (set frame_size for a Qwen2.5-VL run over videos of mixed sizes)'
    )
  pad_id = processor.tokenizer.pad_token_id or 0
  pb = prompts.collate([p.prompt for p in rows], pad_id)
  n_options = max(len(p.sample.options) for p in rows)
  return ModelBatch(
    jnp.asarray(pb.input_ids),
    jnp.asarray(np.stack([p.pixels for p in rows])),
    TokenLayout(*(jnp.asarray(x) for x in (pb.layout.group, pb.layout.frame, pb.layout.positions, pb.layout.valid))),
    jnp.asarray(pb.answer_index),
    jnp.asarray(processor.option_letter_ids(n_options)),
  )


def check_same_batch(ids: Sequence[str], mesh) -> None:
  """On a mesh spanning processes every process must feed the same batch (the prompt arrays are put
  replicated from each process's own copy): their batches' sample ids are compared, and a difference
  (e.g. a video that decoded on one host only) stops every process naming each one's ids. A no-op on a
  local mesh."""
  if not distributed.mesh_spans_processes(mesh):
    return
  seen = distributed.agree('batch ids', value=list(ids))
  if len({tuple(v) for v in seen.values()}) > 1:
    raise distributed.DistributedError(
      'the processes of a global mesh prepared different batches: '
      + '; '.join(f'process {p}: {v}' for p, v in sorted(seen.items()))
    )


def place_batch(batch: ModelBatch, mesh) -> ModelBatch:
  """Samples split over the mesh's sample axes; option ids replicated. M-RoPE positions [3, B, S] are
  placed sample-first [B, S, 3] and moved back, so they split over samples like everything else. On a
  mesh spanning processes (every process passes the same whole batch) the prompt-side int arrays (ids,
  layout incl. positions, answer slots: [B, S] at most) are replicated instead, so the sweeps' host-side
  planning reads them on every process; the pixels stay split."""
  if distributed.mesh_spans_processes(mesh):
    rep = lambda tree: jax.tree.map(lambda x: sharding.put(x, sharding.replicated(mesh)), tree)
    return ModelBatch(
      rep(batch.input_ids),
      sharding.shard_batch(batch.pixels, mesh),
      rep(batch.layout),
      rep(batch.answer_index),
      rep(batch.option_ids),
    )
  positions = batch.layout.positions
  mrope = positions.ndim == 3
  layout = batch.layout.replace(positions=jnp.moveaxis(positions, 0, -1) if mrope else positions)
  ids, pixels, layout, answer = sharding.shard_batch((batch.input_ids, batch.pixels, layout, batch.answer_index), mesh)
  if mrope:
    layout = layout.replace(positions=jnp.moveaxis(layout.positions, -1, 0))
  return ModelBatch(ids, pixels, layout, answer, jax.device_put(batch.option_ids, sharding.replicated(mesh)))
