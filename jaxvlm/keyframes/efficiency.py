"""The efficiency run per batch: plans (jaxvlm.models.efficient) x frame budgets x frame selectors.

A sample's N candidate frames are decoded once; each selector picks k of them (uniform: evenly spaced;
siglip: top-k SigLIP relevance to the question; learned: a selector trained by experiments.train_selector)
and the Video-LLM answers from a prompt with just those k frames under every plan. With k = N every
selector keeps every frame, so only 'uniform' is run there. Prefill time and memory are measured per
(plan, k) on one sample (`measure`), FLOPs come from jaxvlm.costs. Validation of the whole grid happens in
`grid_from_config`, before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import numpy as np

from jaxvlm import costs, prompts, runs
from jaxvlm.keyframes import learned as learned_lib
from jaxvlm.keyframes import relevance, selector_model, selectors, teacher
from jaxvlm.keyframes.candidates import Candidates
from jaxvlm.knockout import efficiency as plans_lib
from jaxvlm.models import efficient
from jaxvlm.models.efficient import InferencePlan

SELECTORS = ('uniform', 'siglip', 'learned')


@dataclasses.dataclass(frozen=True)
class Grid:
  """plans (the full model first) with their names, frame budgets, selectors; chosen: the name of the
  plan picked from the knockout run (or None)."""

  plans: tuple[InferencePlan, ...]
  names: tuple[str, ...]
  ks: tuple[int, ...]
  selectors: tuple[str, ...]
  chosen: str | None


def prompt_shape(processor, model_config, num_frames: int) -> costs.PromptShape:
  """Token counts of a typical prompt (4 short options) at num_frames, for costing before any sample."""
  p = prompts.build_prompt(processor, 'What happens in the video?', ['one', 'two', 'three', 'four'], num_frames)
  video = np.flatnonzero(p.group == 1)
  return costs.PromptShape(
    int(video[0]), len(p.input_ids) - int(video[-1]) - 1, num_frames, model_config.tokens_per_frame
  )


def grid_from_config(config, model_config, processor) -> Grid:
  """Every field that could fail later, checked now: explicit plan (exit_layer / intra_frame_layers,
  1-based; exit_layer -1 = none), the knockout workdir (same checkpoint, same depth), extra plans, ks
  (1..num_frames; num_frames itself is always added: the baseline), selectors (learned needs
  selector_checkpoint)."""
  num_layers = model_config.text.num_hidden_layers
  plans = [InferencePlan(num_layers)]
  if config.exit_layer >= 0:
    plans.append(plans_lib.explicit_plan(config.exit_layer, config.intra_frame_layers, num_layers))
  elif config.intra_frame_layers:
    raise ValueError('intra_frame_layers needs exit_layer (within-frame layers lie below the exit)')
  chosen = None
  if config.knockout_workdir:
    summary = plans_lib.read_knockout_run(config.knockout_workdir, config.checkpoint, num_layers)
    plan = plans_lib.choose_plan(
      summary, model_config, prompt_shape(processor, model_config, config.num_frames), config.max_drop
    )
    plans.append(plan)
    chosen = plans_lib.plan_name(plan, num_layers)
  plans += plans_lib.parse_plans(config.plans, num_layers)
  unique = list(dict.fromkeys(plans))
  ks = tuple(int(k) for k in runs.csv_list(config.ks))
  bad = [k for k in ks if not 1 <= k <= config.num_frames]
  if bad or not ks:
    raise ValueError(
      f'frame budgets ks={config.ks!r}: {bad or "none"} outside 1..num_frames={config.num_frames} '
      f'(a budget cannot exceed the frames there are)'
    )
  names = tuple(runs.csv_list(config.selectors))
  unknown = [n for n in names if n not in SELECTORS]
  if unknown or not names:
    raise ValueError(f'unknown selectors {unknown}; expected some of {SELECTORS}')
  if 'learned' in names and not config.selector_checkpoint:
    raise ValueError('selector learned needs selector_checkpoint (an experiments.train_selector workdir)')
  ks = tuple(sorted(set(ks) | {config.num_frames}))  # the full model at every frame is the baseline
  return Grid(tuple(unique), tuple(plans_lib.plan_name(p, num_layers) for p in unique), ks, names, chosen)


def selections(
  cand: Candidates,
  grid: Grid,
  siglip: relevance.LoadedSiglip,
  learned: learned_lib.TrainedSelector | None,
  num_frames: int,
) -> dict[str, dict[int, np.ndarray]]:
  """{selector: {k: frame indices (time order)}} of one sample; k = N keeps every frame (uniform only)."""
  question, with_options = relevance.query_texts(cand.sample.question, cand.sample.options)
  scores = {'uniform': np.zeros(num_frames)}
  if 'siglip' in grid.selectors:
    scores['siglip'] = relevance.siglip_relevance(*siglip, cand.frames, (question,))[:, 0]
  if 'learned' in grid.selectors:
    if learned is None:  # the config check asks for selector_checkpoint whenever 'learned' is chosen
      raise ValueError("selector 'learned' needs a trained selector (config.selector_checkpoint)")
    frame_emb, text_emb = teacher.siglip_features(*learned.siglip, cand.frames, with_options)
    scores['learned'] = selector_model.scores(learned.model, learned.params, frame_emb, text_emb)
  out = {}
  for name in grid.selectors:
    fn = selectors.uniform if name == 'uniform' else selectors.top_k
    out[name] = {k: np.asarray(fn(scores[name], k)) for k in grid.ks if k < num_frames or name == 'uniform'}
  return out


def k_frame_batch(cands: Sequence[Candidates], picks: Sequence[np.ndarray], processor, k: int) -> runs.ModelBatch:
  """Prompts with just the picked k frames of each sample, collated."""
  return runs.collate(
    [
      runs.Prepared(c.sample, prompts.build_prompt(processor, c.sample.question, c.sample.options, k), c.pixels[idx])
      for c, idx in zip(cands, picks)
    ],
    processor,
  )


def _span(model, batch: runs.ModelBatch) -> efficient.VideoSpan:
  return efficient.video_span(
    np.asarray(batch.layout.group), np.asarray(batch.layout.frame), model.config.tokens_per_frame
  )


def _prompt_args(batch: runs.ModelBatch) -> tuple:
  """The batch's arguments of `efficient.option_logprobs` between params and the plan."""
  layout = batch.layout
  return batch.input_ids, batch.pixels, layout.positions, layout.meta(), batch.answer_index, batch.option_ids


def plan_logprobs(model, params, batch: runs.ModelBatch, plan: InferencePlan) -> np.ndarray:
  return np.asarray(efficient.option_logprobs(model, params, *_prompt_args(batch), plan, _span(model, batch)))


def evaluate_batch(
  model,
  params,
  processor,
  siglip: relevance.LoadedSiglip,
  learned,
  cands: Sequence[Candidates],
  grid: Grid,
  num_frames: int,
) -> list[dict]:
  """Per-sample records: option log-probs under every 'plan/selector/k' and the selections."""
  picks = [selections(c, grid, siglip, learned, num_frames) for c in cands]
  records: list[dict[str, Any]] = [
    {
      'id': c.sample.id,
      'task': c.sample.task,
      'answer': c.sample.answer,
      'logp': {},
      'selections': {s: {str(k): idx for k, idx in per.items()} for s, per in pick.items()},
    }
    for c, pick in zip(cands, picks)
  ]
  for k in grid.ks:
    for name in grid.selectors:
      if k not in picks[0][name]:
        continue
      batch = k_frame_batch(cands, [p[name][k] for p in picks], processor, k)
      for plan, plan_name in zip(grid.plans, grid.names):
        logp = plan_logprobs(model, params, batch, plan)
        for i, (c, r) in enumerate(zip(cands, records)):
          r['logp'][f'{plan_name}/{name}/{k}'] = logp[i, : len(c.sample.options)]
  return records


def measure(model, params, processor, cand: Candidates, grid: Grid, num_frames: int, repeats: int) -> tuple[dict, dict]:
  """Per 'plan/k': ({'seconds': fastest of `repeats` prefills of one sample (vision tower + decoder +
  option scores), 'peak_memory_bytes': XLA's arguments + outputs + temporaries of that compiled call},
  {analytical FLOPs and their shares of the full model at num_frames})."""
  timings, flops = {}, {}
  num_layers = model.config.text.num_hidden_layers
  full = None
  for k in sorted(grid.ks, reverse=True):
    batch = k_frame_batch([cand], [selectors.uniform(np.zeros(num_frames), k)], processor, k)
    span = _span(model, batch)
    answer = int(batch.answer_index[0])
    shape = costs.PromptShape(span.start, answer + 1 - span.start - span.num_tokens, k, model.config.tokens_per_frame)
    if full is None:
      full = costs.prefill_cost(model.config, InferencePlan(num_layers), dataclasses.replace(shape, frames=num_frames))
    args = (model, params, *_prompt_args(batch))
    # One compile per plan serves the timing and XLA's memory analysis; the plans are timed in turns, so
    # a shared machine's load hits them alike, and the fastest run of each counts.
    compiled = [efficient.option_logprobs.lower(*args, plan, span).compile() for plan in grid.plans]
    runs_ = [functools.partial(lambda c: jax.block_until_ready(c(*args[1:])), c) for c in compiled]
    seconds: list[list[float]] = [[] for _ in grid.plans]
    for fn in runs_:
      fn()
    for _ in range(repeats):
      for fn, out in zip(runs_, seconds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    for plan, name, c, sec in zip(grid.plans, grid.names, compiled, seconds):
      mem = c.memory_analysis()
      peak = (
        sum(getattr(mem, f, 0) or 0 for f in ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes'))
        if mem is not None
        else float('nan')
      )
      timings[f'{name}/{k}'] = {'seconds': min(sec), 'peak_memory_bytes': peak}
      cost = costs.prefill_cost(model.config, plan, shape)
      flops[f'{name}/{k}'] = {
        'attention': cost.attention,
        'total': cost.total,
        'linear': cost.linear,
        'vision': cost.vision,
        'attention_share': cost.attention / full.attention,
        'total_share': cost.total / full.total,
      }
  return timings, flops
