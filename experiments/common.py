"""Pieces every video-QA experiment shares: model and data from the config, sample preparation with
per-sample failure capture, batching, and the printed summary table."""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import checkpoints, data, prompts, sharding, video
from jaxvlm.data import synthetic
from jaxvlm.knockout import TokenLayout


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
  """Samples split over the mesh's sample axes; option ids replicated."""
  placed = sharding.shard_batch((batch.input_ids, batch.pixels, batch.layout, batch.answer_index), mesh)
  return ModelBatch(*placed, jax.device_put(batch.option_ids, sharding.replicated(mesh)))


def format_table(summary: dict) -> str:
  """Summary rows as a fixed-width text table, headed by clean accuracy and failure counts."""
  h = summary['header']
  lines = [f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy: "
           f"{h['clean_accuracy'] if h['clean_accuracy'] is None else round(h['clean_accuracy'], 4)}"]
  cols = ['name', 'accuracy', 'performance_ratio', 'delta_logp_correct', 'flip_rate']
  lines.append(' '.join(f'{c:>20}' for c in cols))
  for r in summary['rows']:
    lines.append(' '.join(f'{r[c]:>20.4f}' if isinstance(r[c], float) else f'{str(r[c]):>20}' for c in cols))
  return '\n'.join(lines)
