r"""Attention-knockout study (Gou et al.): which attention edges does the answer need, in which layers?

  python -m experiments.knockout --config=configs/knockout.py[:preset] --workdir=DIR \
      [--config.max_samples=100 --config.settings=global1,fine ...]

Writes config.json, samples.jsonl (resumable), summary.json/csv and plots (see experiments/results.py).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from experiments import common, plots, results
from jaxvlm import distributed, knockout, metrics, sharding, sweep



def sweep_from_config(config, num_layers: int) -> knockout.Sweep:
  return knockout.build_sweep(
      num_layers, config.num_frames, settings=common.csv_list(config.settings),
      kinds=common.csv_list(config.kinds), global1_step=config.global1_step,
      window_size=config.window, window_stride=config.window_stride,
      explicit_layers=[int(x) for x in common.csv_list(config.explicit_layers)] or None)


def evaluate_batch(model, params, batch: common.ModelBatch, sw: knockout.Sweep, config, mesh):
  """-> clean option log-probs [B, O] and per-spec [N, B, O] (numpy); samples sharded over the mesh."""
  batch = common.place_batch(batch, mesh)
  with sharding.activation_rules(mesh):
    clean = sweep.clean_run(model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index,
                            batch.option_ids)
    spec_logp = sweep.run_sweep(model, params, clean, batch.layout, batch.answer_index, batch.option_ids,
                                jax.tree.map(jnp.asarray, sw.specs), config.tail_multiple, config.spec_chunk)
  return np.asarray(clean.option_logprobs), np.asarray(spec_logp)


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the study; returns the summary dict (on every process; only process 0 writes it).

  Multi-process: each process evaluates its contiguous share of the samples on its own devices and
  appends to its own samples.processNNNNN.jsonl; process 0 merges them into samples.jsonl.
  """
  info = distributed.initialize()
  model, params, processor = common.load_model(config)
  sw = sweep_from_config(config, model.config.text.num_hidden_layers)  # validated before any compute
  mesh = sharding.make_mesh(**config.mesh, devices=jax.local_devices())
  params = sharding.shard_params(params, mesh)
  if distributed.is_main():
    results.prepare_workdir(workdir, config)
    common.load_samples(config, workdir)  # generates the synthetic split once, before the others read it
  distributed.barrier('workdir')
  samples, skipped = common.load_samples(config, workdir)
  log_name = distributed.process_filename('samples') if info.multi_process else 'samples.jsonl'
  log = results.SampleLog(os.path.join(workdir, log_name))
  if distributed.is_main():
    for sample_id, reason in skipped:
      if sample_id not in log:
        log.append({'id': sample_id, 'error': f'annotation: {reason}'})
  todo = [s for s in distributed.process_share(samples) if s.id not in log]
  logging.info('process %d/%d: %d samples here, %d to run, %d specs per sample', info.process_index,
               info.process_count, len(distributed.process_share(samples)), len(todo), len(sw))
  start = time.time()
  with tqdm(total=len(todo), unit='sample', desc='knockout', dynamic_ncols=True,
            disable=not distributed.is_main()) as bar:
    for chunk in common.batches(todo, config.batch_size):
      prepared, failed = common.prepare(chunk, processor, config)
      for sample_id, reason in failed:
        log.append({'id': sample_id, 'error': reason})
      if prepared:
        batch = common.collate(prepared, processor, multiple=common.batch_multiple(mesh))
        clean_logp, spec_logp = evaluate_batch(model, params, batch, sw, config, mesh)
        for i, p in enumerate(prepared):
          n = len(p.sample.options)
          log.append({'id': p.sample.id, 'task': p.sample.task, 'answer': p.sample.answer,
                      'clean': clean_logp[i, :n],
                      'specs': {e.name: spec_logp[k, i, :n] for k, e in enumerate(sw.entries)}})
      bar.update(len(chunk))
      bar.set_postfix(samples_per_s=f'{bar.n / max(time.time() - start, 1e-9):.2f}')
  distributed.barrier('samples')
  if info.multi_process and distributed.is_main():
    records = distributed.merge_results(workdir)
  else:
    records = results.SampleLog(os.path.join(workdir, 'samples.jsonl')).records() if distributed.is_main() else []
  summary = summarize(records, sw)
  if distributed.is_main():
    results.write_summary(workdir, summary['header'], summary['rows'])
    plots.knockout_plots(summary['rows'], summary['header'], workdir)
  distributed.barrier('summary')
  return summary


def summarize(records: list[dict], sw: knockout.Sweep) -> dict:
  """Per-spec metrics over the successful samples; failures counted."""
  ok = [r for r in records if 'error' not in r]
  header = {'num_samples': len(ok), 'num_failed': len(records) - len(ok),
            'failures': [{'id': r['id'], 'error': r['error']} for r in records if 'error' in r]}
  if not ok:
    return {'header': {**header, 'clean_accuracy': None}, 'rows': []}
  width = max(len(r['clean']) for r in ok)
  pad = lambda x: np.pad(np.asarray(x, np.float64), (0, width - len(x)), constant_values=-np.inf)
  clean = np.stack([pad(r['clean']) for r in ok])
  specs = np.stack([np.stack([pad(r['specs'][e.name]) for r in ok]) for e in sw.entries])
  answers = np.asarray([r['answer'] for r in ok])
  m = metrics.knockout_metrics(clean, specs, answers)
  rows = [{'name': e.name, 'setting': e.setting, 'kind': e.kind, 'first_layer': e.layers[0] + 1,
           'last_layer': e.layers[-1] + 1, 'layer_ratio': e.layer_ratio,
           'accuracy': m['accuracy'][k], 'performance_ratio': m['performance_ratio'][k],
           'delta_logp_correct': m['delta_logp_correct'][k], 'flip_rate': m['flip_rate'][k]}
          for k, e in enumerate(sw.entries)]
  return {'header': {**header, 'clean_accuracy': m['clean_accuracy']}, 'rows': rows}


def main(argv):
  del argv
  summary = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(common.format_table(summary))


if __name__ == '__main__':
  # Flags are defined here, not at import, so modules importing this one define no clashing flags.
  config_flags.DEFINE_config_file('config', None, 'configs/knockout.py[:preset]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/knockout', 'where results go (resumes if it holds a run)')
  app.run(main)
