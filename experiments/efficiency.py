r"""From knockout findings to speed: efficiency plans x frame budgets x selectors, with accuracy, FLOPs,
measured prefill time and memory, and the Pareto front of accuracy against measured time.

  python -m experiments.efficiency --config=configs/efficiency.py[:preset] --workdir=DIR \
      [--config.knockout_workdir=KNOCKOUT_DIR --config.max_drop=0.01 --config.exit_layer=5 \
       --config.intra_frame_layers=2 --config.ks=8,16 --config.selectors=uniform,siglip,learned \
       --config.selector_checkpoint=SELECTOR_DIR]

What is computed: `jaxvlm.keyframes.efficiency` (per batch), `jaxvlm.knockout.efficiency` (plan choice,
summary, Pareto plot). Writes config.json, samples.jsonl (resumable), timing.json, summary.json/csv (one
row per plan/selector/k) and pareto.png.
"""

from __future__ import annotations

import os
import types

import functools

from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from jaxvlm import config_checks, runs
from jaxvlm.keyframes import candidates, config_fields, learned
from jaxvlm.keyframes import efficiency
from jaxvlm.knockout import efficiency as plans_lib


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the grid; returns the summary dict."""
  config_checks.check(config, config_fields.EFFICIENCY)  # every field, before anything is loaded
  model, params, processor = runs.load_model(config)
  grid = efficiency.grid_from_config(config, model.config, processor)  # validated before any compute
  siglip = runs.load_siglip(config) if 'siglip' in grid.selectors else None
  trained = learned.load_trained(config.selector_checkpoint) if 'learned' in grid.selectors else None
  if trained is not None and trained.num_candidates != config.num_frames:
    raise ValueError(
      f'the selector in {config.selector_checkpoint} was trained on {trained.num_candidates} '
      f'candidates, this run uses num_frames={config.num_frames}'
    )
  runs.prepare_workdir(workdir, config, config_fields.EFFICIENCY)  # lock, bind to the config
  samples, skipped = runs.load_samples(config, workdir)
  log = runs.SampleLog(os.path.join(workdir, 'samples.jsonl'), config.retry_failures)
  runs.record_skipped(log, skipped)
  todo = runs.pending(samples, log)
  logging.info(
    '%d samples, %d to run; plans %s (chosen: %s), ks %s, selectors %s',
    len(samples),
    len(todo),
    grid.names,
    grid.chosen,
    grid.ks,
    grid.selectors,
  )
  pool_config = types.SimpleNamespace(num_candidates=config.num_frames)  # the pool is the full model's frames
  first = None
  with tqdm(total=len(todo), unit='sample', desc='efficiency', dynamic_ncols=True) as bar:
    for chunk in runs.batches(todo, config.batch_size):
      cands, failed = candidates.prepare_pool(chunk, processor, pool_config, runs.max_positions(model))
      for sample_id, reason in failed:
        log.append({'id': sample_id, 'error': reason})
      if cands:  # a batch that fails on the model side is retried sample by sample
        first = first or cands[0]
        for record in runs.batch_records(
          cands,
          functools.partial(
            efficiency.evaluate_batch,
            model,
            params,
            processor,
            siglip,
            trained,
            grid=grid,
            num_frames=config.num_frames,
          ),
        ):
          log.append(record)
      bar.update(len(chunk))
  if first is None:  # a resumed run: time on the first sample again
    cands, _ = candidates.prepare_pool(samples[:1], processor, pool_config)
    first = cands[0] if cands else None
  if first is None:
    raise ValueError('no sample could be prepared, nothing to time')
  timings, flops = efficiency.measure(model, params, processor, first, grid, config.num_frames, config.timing_repeats)
  runs.write_json(os.path.join(workdir, 'timing.json'), {'timings': timings, 'flops': flops})
  summary = plans_lib.summarize(log.records(), flops, timings, f'clean/uniform/{config.num_frames}')
  summary['header']['chosen_plan'] = grid.chosen
  runs.write_summary(workdir, summary['header'], summary['rows'])
  plans_lib.pareto_plot(summary, workdir)
  runs.release_workdir(workdir)
  return summary


def main(argv):
  del argv
  summary = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(f"chosen plan: {summary['header']['chosen_plan']}")
  print(plans_lib.format_table(summary))


if __name__ == '__main__':
  # Flags are defined here, not at import, so modules importing this one define no clashing flags.
  config_flags.DEFINE_config_file('config', None, 'configs/efficiency.py[:preset]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/efficiency', 'where results go (resumes if it holds a run)')
  app.run(main)
