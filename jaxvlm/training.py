"""The one training path: train state, optimizer, checkpoint managers, metrics log, loss plots and the
loop, shared by the embedded default's two stages (`jaxvlm.tiny.stages`) and the learned keyframe
selector (`jaxvlm.keyframes.selector_training`).

Resuming is exact: the loop restarts from the latest orbax checkpoint, the metrics log drops what the
killed run wrote after it, and the caller's `make_batch(step)` is a pure function of the step, so a
resumed run replays the batches an uninterrupted one sees.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from tqdm import tqdm

from jaxvlm import runs, sharding
from jaxvlm.plotting import plt, save_figure


@struct.dataclass
class TrainState:
  """step: steps done (int32 scalar); params and opt_state: pytrees."""

  step: jnp.ndarray
  params: Any
  opt_state: Any


def optimizer(
  lr: float, warmup: int, steps: int, weight_decay: float, clip: float | None = None, end_fraction: float = 0.0
) -> optax.GradientTransformation:
  """AdamW with linear warmup from 0 and cosine decay to `end_fraction` x lr, after global-norm
  clipping when `clip` is given."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * end_fraction)
  adamw = optax.adamw(schedule, weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw


def create_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def apply_grads(state: TrainState, grads: Any, tx: optax.GradientTransformation) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)


def checkpoint_manager(directory: str, keep: int, best_metric: str | None = None) -> ocp.CheckpointManager:
  """An orbax manager at `directory` keeping the last `keep` steps, or, with `best_metric`, the `keep`
  steps with the highest value of that metric (pass `metrics=` to save). Saves are synchronous: a
  step's checkpoint is whole on disk when `save` returns, so a kill never leaves a torn latest step."""
  best = dict(best_fn=lambda m: m[best_metric], best_mode='max') if best_metric else {}
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False, **best)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Any:
  """The latest checkpoint of `manager` restored into `state`'s structure and shardings, else `state`."""
  latest = manager.latest_step()
  if latest is None:
    return state
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  return manager.restore(latest, args=ocp.args.StandardRestore(abstract))


class MetricsLog:
  """metrics.jsonl: one JSON object per line, {'step', ...} (plus 'stage' when given). On open, lines
  of this stage past `resume_step` (written by a killed run after its last checkpoint) and a torn last
  line are dropped, so the file equals an uninterrupted run's; other stages' lines are kept.
  write=False (the processes other than 0 of a multi-process run) keeps this run's records in memory and
  never touches the file."""

  def __init__(self, path: str, resume_step: int, stage: str | None = None, write: bool = True):
    self.path, self.stage, self.write = path, stage, write
    self._memory: list[dict] = []
    kept, changed = [], False
    if write and os.path.isfile(path):
      with open(path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:  # torn last line of a killed run
            changed = True
            continue
          if rec.get('stage') == stage and rec['step'] > resume_step:
            changed = True
            continue
          kept.append(rec)
    if changed:
      with open(path + '.tmp', 'w') as f:
        f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in kept)
      os.replace(path + '.tmp', path)

  def append(self, step: int, **values) -> None:
    rec = {'step': step, **values} if self.stage is None else {'stage': self.stage, 'step': step, **values}
    if not self.write:
      self._memory.append(json.loads(json.dumps(runs.jsonable(rec))))
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(runs.jsonable(rec), sort_keys=True) + '\n')

  def records(self) -> list[dict]:
    """This stage's records (all of them without a stage)."""
    if not self.write:
      return list(self._memory)
    if not os.path.isfile(self.path):  # resumed at the stage's last step: nothing was logged
      return []
    with open(self.path) as f:
      return [r for r in map(json.loads, f) if r.get('stage') == self.stage]


def plot_curves(records: list[dict], path: str, title: str, eval_series: Iterable[tuple[str, str]] = ()) -> str:
  """Training loss (log scale) and, where the records have it, the batch accuracy; with
  `eval_series` ((key, label) of evaluation records), a second panel with those curves."""
  eval_series = list(eval_series)
  fig, axes = plt.subplots(1, 2 if eval_series else 1, figsize=(10 if eval_series else 5, 3.5), squeeze=False)
  ax = axes[0, 0]
  train = [r for r in records if 'loss' in r]
  ax.plot([r['step'] for r in train], [r['loss'] for r in train], label='loss')
  ax.set(xlabel='step', ylabel='loss', title=title, yscale='log')
  if train and 'accuracy' in train[0]:
    twin = ax.twinx()
    twin.plot([r['step'] for r in train], [r['accuracy'] for r in train], 'C1', label='train acc.')
    twin.set(ylabel='train accuracy (batch)', ylim=(0, 1))
  if eval_series:
    ax = axes[0, 1]
    for i, (key, label) in enumerate(eval_series):
      evals = [r for r in records if key in r]
      ax.plot([r['step'] for r in evals], [r[key] for r in evals], '-' if i == 0 else '--', label=label)
    ax.set(xlabel='step', title='validation')
    ax.legend()
  return save_figure(fig, os.path.dirname(path) or '.', os.path.basename(path), dpi=100)


def train_loop(
  state: TrainState,
  step_fn: Callable,
  make_batch: Callable[[int], Any],
  num_steps: int,
  manager: ocp.CheckpointManager,
  log: MetricsLog,
  mesh,
  *,
  log_every: int = 1,
  checkpoint_every: int = 50,
  stop_after: int | None = None,
  desc: str = 'train',
  on_step: Callable[[int, TrainState], None] | None = None,
) -> TrainState:
  """Runs `step_fn(state, batch) -> (state, metrics)` from the latest checkpoint of `manager` to
  `num_steps` (or `stop_after`, a planned early stop that saves no checkpoint, like a kill).

  make_batch(i) is the batch of step i (0-based; it completes step i + 1). State is replicated and
  batches are split over the mesh's sample axes. Every `log_every` steps the metrics are logged;
  `on_step(done, state)` runs after every step (evaluation, best checkpoints); checkpoints are saved
  every `checkpoint_every` steps and at `num_steps`."""
  state = restore_latest(manager, jax.device_put(state, sharding.replicated(mesh)))
  start = int(state.step)
  if start:
    logging.info('%s: resumed from checkpoint step %d', desc, start)
  end = num_steps if stop_after is None or stop_after <= 0 else min(num_steps, stop_after)
  t0, last = time.time(), start
  with tqdm(total=num_steps, initial=start, desc=desc, unit='step', dynamic_ncols=True) as bar:
    for step in range(start, end):
      state, metrics = step_fn(state, sharding.shard_batch(make_batch(step), mesh))
      done = step + 1
      if done % log_every == 0 or done == num_steps:
        values = {k: float(v) for k, v in metrics.items()}
        rate = (done - last) / max(time.time() - t0, 1e-9)
        log.append(done, **values, steps_per_s=rate, resumed_from=start)
        postfix: dict[str, Any] = {k: f'{v:.3f}' for k, v in values.items()}
        bar.set_postfix(**postfix)
        t0, last = time.time(), done
      if on_step is not None:
        on_step(done, state)
      if done % checkpoint_every == 0 or done == num_steps:
        manager.save(done, args=ocp.args.StandardSave(state))
      bar.update(1)
  manager.wait_until_finished()
  return state
