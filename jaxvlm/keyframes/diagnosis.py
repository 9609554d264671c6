"""The keyframe diagnosis (Ok & Lee) per batch: oracles, SigLIP relevance, every selector at every k,
the Video-LLM's answer from just the selected frames; and the summary of a run's records.

Per sample, over a pool of N candidate frames spread uniformly over the video:
  1. the Video-LLM sees all N frames: clean option log-probs; the causal oracle (drop of log p(answer)
     when the text may not attend to frame f, through the sweep's reuse path), its answer-free variant
     (the predicted option instead), the attention oracle (answer slot -> frame mass), and the text-only
     answer (Language-to-Video knocked out in every layer: Language Independence);
  2. SigLIP relevance of each frame to the question and to question + options;
  3. every selector picks k frames for every k; the Video-LLM answers from a prompt with just those k
     frames.
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib
from collections.abc import Mapping
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import benchmark_scores, prompts, runs, sharding, stats
from jaxvlm.keyframes import learned as learned_lib
from jaxvlm.keyframes import metrics, relevance, selector_model, selectors, teacher
from jaxvlm.keyframes.candidates import Candidates, layer_range
from jaxvlm.knockout import engine as sweep
from jaxvlm.knockout import specs as knockout

# Selector name -> (the per-frame scores it reads, the selector function).
SELECTORS = {
  'oracle_top': ('causal', 'top_k'),
  'oracle_bottom': ('causal', 'bottom_k'),
  'answer_free_top': ('answer_free', 'top_k'),
  'attention_top': ('attention', 'top_k'),
  'siglip_q': ('siglip_q', 'top_k'),
  'siglip_qo': ('siglip_qo', 'top_k'),
  'bolt': ('siglip_q', 'bolt'),
  'aks': ('siglip_q', 'aks'),
  'uniform': ('siglip_q', 'uniform'),  # reads only N
  'random': ('siglip_q', 'random'),
  'learned': ('learned', 'top_k'),  # experiments.train_selector run in config.selector_checkpoint
}
SCORES = ('causal', 'answer_free', 'attention', 'attention_question', 'siglip_q', 'siglip_qo')


@dataclasses.dataclass(frozen=True)
class Plan:
  """The validated study: selector names, frame budgets, oracle knockout layers (bool [L]) and the
  attention oracle's layer range (0-based, inclusive)."""

  selectors: tuple[str, ...]
  ks: tuple[int, ...]
  oracle_layers: np.ndarray
  attention_range: tuple[int, int]


def plan_from_config(config, num_layers: int) -> Plan:
  """Checks every field that could fail later, before any sample runs."""
  names = tuple(runs.csv_list(config.selectors))
  unknown = [n for n in names if n not in SELECTORS]
  if unknown or not names:
    raise ValueError(f'unknown selectors {unknown}; expected some of {sorted(SELECTORS)}')
  ks = tuple(int(k) for k in runs.csv_list(config.ks))
  bad = [k for k in ks if not 1 <= k <= config.num_candidates]
  if bad or not ks:
    raise ValueError(f'ks {bad or ks} must lie in 1..num_candidates={config.num_candidates}')
  if 'learned' in names and not config.get('selector_checkpoint'):
    raise ValueError('selector learned needs selector_checkpoint (an experiments.train_selector workdir)')
  if config.sensitive_k not in ks:
    raise ValueError(f'sensitive_k={config.sensitive_k} is not one of ks {ks}')
  first, last = layer_range(config.oracle_layers, num_layers, 'oracle_layers')
  layers = knockout.window(num_layers, first, last - first + 1)
  return Plan(names, ks, layers, layer_range(config.attention_layers, num_layers, 'attention_layers'))


def select(name: str, scores: dict[str, np.ndarray], k: int, config, sample_id: str) -> np.ndarray:
  source, fn = SELECTORS[name]
  s = scores[source]
  if fn == 'bolt':
    return selectors.bolt(s, k, alpha=config.bolt_alpha)
  if fn == 'aks':
    return selectors.aks(s, k, max_depth=config.aks_depth, threshold=config.aks_threshold)
  if fn == 'random':
    return selectors.random(s, k, seed=zlib.crc32(sample_id.encode()) ^ config.seed)
  return selectors.SELECTORS[fn](s, k)


# ---------------------------------------------------------------- model calls


def oracles(
  model, params, batch: runs.ModelBatch, cands: Sequence[Candidates], plan: Plan, config
) -> dict[str, np.ndarray]:
  """Clean and text-only option log-probs [B, O] and the oracles' per-frame scores [B, N] of a batch
  (B may exceed len(cands): rows padded for the mesh repeat the last sample)."""
  n = config.num_candidates
  clean = sweep.clean_run(
    model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index, batch.option_ids
  )
  clean_logp = sharding.to_host(clean.option_logprobs)
  cands = list(cands) + [cands[-1]] * (len(clean_logp) - len(cands))
  answers = np.asarray([c.sample.answer for c in cands])
  causal = relevance.causal_relevance(
    model,
    params,
    clean,
    batch.layout,
    batch.answer_index,
    batch.option_ids,
    n,
    answers,
    plan.oracle_layers,
    config.tail_multiple,
  )
  predicted = relevance.predicted_option(clean_logp, [len(c.sample.options) for c in cands])
  num_layers = model.config.text.num_hidden_layers
  lv = knockout.stack_specs([knockout.knockout_spec('LV', knockout.all_layers(num_layers), n)])
  text_only = sweep.run_sweep(
    model,
    params,
    clean,
    batch.layout,
    batch.answer_index,
    batch.option_ids,
    jax.tree.map(jnp.asarray, lv),
    config.tail_multiple,
  )
  attn = relevance.attention_relevance(model, params, clean, batch.layout, batch.answer_index, n, config.tail_multiple)
  return {
    'clean': clean_logp,
    'text_only': sharding.to_host(text_only)[0],
    'causal': causal.relevance,
    'answer_free': relevance.logp_drop(clean_logp, causal.knocked_logp, predicted),
    'attention': relevance.layer_average(attn.last, *plan.attention_range),
    'attention_question': relevance.layer_average(attn.question, *plan.attention_range),
    'attention_per_layer': attn.last,
  }


def k_frame_logprobs(
  model,
  params,
  processor,
  cands: Sequence[Candidates],
  selections: list[dict[str, dict[int, np.ndarray]]],
  plan: Plan,
  mesh,
) -> list[dict]:
  """Per sample {selector: {k: option log-probs [O]}} from prompts holding only the selected frames;
  one batch per k (every selector of every sample), split over the mesh."""
  out: list[dict[str, dict[int, np.ndarray]]] = [{name: {} for name in plan.selectors} for _ in cands]
  for k in plan.ks:
    jobs = [(i, name) for i in range(len(cands)) for name in plan.selectors]
    prompt_k = [runs.prompt_for_pixels(processor, c.sample.question, c.sample.options, c.pixels[:k]) for c in cands]
    batch = runs.collate(
      [runs.Prepared(cands[i].sample, prompt_k[i], cands[i].pixels[selections[i][name][k]]) for i, name in jobs],
      processor,
      runs.batch_multiple(mesh),
    )
    batch = runs.place_batch(batch, mesh)
    with sharding.activation_rules(mesh):
      logp = sharding.to_host(
        prompts.answer_logprobs(
          model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index, batch.option_ids
        )
      )
    for row, (i, name) in enumerate(jobs):
      out[i][name][k] = logp[row, : len(cands[i].sample.options)]
  return out


def evaluate_batch(
  model,
  params,
  processor,
  siglip: relevance.LoadedSiglip,
  cands: Sequence[Candidates],
  plan: Plan,
  config,
  learned: learned_lib.TrainedSelector | None = None,
  mesh=None,
) -> list[dict]:
  """The per-sample records of a batch of prepared samples. siglip: (model, params, processor);
  learned: the trained selector behind selector 'learned'; mesh: where `params` live (default: this
  process's first device). SigLIP runs on this process's default device (the same on every process)."""
  mesh = sharding.make_mesh(devices=jax.local_devices()[:1]) if mesh is None else mesh
  prepared = [runs.Prepared(c.sample, c.prompt, c.pixels) for c in cands]
  batch = runs.place_batch(runs.collate(prepared, processor, runs.batch_multiple(mesh)), mesh)
  with sharding.activation_rules(mesh):
    out = oracles(model, params, batch, cands, plan, config)
  records, selections = [], []
  for i, c in enumerate(cands):
    sig = relevance.siglip_relevance(*siglip, c.frames, relevance.query_texts(c.sample.question, c.sample.options))
    scores = {name: out[name][i] for name in SCORES if name in out}
    scores.update(siglip_q=sig[:, 0], siglip_qo=sig[:, 1])
    if learned is not None:
      emb = teacher.siglip_features(
        *learned.siglip, c.frames, relevance.query_texts(c.sample.question, c.sample.options)[1]
      )
      scores['learned'] = selector_model.scores(learned.model, learned.params, *emb)
    selections.append(
      {name: {k: select(name, scores, k, config, c.sample.id) for k in plan.ks} for name in plan.selectors}
    )
    n = len(c.sample.options)
    records.append(
      {
        'id': c.sample.id,
        'task': c.sample.task,
        'answer': c.sample.answer,
        'video': c.sample.video,
        'candidates': c.indices,
        'evidence': c.evidence,
        'clean': out['clean'][i, :n],
        'text_only': out['text_only'][i, :n],
        'scores': scores,
        'attention_per_layer': out['attention_per_layer'][i],
      }
    )
  k_logp = k_frame_logprobs(model, params, processor, cands, selections, plan, mesh)
  for r, sel, logp in zip(records, selections, k_logp):
    r['selections'] = {name: {str(k): idx for k, idx in per_k.items()} for name, per_k in sel.items()}
    r['k_logp'] = {name: {str(k): lp for k, lp in per_k.items()} for name, per_k in logp.items()}
  return records


# ---------------------------------------------------------------- summary


def _correct(logp, answer: int) -> bool:
  return int(np.argmax(logp)) == answer


def condition_name(selector: str, k: int) -> str:
  """A (selector, k) condition as score rows name it: 'siglip_q/k=4'."""
  return f'{selector}/k={k}'


def summarize(
  records: list[dict],
  plan: Plan,
  sensitive_k: int,
  benchmark: str = '',
  metas: Mapping[str, Mapping[str, str]] | None = None,
  num_resamples: int = stats.DEFAULT_RESAMPLES,
) -> dict:
  """One row per (selector, k): accuracy (all samples and the frame-sensitive subset) with its bootstrap
  95 % interval, the paired change against clean (all candidates) with its interval and exact McNemar p,
  recall@k and nDCG@k against the causal oracle, recall@k against the ground-truth evidence frames. The
  header holds clean / text-only accuracy (with intervals), the frame-sensitive share, mean Spearman
  correlations with the causal oracle, and 'scores': one row per (condition, group) — clean, text_only
  and every selector/k, overall, per task and the benchmark's official aggregates (`benchmark_scores`;
  `metas` maps sample id -> VideoQASample.meta for the fields they group by)."""
  ok, header = benchmark_scores.split_failures(records)  # sorted by id
  if not ok:
    return {'header': {**header, 'clean_accuracy': None}, 'rows': []}
  answers = [r['answer'] for r in ok]
  correct = lambda name, k: np.asarray([_correct(r['k_logp'][name][str(k)], a) for r, a in zip(ok, answers)])
  no_frames = np.asarray([_correct(r['text_only'], a) for r, a in zip(ok, answers)])
  clean_right = np.asarray([_correct(r['clean'], a) for r, a in zip(ok, answers)])
  boot: dict[str, Any] = dict(num_resamples=num_resamples)
  clean_ci, text_ci = stats.accuracy_interval(clean_right, **boot), stats.accuracy_interval(no_frames, **boot)
  header.update(
    clean_accuracy=float(clean_right.mean()),
    clean_accuracy_low=clean_ci.low,
    clean_accuracy_high=clean_ci.high,
    text_only_accuracy=float(no_frames.mean()),
    text_only_accuracy_low=text_ci.low,
    text_only_accuracy_high=text_ci.high,
  )
  sensitive = np.zeros(len(ok), bool)
  if {'oracle_top', 'oracle_bottom'} <= set(plan.selectors):
    sensitive = metrics.frame_sensitive(
      correct('oracle_top', sensitive_k), correct('oracle_bottom', sensitive_k), no_frames
    )
    header['frame_selection_sensitivity'] = {
      str(k): float(metrics.frame_selection_sensitivity(correct('oracle_top', k), correct('oracle_bottom', k)).mean())
      for k in plan.ks
    }
    header.update(
      frame_sensitive_k=sensitive_k,
      frame_sensitive_share=float(sensitive.mean()),
      num_frame_sensitive=int(sensitive.sum()),
    )
  header['spearman_vs_causal'] = {
    name: float(np.nanmean([metrics.spearman(r['scores'][name], r['scores']['causal']) for r in ok]))
    for name in SCORES
    if name != 'causal'
  }
  rows = []
  causal = [np.asarray(r['scores']['causal']) for r in ok]
  conditions = {condition_name(name, k): correct(name, k) for name in plan.selectors for k in plan.ks}
  hits = np.stack(list(conditions.values()))  # [selectors x ks, B]
  acc, change = stats.accuracy_interval(hits, **boot), stats.paired_change_interval(clean_right, hits, **boot)
  p = np.asarray(stats.mcnemar_exact(clean_right, hits))  # [N]
  # hits is [N, B], so every field is an array [N] (np.asarray only tells the type checker).
  acc_low, acc_high = np.asarray(acc.low), np.asarray(acc.high)
  change_est, change_low, change_high = (np.asarray(x) for x in (change.estimate, change.low, change.high))
  for name in plan.selectors:
    for k in plan.ks:
      sel = [np.asarray(r['selections'][name][str(k)]) for r in ok]
      hit = correct(name, k)
      i = list(conditions).index(condition_name(name, k))
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN means (no evidence frames) stay NaN
        rows.append(
          {
            'selector': name,
            'k': k,
            'accuracy': float(hit.mean()),
            'accuracy_low': acc_low[i],
            'accuracy_high': acc_high[i],
            'change': change_est[i],
            'change_low': change_low[i],
            'change_high': change_high[i],
            'mcnemar_p': p[i],
            'accuracy_frame_sensitive': float(np.mean(hit[sensitive])) if sensitive.any() else float('nan'),
            'recall_oracle': float(
              np.mean([metrics.recall_at_k(s, selectors.top_k(c, k)) for s, c in zip(sel, causal)])
            ),
            'ndcg_oracle': float(np.nanmean([metrics.ndcg_at_k(s, c) for s, c in zip(sel, causal)])),
            'recall_evidence': float(np.nanmean([metrics.recall_at_k(s, r['evidence']) for s, r in zip(sel, ok)])),
          }
        )
  metas = metas or {}
  header['benchmark'] = benchmark
  header['scores'] = benchmark_scores.score_rows(
    benchmark,
    [r.get('task', '') for r in ok],
    [metas.get(r['id'], {}) for r in ok],
    {'clean': clean_right, 'text_only': no_frames, **conditions},
    **boot,
  )
  return {'header': header, 'rows': rows}


def format_table(summary: dict) -> str:
  """The header numbers and one line per (selector, k)."""
  h = summary['header']
  if h.get('clean_accuracy') is None:
    return f"samples: {h['num_samples']}  failed: {h['num_failed']}  (nothing to summarise)"
  ci = lambda key: (
    f"{h[key]:.4f} [{h[key + '_low']:.4f}, {h[key + '_high']:.4f}]" if key + '_low' in h else f'{h[key]:.4f}'
  )
  lines = [
    f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy (all candidates): "
    f"{ci('clean_accuracy')}  text-only accuracy: {ci('text_only_accuracy')}"
  ]
  lines += benchmark_scores.official_line(h)
  if 'frame_sensitive_share' in h:
    lines.append(
      f"frame-sensitive share (k={h['frame_sensitive_k']}): {h['frame_sensitive_share']:.4f} "
      f"({h['num_frame_sensitive']} samples)  FSS by k: "
      + ', '.join(f'{k}: {v:.3f}' for k, v in h['frame_selection_sensitivity'].items())
    )
  lines.append('Spearman vs causal oracle: ' + ', '.join(f'{k}: {v:.3f}' for k, v in h['spearman_vs_causal'].items()))
  cols = [
    'selector',
    'k',
    'accuracy',
    'accuracy_low',
    'accuracy_high',
    'change',
    'mcnemar_p',
    'accuracy_frame_sensitive',
    'recall_oracle',
    'ndcg_oracle',
    'recall_evidence',
  ]
  lines += benchmark_scores.fixed_width_lines(summary['rows'], cols, 16)
  return '\n'.join(lines)
