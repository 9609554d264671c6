r"""Keyframe diagnosis (Ok & Lee): where does the Video-LLM look, and do keyframe samplers guided by
SigLIP query-frame similarity pick those frames?

  python -m experiments.keyframe_diagnosis --config=configs/keyframe_diagnosis.py[:preset] --workdir=DIR \
      [--config.max_samples=50 --config.ks=1,2,4 ...]

What is computed per sample: `jaxvlm.keyframes.diagnosis`.
Writes config.json, samples.jsonl (resumable), summary.json/csv (one row per selector and k, with 95 %
intervals and McNemar p against all candidates), summary_scores.csv (per condition x overall / task /
official aggregate), plots: accuracy vs k, recall@k vs k, and frame strips with oracle and SigLIP
scores; and, for benchmarks lmms-eval has, lmms_eval/ (the all-candidates answers in its format).
"""

from __future__ import annotations

import functools

from absl import app, flags, logging
from ml_collections import config_flags

from jaxvlm import config_checks, distributed, runs, sharding
from jaxvlm.keyframes import candidates, config_fields, diagnosis, learned
from jaxvlm.keyframes import plots as keyframe_plots


@distributed.guarded
def run(config, workdir: str) -> dict:
  """Runs (or resumes) the diagnosis; returns the summary dict (process 0 writes the results).

  `--config.mesh.devices=global`: one mesh over every process's devices (the Video-LLM's weights split
  across hosts), every process runs every batch; `local`: each process its share (see `runs.RunLog`).
  """
  config_checks.check(config, config_fields.DIAGNOSIS)  # every field, before anything is loaded
  distributed.initialize()
  mesh = sharding.mesh_from_config(config.mesh)
  runs.start_worker_server(config, 'jaxvlm.keyframes.candidates')  # input worker processes start beside the model load
  model, params, processor = runs.load_model(config, mesh)
  plan = diagnosis.plan_from_config(config, model.config.text.num_hidden_layers)  # validated before any compute
  siglip = runs.load_siglip(config)
  trained = learned.load_trained(config.selector_checkpoint) if 'learned' in plan.selectors else None
  if trained is not None and trained.num_candidates != config.num_candidates:
    raise ValueError(
      f'the selector in {config.selector_checkpoint} was trained on {trained.num_candidates} '
      f'candidates, the diagnosis uses num_candidates={config.num_candidates}'
    )
  samples, log, todo = runs.open_run(workdir, config, config_fields.DIAGNOSIS, mesh)  # lock, bind to the config
  logging.info(
    '%d samples, %d to run here, %d candidates, selectors %s, k %s',
    len(samples),
    len(todo),
    config.num_candidates,
    plan.selectors,
    plan.ks,
  )
  # Workers decode the next pools while the models compute (jaxvlm/input_pipeline.py).
  prepare = functools.partial(
    candidates.prepare_pool, processor=processor, config=config, max_positions=runs.max_positions(model)
  )
  runs.evaluate_pending(
    todo,
    prepare,
    lambda cs: diagnosis.evaluate_batch(model, params, processor, siglip, cs, plan, config, trained, mesh),
    log,
    config,
    mesh,
    desc='keyframes',
  )
  records = log.records()
  summary = diagnosis.summarize(records, plan, config.sensitive_k, config.benchmark, {s.id: s.meta for s in samples})
  if distributed.is_main():
    runs.write_results(workdir, summary, samples, records, processor, config)
    keyframe_plots.diagnosis_plots(summary, records, workdir, config.strip_samples)
  runs.finish_run(workdir)
  return summary


def main(argv):
  del argv
  print(diagnosis.format_table(run(flags.FLAGS.config, flags.FLAGS.workdir)))


if __name__ == '__main__':
  # Flags are defined here, not at import, so modules importing this one define no clashing flags.
  config_flags.DEFINE_config_file('config', None, 'configs/keyframe_diagnosis.py[:preset]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/keyframe_diagnosis', 'where results go (resumes if it holds a run)')
  app.run(main)
