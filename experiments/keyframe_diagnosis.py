r"""Keyframe diagnosis (Ok & Lee): where does the Video-LLM look, and do keyframe samplers guided by
SigLIP query-frame similarity pick those frames?

  python -m experiments.keyframe_diagnosis --config=configs/keyframe_diagnosis.py[:preset] --workdir=DIR \
      [--config.max_samples=50 --config.ks=1,2,4 ...]

Per sample, over a pool of N candidate frames spread uniformly over the video:
  1. the Video-LLM sees all N frames: clean option log-probs; the causal oracle (drop of log p(answer)
     when the text may not attend to frame f, through the sweep's reuse path), its answer-free variant
     (the predicted option instead), the attention oracle (answer slot -> frame mass), and the text-only
     answer (Language-to-Video knocked out in every layer: Language Independence);
  2. SigLIP relevance of each frame to the question and to question + options;
  3. every selector picks k frames for every k; the Video-LLM answers from a prompt with just those k
     frames.
Writes config.json, samples.jsonl (resumable), summary.json/csv (one row per selector and k) and plots:
accuracy vs k, recall@k vs k, and frame strips with oracle and SigLIP scores.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from experiments import common, keyframe_plots, learned_selector, results
from jaxvlm import checkpoints, data, knockout, prompts, sweep, video
from jaxvlm.keyframes import metrics, relevance, selector_model, selectors, teacher

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
    'uniform': ('siglip_q', 'uniform'),   # reads only N
    'random': ('siglip_q', 'random'),
    'learned': ('learned', 'top_k'),     # experiments.train_selector run in config.selector_checkpoint
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


def layer_range(text: str, num_layers: int, field: str) -> tuple[int, int]:
  """'' -> all layers; 'a-b' -> (a, b), 0-based inclusive."""
  if not text:
    return 0, num_layers - 1
  try:
    first, last = (int(x) for x in text.split('-'))
  except ValueError:
    raise ValueError(f"{field}={text!r}: expected '' or 'first-last'") from None
  if not 0 <= first <= last < num_layers:
    raise ValueError(f'{field}={text!r} outside the layers 0..{num_layers - 1}')
  return first, last


def plan_from_config(config, num_layers: int) -> Plan:
  """Checks every field that could fail later, before any sample runs."""
  names = tuple(common.csv_list(config.selectors))
  unknown = [n for n in names if n not in SELECTORS]
  if unknown or not names:
    raise ValueError(f'unknown selectors {unknown}; expected some of {sorted(SELECTORS)}')
  ks = tuple(int(k) for k in common.csv_list(config.ks))
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


# ---------------------------------------------------------------- per-sample inputs

@dataclasses.dataclass(frozen=True)
class Candidates:
  """A sample with its candidate pool: prompt over all N frames, LLaVA pixels [N, H, W, C], the decoded
  frames uint8 [N, h, w, 3] (for SigLIP), their frame indices [N] and the candidate positions of the
  ground-truth evidence frames (empty when the benchmark has none)."""
  sample: data.VideoQASample
  prompt: prompts.Prompt
  pixels: np.ndarray
  frames: np.ndarray
  indices: np.ndarray
  evidence: np.ndarray


def prepare(samples: Sequence[data.VideoQASample], processor, config
            ) -> tuple[list[Candidates], list[tuple[str, str]]]:
  """Decodes the pool of each sample; a failing sample becomes (id, reason), never a crash."""
  ok, failed = [], []
  for s in samples:
    try:
      if s.answer is None:
        raise ValueError('no answer: the diagnosis needs labelled samples')
      frames = video.sample_frames(s.video, config.num_candidates, rule='pool')
      if len(frames.indices) < config.num_candidates:
        raise ValueError(f'video has {len(frames.indices)} frames, fewer than the '
                         f'{config.num_candidates} candidates')
      evidence = np.flatnonzero(np.isin(frames.indices, s.evidence_frames or []))
      ok.append(Candidates(s, prompts.build_prompt(processor, s.question, s.options, config.num_candidates),
                           processor.preprocess(frames.pixels), frames.pixels, frames.indices, evidence))
    except Exception as e:  # pylint: disable=broad-except  # recorded per sample, the run goes on
      failed.append((s.id, f'{type(e).__name__}: {e}'))
  return ok, failed


# ---------------------------------------------------------------- model calls

@functools.partial(jax.jit, static_argnames=('model',))
def answer_logprobs(model, params, input_ids, pixels, layout: knockout.TokenLayout, answer_index, option_ids):
  """Option log-probs [B, O] of a clean forward of prompts input_ids [B, S] with pixels [B, k, ...]."""
  out = model.apply({'params': params}, input_ids, pixels, layout.positions, layout.meta())
  return sweep.option_logprobs(model, params, out.hidden[jnp.arange(input_ids.shape[0]), answer_index],
                               option_ids)


def oracles(model, params, batch: common.ModelBatch, cands: Sequence[Candidates], plan: Plan, config
            ) -> dict[str, np.ndarray]:
  """Clean and text-only option log-probs [B, O] and the oracles' per-frame scores [B, N] of a batch."""
  n = config.num_candidates
  clean = sweep.clean_run(model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index,
                          batch.option_ids)
  clean_logp = np.asarray(clean.option_logprobs)
  answers = np.asarray([c.sample.answer for c in cands])
  causal = relevance.causal_relevance(model, params, clean, batch.layout, batch.answer_index,
                                      batch.option_ids, n, answers, plan.oracle_layers, config.tail_multiple)
  predicted = relevance.predicted_option(clean_logp, [len(c.sample.options) for c in cands])
  num_layers = model.config.text.num_hidden_layers
  lv = knockout.stack_specs([knockout.knockout_spec('LV', knockout.all_layers(num_layers), n)])
  text_only = sweep.run_sweep(model, params, clean, batch.layout, batch.answer_index, batch.option_ids,
                              jax.tree.map(jnp.asarray, lv), config.tail_multiple)
  attn = relevance.attention_relevance(model, params, clean, batch.layout, batch.answer_index, n,
                                       config.tail_multiple)
  return {'clean': clean_logp, 'text_only': np.asarray(text_only[0]), 'causal': causal.relevance,
          'answer_free': relevance.logp_drop(clean_logp, causal.knocked_logp, predicted),
          'attention': relevance.layer_average(attn.last, *plan.attention_range),
          'attention_question': relevance.layer_average(attn.question, *plan.attention_range),
          'attention_per_layer': attn.last}


def k_frame_logprobs(model, params, processor, cands: Sequence[Candidates],
                     selections: list[dict[str, dict[int, np.ndarray]]], plan: Plan) -> list[dict]:
  """Per sample {selector: {k: option log-probs [O]}} from prompts holding only the selected frames;
  one batch per k (every selector of every sample)."""
  out = [{name: {} for name in plan.selectors} for _ in cands]
  for k in plan.ks:
    jobs = [(i, name) for i in range(len(cands)) for name in plan.selectors]
    prompt_k = [prompts.build_prompt(processor, c.sample.question, c.sample.options, k) for c in cands]
    batch = common.collate([common.Prepared(cands[i].sample, prompt_k[i], cands[i].pixels[selections[i][name][k]])
                            for i, name in jobs], processor)
    logp = np.asarray(answer_logprobs(model, params, batch.input_ids, batch.pixels, batch.layout,
                                      batch.answer_index, batch.option_ids))
    for row, (i, name) in enumerate(jobs):
      out[i][name][k] = logp[row, :len(cands[i].sample.options)]
  return out


def evaluate_batch(model, params, processor, siglip, cands: Sequence[Candidates], plan: Plan, config,
                   learned: learned_selector.TrainedSelector | None = None) -> list[dict]:
  """The per-sample records of a batch of prepared samples. siglip: (model, params, processor);
  learned: the trained selector behind selector 'learned'."""
  batch = common.collate(cands, processor)
  out = oracles(model, params, batch, cands, plan, config)
  records, selections = [], []
  for i, c in enumerate(cands):
    sig = relevance.siglip_relevance(*siglip, c.frames, relevance.query_texts(c.sample.question, c.sample.options))
    scores = {name: out[name][i] for name in SCORES if name in out}
    scores.update(siglip_q=sig[:, 0], siglip_qo=sig[:, 1])
    if learned is not None:
      emb = teacher.siglip_features(*learned.siglip, c.frames, relevance.query_texts(c.sample.question,
                                                                                     c.sample.options)[1])
      scores['learned'] = selector_model.scores(learned.model, learned.params, *emb)
    selections.append({name: {k: select(name, scores, k, config, c.sample.id) for k in plan.ks}
                       for name in plan.selectors})
    n = len(c.sample.options)
    records.append({'id': c.sample.id, 'task': c.sample.task, 'answer': c.sample.answer, 'video': c.sample.video,
                    'candidates': c.indices, 'evidence': c.evidence, 'clean': out['clean'][i, :n],
                    'text_only': out['text_only'][i, :n], 'scores': scores,
                    'attention_per_layer': out['attention_per_layer'][i]})
  k_logp = k_frame_logprobs(model, params, processor, cands, selections, plan)
  for r, sel, logp in zip(records, selections, k_logp):
    r['selections'] = {name: {str(k): idx for k, idx in per_k.items()} for name, per_k in sel.items()}
    r['k_logp'] = {name: {str(k): lp for k, lp in per_k.items()} for name, per_k in logp.items()}
  return records


# ---------------------------------------------------------------- the run

def run(config, workdir: str) -> dict:
  """Runs (or resumes) the diagnosis; returns the summary dict."""
  model, params, processor = common.load_model(config)
  plan = plan_from_config(config, model.config.text.num_hidden_layers)  # validated before any compute
  siglip = checkpoints.load_pretrained(config.siglip_checkpoint, dtype=jnp.dtype(config.dtype))
  learned = learned_selector.load_trained(config.selector_checkpoint) if 'learned' in plan.selectors else None
  if learned is not None and learned.num_candidates != config.num_candidates:
    raise ValueError(f'the selector in {config.selector_checkpoint} was trained on {learned.num_candidates} '
                     f'candidates, the diagnosis uses num_candidates={config.num_candidates}')
  results.prepare_workdir(workdir, config)
  samples, skipped = common.load_samples(config, workdir)
  log = results.SampleLog(os.path.join(workdir, 'samples.jsonl'))
  for sample_id, reason in skipped:
    if sample_id not in log:
      log.append({'id': sample_id, 'error': f'annotation: {reason}'})
  todo = [s for s in samples if s.id not in log]
  logging.info('%d samples, %d done, %d to run, %d candidates, selectors %s, k %s', len(samples),
               len(samples) - len(todo), len(todo), config.num_candidates, plan.selectors, plan.ks)
  start = time.time()
  with tqdm(total=len(todo), unit='sample', desc='keyframes', dynamic_ncols=True) as bar:
    for chunk in common.batches(todo, config.batch_size):
      cands, failed = prepare(chunk, processor, config)
      for sample_id, reason in failed:
        log.append({'id': sample_id, 'error': reason})
      if cands:
        for record in evaluate_batch(model, params, processor, siglip, cands, plan, config, learned):
          log.append(record)
      bar.update(len(chunk))
      bar.set_postfix(samples_per_s=f'{bar.n / max(time.time() - start, 1e-9):.2f}')
  summary = summarize(log.records(), plan, config.sensitive_k)
  results.write_summary(workdir, summary['header'], summary['rows'])
  keyframe_plots.diagnosis_plots(summary, log.records(), workdir, config.strip_samples)
  return summary


def _correct(logp, answer: int) -> bool:
  return int(np.argmax(logp)) == answer


def summarize(records: list[dict], plan: Plan, sensitive_k: int) -> dict:
  """One row per (selector, k): accuracy (all samples and the frame-sensitive subset), recall@k and
  nDCG@k against the causal oracle, recall@k against the ground-truth evidence frames. The header holds
  clean / text-only accuracy, the frame-sensitive share and mean Spearman correlations with the
  causal oracle."""
  ok = [r for r in records if 'error' not in r]
  header = {'num_samples': len(ok), 'num_failed': len(records) - len(ok),
            'failures': [{'id': r['id'], 'error': r['error']} for r in records if 'error' in r]}
  if not ok:
    return {'header': {**header, 'clean_accuracy': None}, 'rows': []}
  answers = [r['answer'] for r in ok]
  correct = lambda name, k: np.asarray([_correct(r['k_logp'][name][str(k)], a) for r, a in zip(ok, answers)])
  no_frames = np.asarray([_correct(r['text_only'], a) for r, a in zip(ok, answers)])
  header.update(clean_accuracy=float(np.mean([_correct(r['clean'], a) for r, a in zip(ok, answers)])),
                text_only_accuracy=float(no_frames.mean()))
  sensitive = np.zeros(len(ok), bool)
  if {'oracle_top', 'oracle_bottom'} <= set(plan.selectors):
    sensitive = metrics.frame_sensitive(correct('oracle_top', sensitive_k), correct('oracle_bottom', sensitive_k),
                                        no_frames)
    header['frame_selection_sensitivity'] = {
        str(k): float(metrics.frame_selection_sensitivity(correct('oracle_top', k),
                                                          correct('oracle_bottom', k)).mean()) for k in plan.ks}
    header.update(frame_sensitive_k=sensitive_k, frame_sensitive_share=float(sensitive.mean()),
                  num_frame_sensitive=int(sensitive.sum()))
  header['spearman_vs_causal'] = {
      name: float(np.nanmean([metrics.spearman(r['scores'][name], r['scores']['causal']) for r in ok]))
      for name in SCORES if name != 'causal'}
  rows = []
  causal = [np.asarray(r['scores']['causal']) for r in ok]
  for name in plan.selectors:
    for k in plan.ks:
      sel = [np.asarray(r['selections'][name][str(k)]) for r in ok]
      hit = correct(name, k)
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN means (no evidence frames) stay NaN
        rows.append({
            'selector': name, 'k': k, 'accuracy': float(hit.mean()),
            'accuracy_frame_sensitive': float(np.mean(hit[sensitive])) if sensitive.any() else float('nan'),
            'recall_oracle': float(np.mean([metrics.recall_at_k(s, selectors.top_k(c, k))
                                            for s, c in zip(sel, causal)])),
            'ndcg_oracle': float(np.nanmean([metrics.ndcg_at_k(s, c) for s, c in zip(sel, causal)])),
            'recall_evidence': float(np.nanmean([metrics.recall_at_k(s, r['evidence'])
                                                 for s, r in zip(sel, ok)]))})
  return {'header': header, 'rows': rows}


def format_table(summary: dict) -> str:
  """The header numbers and one line per (selector, k)."""
  h = summary['header']
  if h.get('clean_accuracy') is None:
    return f"samples: {h['num_samples']}  failed: {h['num_failed']}  (nothing to summarise)"
  lines = [f"samples: {h['num_samples']}  failed: {h['num_failed']}  clean accuracy (all candidates): "
           f"{h['clean_accuracy']:.4f}  text-only accuracy: {h['text_only_accuracy']:.4f}"]
  if 'frame_sensitive_share' in h:
    lines.append(f"frame-sensitive share (k={h['frame_sensitive_k']}): {h['frame_sensitive_share']:.4f} "
                 f"({h['num_frame_sensitive']} samples)  FSS by k: "
                 + ', '.join(f'{k}: {v:.3f}' for k, v in h['frame_selection_sensitivity'].items()))
  lines.append('Spearman vs causal oracle: '
               + ', '.join(f'{k}: {v:.3f}' for k, v in h['spearman_vs_causal'].items()))
  cols = ['selector', 'k', 'accuracy', 'accuracy_frame_sensitive', 'recall_oracle', 'ndcg_oracle',
          'recall_evidence']
  lines.append(' '.join(f'{c:>16}' for c in cols))
  for r in summary['rows']:
    lines.append(' '.join(f'{r[c]:>16.4f}' if isinstance(r[c], float) else f'{str(r[c]):>16}' for c in cols))
  return '\n'.join(lines)


def main(argv):
  del argv
  print(format_table(run(_CONFIG.value, _WORKDIR.value)))


if __name__ == '__main__':
  # Defined here, not at import: tests import several experiment modules that all own a --config flag.
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/keyframe_diagnosis.py[:preset]',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', 'runs/keyframe_diagnosis',
                                 'where results go (resumes if it holds a run)')
  app.run(main)
