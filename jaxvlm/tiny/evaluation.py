r"""The embedded default's held-out evaluation (`python -m experiments.eval_synthetic` prints it).

Everything goes through the real pipeline: mp4 -> `video.sample_frames` (all 32 frames) ->
`processor.preprocess` -> `prompts.build_prompt` -> the Flax model loaded by `load_pretrained`.
Definitions:
  accuracy   argmax over the option letters' log-probabilities at the answer slot, per question type.
  text-only  the same prompt (video slots included) with Language-to-Video knocked out in every layer:
             no text token may attend to any video token (frame tokens and image_newline), so the
             answer is computed from the text alone.
  R@1        SigLIP frame -> caption retrieval over every frame of the split's videos. `global`: the
             candidates are all distinct captions of the split's frames; a frame counts as correct when
             the top caption equals its own caption. `within video`: the candidates are the distinct
             captions of that frame's video (what a keyframe scorer has to tell apart).
"""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import checkpoints, prompts, runs, video
from jaxvlm import data as data_lib
from jaxvlm.data import synthetic
from jaxvlm.knockout import specs as knockout

_NUM_FRAMES = 32
FRAME_DEPENDENT = tuple(q for q in synthetic.QTYPES if q != 'background')


def ensure_split(root: str, split: str, num: int, seed: int, num_frames: int) -> str:
  """Generates `num` items of `split` under root/split unless an identical one is there -> its dir."""
  out = os.path.join(root, split)
  stamp = os.path.join(out, 'spec.json')
  spec = {'split': split, 'num': num, 'seed': seed, 'num_frames': num_frames}
  if os.path.isfile(stamp) and json.load(open(stamp)) == spec:
    return out
  synthetic.generate(out, num, seed, num_frames, split=split)
  with open(stamp, 'w') as f:
    json.dump(spec, f)
  return out


# ----------------------------------------------------------------------------------------------
# LLaVA-OneVision: accuracy with and without the video.


def llava_scores(
  model, params, processor, samples, num_frames: int, batch_size: int = 8
) -> tuple[list[dict], list[tuple[str, str]]]:
  """Per sample: {'id', 'task', 'answer', 'clean' [O], 'text_only' [O]} option log-probs."""
  cfg = types.SimpleNamespace(num_frames=num_frames)
  text_only = jax.tree.map(
    jnp.asarray, knockout.knockout_spec('LV', knockout.all_layers(model.config.text.num_hidden_layers), num_frames)
  )
  records, failures = [], []
  for chunk in runs.batches(samples, batch_size):
    prepared, failed = runs.prepare(chunk, processor, cfg)
    failures += failed
    if not prepared:
      continue
    batch = runs.collate(prepared, processor)
    args = (model, params, batch.input_ids, batch.pixels, batch.layout, batch.answer_index, batch.option_ids)
    clean = np.asarray(prompts.answer_logprobs(*args))
    blind = np.asarray(prompts.answer_logprobs(*args, text_only))
    for i, p in enumerate(prepared):
      n = len(p.sample.options)
      records.append(
        {
          'id': p.sample.id,
          'task': p.sample.task,
          'answer': p.sample.answer,
          'clean': clean[i, :n],
          'text_only': blind[i, :n],
        }
      )
  return records, failures


def accuracy_table(records: list[dict], key: str) -> dict[str, float]:
  """{'overall': acc, <task>: acc, 'frame_dependent': acc} of argmax(record[key]) == answer."""
  hit = {r['id']: int(np.argmax(r[key])) == r['answer'] for r in records}
  out = {'overall': float(np.mean(list(hit.values())))}
  for task in sorted({r['task'] for r in records}):
    out[task] = float(np.mean([hit[r['id']] for r in records if r['task'] == task]))
  dependent = [hit[r['id']] for r in records if r['task'] in FRAME_DEPENDENT]
  if dependent:
    out['frame_dependent'] = float(np.mean(dependent))
  return out


# ----------------------------------------------------------------------------------------------
# SigLIP: frame -> caption retrieval.


def _embed(fn, params, xs: np.ndarray, batch: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(params, jnp.asarray(xs[i : i + batch]))) for i in range(0, len(xs), batch)])


def siglip_retrieval(model, params, processor, split_dir: str, max_videos: int | None = None) -> dict:
  """R@1 (global and within video) of every frame of the split's first `max_videos` videos."""
  with open(os.path.join(split_dir, 'captions.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  videos = sorted({r['video'] for r in rows})[:max_videos]
  chosen = set(videos)
  rows = [r for r in rows if r['video'] in chosen]
  caption_of = {(r['video'], r['frame']): r['caption'] for r in rows}
  unique = sorted(set(caption_of.values()))
  image_fn = jax.jit(lambda p, x: model.apply({'params': p}, x, method='image_features'))
  text_fn = jax.jit(lambda p, t: model.apply({'params': p}, t, method='text_features'))
  txt = _embed(text_fn, params, processor.tokenize(unique), 256)
  txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
  col = {c: i for i, c in enumerate(unique)}
  hits_global, hits_video = [], []
  for name in videos:
    frames = video.sample_frames(os.path.join(split_dir, 'videos', name), _NUM_FRAMES).pixels
    img = _embed(image_fn, params, processor.preprocess(frames), 64)
    sims = (img / np.linalg.norm(img, axis=-1, keepdims=True)) @ txt.T  # [F, C]
    truth = np.asarray([col[caption_of[(name, f)]] for f in range(len(frames))])
    hits_global += list(np.argmax(sims, -1) == truth)
    own = np.unique(truth)
    hits_video += list(own[np.argmax(sims[:, own], -1)] == truth)
  return {
    'r1_global': float(np.mean(hits_global)),
    'r1_within_video': float(np.mean(hits_video)),
    'num_frames': len(hits_global),
    'num_captions': len(unique),
  }


# ----------------------------------------------------------------------------------------------


def evaluate_assets(
  assets: str,
  data_root: str,
  split: str,
  num: int,
  seed: int,
  num_frames: int = _NUM_FRAMES,
  siglip_videos: int | None = None,
) -> dict:
  """Both checkpoints of `assets` on `num` items of `split` (generated under data_root) -> summary."""
  split_dir = ensure_split(data_root, split, num, seed, _NUM_FRAMES)
  loaded = data_lib.load_mvbench(os.path.join(split_dir, 'json'), os.path.join(split_dir, 'videos'))
  model, params, processor = checkpoints.load_pretrained(os.path.join(assets, 'llava_ov_tiny'))
  records, failures = llava_scores(model, params, processor, loaded.samples, num_frames)
  s_model, s_params, s_processor = checkpoints.load_pretrained(os.path.join(assets, 'siglip_tiny'))
  return {
    'split': split,
    'seed': seed,
    'num_samples': len(records),
    'failures': failures + [(i, str(r)) for i, r in loaded.skipped],
    'llava': accuracy_table(records, 'clean'),
    'text_only': accuracy_table(records, 'text_only'),
    'siglip': siglip_retrieval(s_model, s_params, s_processor, split_dir, siglip_videos),
  }


def format_summary(summary: dict) -> str:
  acc, blind = summary['llava'], summary['text_only']
  lines = [
    f"{summary['split']} split (seed {summary['seed']}): {summary['num_samples']} samples, "
    f"{len(summary['failures'])} failed",
    f"{'type':>16} {'accuracy':>9} {'text-only':>9}",
  ]
  for key in [k for k in acc if k not in ('overall', 'frame_dependent')] + ['frame_dependent', 'overall']:
    if key in acc:
      lines.append(f'{key:>16} {acc[key]:>9.3f} {blind[key]:>9.3f}')
  s = summary['siglip']
  lines.append(
    f"SigLIP frame->caption R@1: global {s['r1_global']:.3f} ({s['num_frames']} frames, "
    f"{s['num_captions']} captions), within video {s['r1_within_video']:.3f}"
  )
  return '\n'.join(lines)
