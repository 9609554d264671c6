r"""Train the learned keyframe selector from the Video-LLM's own causal frame relevance.

  python -m experiments.train_selector --config=configs/train_selector.py[:preset] --workdir=DIR \
      [--config.num_steps=500 --config.tau=0.5 ...]

Labels every sample not yet in the teacher cache, then trains (or resumes) the selector; what each
part does: `jaxvlm.keyframes.selector_training`. Every `eval_every` steps the held-out ids are scored.
Orbax checkpoints: workdir/checkpoints (latest `keep`, resumed from) and workdir/best (the best by
validation recall@k). Writes config.json, metrics.jsonl, summary.json/csv and loss_curve.png.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from jaxvlm import config_checks, distributed, runs, sharding, training
from jaxvlm.keyframes import config_fields, learned, selector_model
from jaxvlm.keyframes import selector_training as st


@distributed.guarded
def run(config, workdir: str) -> dict:
  """Labels (or reuses labels), trains or resumes, returns the summary dict.

  Multi-process: the teacher runs on `config.mesh` (see `selector_training.build_labels`); the selector
  trains data-parallel over every process's devices (the same batches, so the same curve as one
  process); process 0 writes metrics, plots and the summary. workdir must be shared by the processes.
  """
  config_checks.check(config, config_fields.TRAIN_SELECTOR)  # every field, before anything is loaded
  distributed.initialize()
  if distributed.is_main():
    runs.prepare_workdir(workdir, config, config_fields.TRAIN_SELECTOR)  # lock, bind to the config
  distributed.barrier('workdir')
  train, val, evidence, failures = st.load_labels(config, workdir)
  devices = jax.devices() if config.num_devices < 0 else jax.devices()[: config.num_devices]
  mesh = sharding.make_mesh(devices=devices)
  if config.batch_size % len(devices):
    raise ValueError(f'batch_size={config.batch_size} is not a multiple of the {len(devices)} devices')
  model = learned.selector_from_config(config)
  hp = st.Hyper.from_config(config)
  tx = st.make_optimizer(hp)
  params = selector_model.init_params(model, config.num_candidates, train['frame_emb'].shape[-1], config.seed)
  latest = training.checkpoint_manager(os.path.join(workdir, 'checkpoints'), config.keep)
  best = learned.best_manager(workdir)
  log = training.MetricsLog(
    os.path.join(workdir, 'metrics.jsonl'), latest.latest_step() or 0, write=distributed.is_main()
  )

  def validate(done: int, state: training.TrainState) -> None:
    if done % config.eval_every == 0 or done == config.num_steps:
      m = st.evaluate(model, state.params, val, evidence, config.k)
      log.append(done, **m)
      if done not in best.all_steps():
        best.save(done, args=ocp.args.StandardSave(state.params), metrics=m)

  training.train_loop(
    training.create_state(params, tx),
    lambda s, b: st.train_step(model, hp, tx, s, b),
    lambda i: st.step_batch(train, i + 1, config.batch_size, config.seed),
    config.num_steps,
    latest,
    log,
    mesh,
    checkpoint_every=config.checkpoint_every,
    stop_after=config.stop_after_steps,
    desc='train',
    on_step=validate,
  )
  best.wait_until_finished()
  records = log.records()
  if distributed.is_main():
    training.plot_curves(
      records,
      os.path.join(workdir, 'loss_curve.png'),
      'training loss',
      eval_series=(('val_recall', 'learned'), ('siglip_recall', 'SigLIP top-k')),
    )
  evals = [r for r in records if 'val_recall' in r]
  end = config.num_steps if config.stop_after_steps <= 0 else min(config.num_steps, config.stop_after_steps)
  summary = {
    'step': end,
    'num_train': len(train['relevance']),
    'num_val': len(val['relevance']),
    'num_devices': len(devices),
    'best_step': best.best_step(),
    'labelling_failures': [{'id': i, 'error': e} for i, e in failures],
    'final': evals[-1] if evals else None,
  }
  if distributed.is_main():
    runs.write_summary(workdir, summary, evals)
  runs.finish_run(workdir)
  return summary


def main(argv):
  del argv
  summary = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps(runs.jsonable(summary), indent=1))


if __name__ == '__main__':
  # Flags are defined here, not at import, so modules importing this one define no clashing flags.
  config_flags.DEFINE_config_file('config', None, 'configs/train_selector.py[:preset]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/train_selector', 'where results go (resumes if it holds a run)')
  app.run(main)
