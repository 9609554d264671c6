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

from jaxvlm import checkpoints, data, distributed, frame_folders, prompts, sharding
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
  """(model, params, processor) of config.checkpoint in config.dtype. With `mesh`
  (`sharding.mesh_from_config`) the params are read shard by shard straight onto it, each process the
  blocks of its own devices, in config.param_dtype; a checkpoint that fails to load on any process fails
  on every process. config.frame_size ('H,W'; '' or absent: the processor's own rule) fixes a
  Qwen2.5-VL run's frame size (static shapes); LLaVA's frame size is the checkpoint's and cannot be set."""
  if mesh is None:
    model, params, processor = checkpoints.load_pretrained(config.checkpoint, dtype=jnp.dtype(config.dtype))
  else:
    param_dtype = jnp.dtype(config.get('param_dtype', 'float32'))
    model, params, processor = distributed.collective(f'load {config.checkpoint}', lambda: checkpoints.load_pretrained(
        config.checkpoint, dtype=jnp.dtype(config.dtype), param_dtype=param_dtype, mesh=mesh))
  size = [int(v) for v in csv_list(config.get('frame_size', ''))]
  if size:
    if not isinstance(processor, Qwen25VLProcessor):
      raise ValueError(f'frame_size={config.frame_size!r}: only a Qwen2.5-VL processor takes a frame size '
                       f'({config.checkpoint} gave {type(processor).__name__})')
    if len(size) != 2:
      raise ValueError(f"frame_size={config.frame_size!r}: expected 'H,W'")
    processor.set_frame_size(size)
  return model, params, processor


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
  pixels: np.ndarray  # the model's pixels, one entry per knockout frame (see `video_inputs`)


def video_inputs(processor, question: str, options: Sequence[str], frames: np.ndarray,
                 timestamps_s: np.ndarray | None = None, keyframes: bool = False
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


def prompt_for_pixels(processor, question: str, options: Sequence[str], pixels: np.ndarray
                      ) -> prompts.Prompt:
  """The prompt of a question over model pixels taken from a keyframe pool (`video_inputs` with
  keyframes=True, then indexed [k]): one knockout frame per entry."""
  if isinstance(processor, Qwen25VLProcessor):
    return processor.build_prompt(question, options, processor.grid_of(pixels),
                                  processor.seconds_per_patch(keyframes=True))
  return prompts.build_prompt(processor, question, options, len(pixels))


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
      prompt, pixels = video_inputs(processor, s.question, s.options, frames.pixels, frames.timestamps_s)
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
    raise ValueError(f'samples {[p.sample.id for p in prepared]} have pixels of shapes {sorted(shapes)}: a '
                     'batch needs one shape (set frame_size for a Qwen2.5-VL run over videos of mixed sizes)')
  pad_id = processor.tokenizer.pad_token_id or 0
  pb = prompts.collate([p.prompt for p in rows], pad_id)
  n_options = max(len(p.sample.options) for p in rows)
  return ModelBatch(jnp.asarray(pb.input_ids), jnp.asarray(np.stack([p.pixels for p in rows])),
                    TokenLayout(*(jnp.asarray(x) for x in (pb.layout.group, pb.layout.frame,
                                                           pb.layout.positions, pb.layout.valid))),
                    jnp.asarray(pb.answer_index), jnp.asarray(processor.option_letter_ids(n_options)))


def place_batch(batch: ModelBatch, mesh) -> ModelBatch:
  """Samples split over the mesh's sample axes; option ids replicated. M-RoPE positions [3, B, S] are
  placed sample-first [B, S, 3] and moved back, so they split over samples like everything else. On a
  mesh spanning processes (every process passes the same whole batch) the prompt-side int arrays (ids,
  layout incl. positions, answer slots: [B, S] at most) are replicated instead, so the sweeps' host-side
  planning reads them on every process; the pixels stay split."""
  if distributed.mesh_spans_processes(mesh):
    rep = lambda tree: jax.tree.map(lambda x: sharding.put(x, sharding.replicated(mesh)), tree)
    return ModelBatch(rep(batch.input_ids), sharding.shard_batch(batch.pixels, mesh), rep(batch.layout),
                      rep(batch.answer_index), rep(batch.option_ids))
  positions = batch.layout.positions
  mrope = positions.ndim == 3
  layout = batch.layout.replace(positions=jnp.moveaxis(positions, 0, -1) if mrope else positions)
  ids, pixels, layout, answer = sharding.shard_batch((batch.input_ids, batch.pixels, layout,
                                                      batch.answer_index), mesh)
  if mrope:
    layout = layout.replace(positions=jnp.moveaxis(layout.positions, -1, 0))
  return ModelBatch(ids, pixels, layout, answer, jax.device_put(batch.option_ids, sharding.replicated(mesh)))
