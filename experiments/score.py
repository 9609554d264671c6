r"""Score one multiple-choice video question with a LLaVA-OneVision or Qwen2.5-VL checkpoint; prints JSON.

  python -m experiments.score --checkpoint=assets/llava_ov_tiny --video=clip.mp4 \
      --question="What appeared briefly?" --options="red ring,blue square,green cross,white triangle" \
      [--num_frames=32] [--max_new_tokens=16] [--selector=learned --k=4 --selector_checkpoint=DIR]
      [--frame_size=448,448]   (Qwen2.5-VL only)

Output: the exact prompt text fed to the tokenizer, the number of video tokens, the log-probability of
each option letter (full-vocabulary softmax at the answer slot), the chosen option, and with
--max_new_tokens > 0 the greedy open-ended answer. With --selector=learned the model sees only the k frames that the selector
trained by experiments.train_selector in DIR picks from its candidate pool (their indices are printed).

A model bigger than one host: run the same command on every host with --mesh_devices=global (and
--mesh_fsdp / --mesh_tensor, --param_dtype=bfloat16): the weights are loaded shard by shard across the
hosts and process 0 prints the result.
"""

from __future__ import annotations

import contextlib
import json
import string

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxvlm import checkpoints, distributed, prompts, runs, sharding, video
from jaxvlm.keyframes import learned
from jaxvlm.knockout import engine
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import qwen2_5_vl as qv


def score(
  model,
  params,
  processor,
  frames: np.ndarray,
  question: str,
  options: list[str],
  max_new_tokens: int = 0,
  timestamps_s: np.ndarray | None = None,
  keyframes: bool = False,
  mesh=None,
) -> dict:
  """frames uint8 [F, H, W, 3] (at timestamps_s; keyframes: picked by a selector) -> the JSON-ready
  result dict. mesh: where `params` live (then the one sample is replicated over it: the weights are
  what is split)."""
  prompt, pixels = runs.video_inputs(processor, question, options, frames, timestamps_s, keyframes)
  batch = prompts.collate([prompt], processor.tokenizer.pad_token_id or 0, pad_multiple=1)
  put = jnp.asarray if mesh is None else (lambda x: sharding.put(np.asarray(x), sharding.replicated(mesh)))
  pixels = put(np.asarray(pixels)[None])
  layout = jax.tree.map(put, batch.layout)
  option_ids = put(processor.option_letter_ids(len(options)))
  input_ids, answer_index = put(batch.input_ids), put(batch.answer_index)
  with sharding.activation_rules(mesh) if mesh is not None else contextlib.nullcontext():
    clean = engine.clean_run(model, params, input_ids, pixels, layout, answer_index, option_ids)
  logp = sharding.to_host(clean.option_logprobs)[0]
  letters = string.ascii_uppercase[: len(options)]
  out = {
    'prompt': prompt.text,
    'num_frames': len(frames),
    'num_video_tokens': prompt.num_video_tokens,
    'option_logprobs': {l: float(v) for l, v in zip(letters, logp)},
    'choice': letters[int(logp.argmax())],
    'choice_text': options[int(logp.argmax())],
  }
  if max_new_tokens > 0:
    generate = qv.generate if isinstance(model, qv.Qwen25VLForConditionalGeneration) else lo.generate
    tokens = generate(
      model,
      params,
      input_ids,
      pixels,
      layout.positions,
      layout.meta(),
      max_new_tokens,
      eos_token_id=processor.tokenizer.eos_token_id,
    )
    out['generated'] = processor.tokenizer.decode(sharding.to_host(tokens)[0], skip_special_tokens=True)
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.options:
    raise app.UsageError('--options needs at least one option')
  empty = [i + 1 for i, o in enumerate(f.options) if not o.strip()]
  if empty:
    raise app.UsageError(
      f'--options={",".join(f.options)!r}: option {", ".join(map(str, empty))} is empty; '
      'each comma-separated option needs text'
    )
  distributed.initialize()
  mesh = None
  if f.mesh_devices != 'none':
    mesh = sharding.mesh_from_config(
      {'devices': f.mesh_devices, 'data': 1, 'fsdp': f.mesh_fsdp, 'tensor': f.mesh_tensor}
    )
  model, params, processor = distributed.collective(
    'load checkpoint',
    lambda: checkpoints.load_pretrained(
      f.checkpoint, dtype=jnp.dtype(f.dtype), param_dtype=jnp.dtype(f.param_dtype), mesh=mesh
    ),
  )
  if processor is None:
    raise app.UsageError(f'{f.checkpoint} has no tokenizer: cannot build a prompt')
  if f.frame_size:
    if not hasattr(processor, 'set_frame_size'):
      raise app.UsageError(f'--frame_size: {f.checkpoint} is not a Qwen2.5-VL checkpoint (its frame size is fixed)')
    processor.set_frame_size([int(v) for v in f.frame_size])
  if f.selector == 'learned':
    if not f.selector_checkpoint:
      raise app.UsageError('--selector=learned needs --selector_checkpoint=DIR (a train_selector workdir)')
    picked = learned.pick_frames(learned.load_trained(f.selector_checkpoint), f.video, f.question, f.options, f.k)
    frames, extra = picked, {'selected_frame_indices': picked.indices.tolist()}
  else:
    frames, extra = video.sample_frames(f.video, f.num_frames), {}
  out = {
    **score(
      model,
      params,
      processor,
      frames.pixels,
      f.question,
      f.options,
      f.max_new_tokens,
      frames.timestamps_s,
      keyframes=f.selector == 'learned',
      mesh=mesh,
    ),
    **extra,
  }
  if distributed.is_main():
    print(json.dumps(out, indent=2))
  distributed.barrier('printed')


if __name__ == '__main__':
  flags.DEFINE_string('checkpoint', 'assets/llava_ov_tiny', 'local HF directory or hub id')
  flags.DEFINE_string('video', None, 'video file', required=True)
  flags.DEFINE_string('question', None, 'the question', required=True)
  flags.DEFINE_list('options', None, 'comma-separated answer options', required=True)
  flags.DEFINE_integer('num_frames', 8, 'frames sampled uniformly over the video')
  flags.DEFINE_integer('max_new_tokens', 0, 'greedy tokens to generate (0: none)')
  flags.DEFINE_string('dtype', 'float32', 'compute dtype')
  flags.DEFINE_list('frame_size', [], 'Qwen2.5-VL: H,W every frame is resized to (default: smart resize)')
  flags.DEFINE_enum(
    'selector',
    'uniform',
    ['uniform', 'learned'],
    'uniform: --num_frames over the video; learned: --k frames picked by a trained selector',
  )
  flags.DEFINE_integer('k', 4, 'frames the learned selector keeps')
  flags.DEFINE_string('selector_checkpoint', None, 'workdir of experiments.train_selector')
  flags.DEFINE_enum(
    'mesh_devices',
    'none',
    ['none', 'local', 'global'],
    'none: the default device; local: a mesh over this host\'s devices; global: over every '
    'process\'s devices (the same command on every host)',
  )
  flags.DEFINE_integer('mesh_fsdp', -1, 'fsdp size of the mesh (-1: the devices left after tensor)')
  flags.DEFINE_integer('mesh_tensor', 1, 'tensor size of the mesh')
  flags.DEFINE_string('param_dtype', 'float32', 'weights on the devices (bfloat16 keeps a bf16 checkpoint as is)')
  app.run(main)
