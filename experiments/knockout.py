r"""Attention-knockout study (Gou et al.): which attention edges does the answer need, in which layers?

  python -m experiments.knockout --config=configs/knockout.py[:preset] --workdir=DIR \
      [--config.max_samples=100 --config.settings=global1,fine ...]

Writes config.json, samples.jsonl (resumable), summary.json/csv (per spec, with 95 % intervals and
McNemar p against clean), summary_scores.csv (per condition x overall / task / official aggregate),
plots (see jaxvlm/runs.py) and, for benchmarks lmms-eval has, lmms_eval/ (its per-sample log and
results file of the clean answers).
"""

from __future__ import annotations

import functools

from absl import app, flags, logging
from ml_collections import config_flags

from jaxvlm import config_checks, distributed, runs, sharding
from jaxvlm.knockout import config_fields, engine, metrics, plots, specs


def sample_records(model, params, processor, mesh, sw, config, prepared) -> list[dict]:
  """One batch through the sweep engine -> one record per prepared sample."""
  batch = runs.collate(prepared, processor, multiple=runs.batch_multiple(mesh))
  clean_logp, spec_logp = engine.evaluate_batch(
    model, params, batch, sw.specs, mesh, config.tail_multiple, config.spec_chunk
  )
  return [
    {
      'id': p.sample.id,
      'task': p.sample.task,
      'answer': p.sample.answer,
      'clean': clean_logp[i, : len(p.sample.options)],
      'specs': {e.name: spec_logp[k, i, : len(p.sample.options)] for k, e in enumerate(sw.entries)},
    }
    for i, p in enumerate(prepared)
  ]


@distributed.guarded
def run(config, workdir: str) -> dict:
  """Runs (or resumes) the study; returns the summary dict (on every process; only process 0 writes it).

  `--config.mesh.devices=local`: each process evaluates its contiguous share of the samples on its own
  devices and appends to its own samples.processNNNNN.jsonl; process 0 merges them into samples.jsonl.
  `global`: one mesh over every process's devices (weights split across hosts); every process runs every
  batch and process 0 writes samples.jsonl (see `runs.RunLog`).
  """
  config_checks.check(config, config_fields.KNOCKOUT)  # every field, before anything is loaded
  info = distributed.initialize()
  runs.start_worker_server(config, 'jaxvlm.runs')  # input worker processes start beside the model load
  mesh = sharding.mesh_from_config(config.mesh)
  model, params, processor = runs.load_model(config, mesh)
  sw = specs.sweep_from_config(config, model.config.text.num_hidden_layers)  # validated before any compute
  samples, log, todo = runs.open_run(workdir, config, config_fields.KNOCKOUT, mesh)  # lock, bind to the config
  logging.info(
    'process %d/%d: %d samples here, %d to run, %d specs per sample',
    info.process_index,
    info.process_count,
    len(distributed.work_share(samples, mesh)),
    len(todo),
    len(sw),
  )
  # Workers decode and preprocess the next samples while the model computes (jaxvlm/input_pipeline.py).
  prepare = functools.partial(runs.prepare, processor=processor, config=config, max_positions=runs.max_positions(model))
  runs.evaluate_pending(
    todo,
    prepare,
    functools.partial(sample_records, model, params, processor, mesh, sw, config),
    log,
    config,
    mesh,
    desc='knockout',
  )
  records = log.records()
  summary = metrics.summarize(records, sw, config.benchmark, {s.id: s.meta for s in samples})
  if distributed.is_main():
    runs.write_results(workdir, summary, samples, records, processor, config)
    plots.knockout_plots(summary['rows'], summary['header'], workdir)
  runs.finish_run(workdir)
  return summary


def main(argv):
  del argv
  summary = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(metrics.format_table(summary))


if __name__ == '__main__':
  # Flags are defined here, not at import, so modules importing this one define no clashing flags.
  config_flags.DEFINE_config_file('config', None, 'configs/knockout.py[:preset]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/knockout', 'where results go (resumes if it holds a run)')
  app.run(main)
