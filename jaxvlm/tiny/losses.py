"""The embedded default's training losses and steps as pure functions: SigLIP's sigmoid + word loss,
and the LLaVA's answer loss with its auxiliary losses, and the targets they read.

Letters: B batch, I images, Q captions, S prompt slots, F frames, O options, D hidden, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers

from jaxvlm import prompts
from jaxvlm.models import llava_onevision as lo
from jaxvlm.models import siglip
from jaxvlm.tiny.tokenizer import caption_words
from jaxvlm.training import TrainState, apply_grads


def sigmoid_loss(logits: jnp.ndarray, positive: jnp.ndarray) -> jnp.ndarray:
  """SigLIP loss: logits [I, Q], positive bool [I, Q] (same caption text, so duplicates in a batch
  are not pushed apart) -> mean over images of the summed pairwise -log sigmoid(+-logit)."""
  signs = jnp.where(positive, 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def answer_loss(logits: jnp.ndarray, answer_ids: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """logits [B, V] at the answer slot, answer_ids [B] (letter token) -> (mean cross-entropy over the
  whole vocabulary, accuracy of the argmax)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, answer_ids[:, None], axis=-1)[:, 0]
  return nll.mean(), (jnp.argmax(logits, -1) == answer_ids).mean()


def _siglip_logits_and_patches(
  module: siglip.SiglipModel, pixels: jnp.ndarray, caption_ids: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """-> logits [I, Q] and the patch features the LLaVA's tower passes on [I, P, Dv] (last layer)."""
  vision = module.vision_model(pixels)
  pooled = cast(jax.Array, vision.pooled)  # not None: SiglipConfig requires the vision pooling head
  return module.pair_logits(pooled, module.text_features(caption_ids)), vision.hidden_states[-1]


def siglip_loss_fn(
  params: dict, model: siglip.SiglipModel, batch: dict, word_weight: float
) -> tuple[jnp.ndarray, dict]:
  """params {'model': SigLIP params, 'word_head': init_word_head}; batch as in `siglip_step` ->
  sigmoid loss over all I x Q pairs + word_weight x the word loss, and both parts.

  The word loss (each frame's mean patch feature predicts its caption's words) is not contrastive: a
  batch's captions almost always differ in colour or shape already, so the sigmoid loss alone never
  needs the rarer words (a moving object's direction) and the tower drops them (what it did to the
  probe and to retrieval: docs/results.md, "Embedded default")."""
  logits, patches = cast(
    tuple[jax.Array, jax.Array],
    model.apply({'params': params['model']}, batch['pixels'], batch['caption_ids'], method=_siglip_logits_and_patches),
  )
  contrastive = sigmoid_loss(logits, batch['image_caption'][:, None] == batch['caption_index'][None, :])
  head = params['word_head']
  word_logits = patches.mean(1) @ head['kernel'] + head['bias']
  # One binary decision per vocabulary word, so a direction word has a loss term of its own. Neither
  # this nor a softmax over the caption's words taught the direction without the moving frames of
  # siglip_batch's moving_share (the probe numbers: docs/results.md).
  words = jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(word_logits, batch['caption_words'] > 0), axis=-1))
  return contrastive + word_weight * words, {'sigmoid_loss': contrastive, 'word_loss': words}


@functools.partial(jax.jit, static_argnames=('model', 'tx', 'word_weight'), donate_argnums=(0,))
def siglip_step(
  state: TrainState, batch: dict, model: siglip.SiglipModel, tx: optax.GradientTransformation, word_weight: float = 0.0
) -> tuple[TrainState, dict]:
  """batch: pixels [I, H, W, C], caption_ids [Q, L], caption_index [Q] (identity of each text),
  image_caption [I] (identity of each image's caption), caption_words [I, V] (frame_word_targets)."""
  (loss, parts), grads = jax.value_and_grad(siglip_loss_fn, has_aux=True)(state.params, model, batch, word_weight)
  return apply_grads(state, grads, tx), {'loss': loss, **parts}


def _forward(
  params, model: lo.LlavaOnevisionForConditionalGeneration, batch: dict, spec=None, return_hidden_states: bool = False
) -> lo.LlavaOutput:
  """The forward of a prompt batch (keys as in `answer_logits`; the video comes from batch['pixels']
  or, with a frozen tower, from its cached output batch['tower'])."""
  layout = prompts.TokenLayout(batch['group'], batch['frame'], batch['positions'], batch['valid'])
  return cast(
    lo.LlavaOutput,
    model.apply(
      {'params': params},
      batch['input_ids'],
      batch.get('pixels'),
      layout.positions,
      layout.meta(),
      spec=spec,
      return_hidden_states=return_hidden_states,
      tower_features=batch.get('tower'),
    ),
  )


@functools.partial(jax.jit, static_argnames=('model',))
def tower_features(params, model: lo.LlavaOnevisionForConditionalGeneration, pixels: jnp.ndarray) -> jnp.ndarray:
  """pixels [B, F, H, W, C] -> the vision tower's selected features [B, F, P, Dv]."""
  return cast(jax.Array, model.apply({'params': params}, pixels, method='tower_features'))


def _logits_at(params, model, hidden: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """hidden [B, S, D], index [B, K] -> next-token logits [B, K, V] at those slots."""
  picked = jnp.take_along_axis(hidden, index[..., None], axis=1)
  return model.apply({'params': params}, picked, method='logits')


def answer_logits(params, model: lo.LlavaOnevisionForConditionalGeneration, batch: dict, spec=None) -> jnp.ndarray:
  """The next-token logits [B, V] at each prompt's answer slot. batch: input_ids [B, S], pixels
  [B, F, H, W, C], group/frame/positions [B, S] int32, valid [B, S] bool, answer_index [B]."""
  hidden = _forward(params, model, batch, spec).hidden
  return _logits_at(params, model, hidden, batch['answer_index'][:, None])[:, 0]


def frame_word_targets(tokenizer: transformers.PreTrainedTokenizerBase, captions: list[str]) -> np.ndarray:
  """Per-frame captions [F] -> float32 [F, V]: uniform distribution over each caption's words."""
  return _uniform_rows(len(tokenizer), [caption_words(tokenizer, c) for c in captions])


def event_word_targets(tokenizer: transformers.PreTrainedTokenizerBase, events: list[list[str]]) -> np.ndarray:
  """Per-row word lists [R] (a frame's event words, synthetic.frame_events, or an option's,
  synthetic.option_events) -> float32 [R, V]: uniform over each row's words, all zero for an empty
  row (no target there)."""
  # A list of tokens in, a list of ids out.
  return _uniform_rows(len(tokenizer), [cast(list[int], tokenizer.convert_tokens_to_ids(w)) for w in events])


def _uniform_rows(vocab_size: int, id_lists: list[list[int]]) -> np.ndarray:
  out = np.zeros((len(id_lists), vocab_size), np.float32)
  for row, ids in enumerate(id_lists):
    if ids:
      ids = sorted(set(ids))
      out[row, ids] = 1.0 / len(ids)
  return out


def seen_word_targets(tokenizer: transformers.PreTrainedTokenizerBase, captions: list[str]) -> np.ndarray:
  """Per-frame captions [F] -> float32 [F, V]: uniform over the content words of every frame up to
  and including f (what the video has shown so far)."""
  out = np.zeros((len(captions), len(tokenizer)), np.float32)
  seen: set[int] = set()
  for f, caption in enumerate(captions):
    seen.update(caption_words(tokenizer, caption))
    out[f, sorted(seen)] = 1.0 / len(seen)
  return out


def soft_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """logits, targets [..., V] (targets sum to 1) -> mean cross-entropy."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def option_line_targets(letter_ids: np.ndarray, answers: np.ndarray, wrong_id: int) -> np.ndarray:
  """letter_ids [O], answers [B] -> int32 [B, O]: what the end of each option line should predict,
  its own letter on the correct line and `wrong_id` on the others."""
  is_answer = np.arange(len(letter_ids))[None] == np.asarray(answers)[:, None]
  return np.where(is_answer, np.asarray(letter_ids)[None], wrong_id).astype(np.int32)


def _final_norm(params, model: lo.LlavaOnevisionForConditionalGeneration, h: jnp.ndarray) -> jnp.ndarray:
  return cast(jax.Array, model.apply({'params': params}, h, method=lambda m, x: m.language_model.norm(x)))


def masked_word_loss(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """logits, targets [..., V] (each target row sums to 1, or is all zero: no target there) -> soft
  cross-entropy averaged over the rows that have a target."""
  per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  has_target = jnp.sum(targets, axis=-1) > 0
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(has_target), 1)


def _frame_loss(
  params, model, hidden_states: jnp.ndarray, layer: int, ends: jnp.ndarray, targets: jnp.ndarray
) -> jnp.ndarray:
  """masked_word_loss of targets [B, F, V] at the frame ends [B, F], read from the input of decoder
  `layer` through the final norm and the tied head."""
  early = _final_norm(params, model, hidden_states[layer])
  return masked_word_loss(_logits_at(params, model, early, ends), targets)


def llava_loss_fn(
  params,
  model: lo.LlavaOnevisionForConditionalGeneration,
  batch: dict,
  frame_weight: float = 0.0,
  option_weight: float = 0.0,
  frame_layer: int = -1,
  seen_weight: float = 0.0,
  seen_layer: int = -1,
  event_weight: float = 0.0,
  event_layer: int = -1,
  recall_weight: float = 0.0,
  ground_weight: float = 0.0,
) -> tuple[jnp.ndarray, dict]:
  """Cross-entropy of the answer letter (batch['answer_id'] [B]) at the answer slot, plus
  auxiliary losses (the answer letter alone is a weak signal for a from-scratch model):
  - `frame_weight` x caption loss: the last slot of every frame predicts the content words of that
    frame's caption (batch['frame_words'] [B, F, V]) from the input of decoder layer `frame_layer`
    (read through the final norm and the tied head, i.e. in the space of the word embeddings), so
    video tokens carry what they show early, in the form the question and option words have;
  - `seen_weight` x seen loss: the same slots predict the words of everything shown so far
    (batch['seen_words'] [B, F, V]) from the input of layer `seen_layer`, so the last frames sum up
    the video and a question or option word finds its object there instead of in a few frames;
  - `event_weight` x event loss: the same slots predict the frame's event words (flash number so far,
    direction, first/second, with the object's colour and shape: batch['event_words'] [B, F, V],
    zero rows where nothing comes or goes; see `synthetic.frame_events`) from the input of layer
    `event_layer`, so what happens over time is written where the frame is read;
  - `option_weight` x option-line loss: the end of every option line predicts its own letter if the
    option is right and WRONG_OPTION if not (batch['option_end'], batch['option_target'] [B, O]),
    so each option is checked against the video where it is read and the answer slot only has to
    copy the letter of the line that holds it;
  - `recall_weight` x recall loss: the last question slot, before any option is read, predicts the
    words of the right option (batch['question_end'] [B], batch['answer_words'] [B, V]: 'red ring',
    '3', 'up', 'forest'), so the question fetches its answer from the video with a query that is the
    same for every video ('which came first?') and each option line only compares its own words
    with it (its floor is ln 2 for a two-word answer, 0 for one word); it is what made order
    learnable in the step budget (ablation: docs/results.md);
  - `ground_weight` x grounding loss: the colour word of every option naming an object predicts what
    the video shows of that object (its event words, e.g. '1 first', or WRONG_OPTION if it never
    appears: batch['option_word'] [B, O], batch['option_events'] [B, O, V], zero rows for options
    naming no object; see `synthetic.option_events`), a copy of what that object's frames predict
    under the event loss, so the option looks the object up in the video where it names it.
  -> (loss, {'answer_loss', 'accuracy', ['frame_loss'], ['seen_loss'], ['event_loss'],
  ['option_loss'], ['recall_loss'], ['ground_loss']})."""
  out = _forward(params, model, batch, return_hidden_states=bool(frame_weight or seen_weight or event_weight))
  hidden = out.hidden
  logits = _logits_at(params, model, hidden, batch['answer_index'][:, None])[:, 0]
  answer, acc = answer_loss(logits, batch['answer_id'])
  metrics = {'answer_loss': answer, 'accuracy': acc}
  loss = answer
  ends = prompts.frame_end_index(batch['frame'], batch['frame_words'].shape[1])
  # Not None whenever a frame, seen or event weight is set (asked for above), the only readers.
  hidden_states = cast(jax.Array, out.hidden_states)
  if frame_weight:
    frame = _frame_loss(params, model, hidden_states, frame_layer, ends, batch['frame_words'])
    metrics['frame_loss'] = frame
    loss = loss + frame_weight * frame
  if seen_weight:
    seen = _frame_loss(params, model, hidden_states, seen_layer, ends, batch['seen_words'])
    metrics['seen_loss'] = seen
    loss = loss + seen_weight * seen
  if event_weight:
    event = _frame_loss(params, model, hidden_states, event_layer, ends, batch['event_words'])
    metrics['event_loss'] = event
    loss = loss + event_weight * event
  if option_weight:
    at_options = _logits_at(params, model, hidden, batch['option_end'])  # [B, O, V]
    targets = jax.nn.one_hot(batch['option_target'], at_options.shape[-1])
    option = soft_cross_entropy(at_options, targets)
    metrics['option_loss'] = option
    loss = loss + option_weight * option
  if recall_weight:
    at_question = _logits_at(params, model, hidden, batch['question_end'][:, None])[:, 0]  # [B, V]
    recall = soft_cross_entropy(at_question, batch['answer_words'])
    metrics['recall_loss'] = recall
    loss = loss + recall_weight * recall
  if ground_weight:
    ground = masked_word_loss(_logits_at(params, model, hidden, batch['option_word']), batch['option_events'])
    metrics['ground_loss'] = ground
    loss = loss + ground_weight * ground
  return loss, metrics


@functools.partial(jax.jit, static_argnames=('model', 'tx', 'weights'), donate_argnums=(0,))
def llava_step(
  state: TrainState,
  batch: dict,
  model: lo.LlavaOnevisionForConditionalGeneration,
  tx: optax.GradientTransformation,
  weights: tuple = (),
) -> tuple[TrainState, dict]:
  """weights: (name, value) pairs of llava_loss_fn's keyword arguments (hashable: static)."""
  (loss, metrics), grads = jax.value_and_grad(llava_loss_fn, has_aux=True)(state.params, model, batch, **dict(weights))
  return apply_grads(state, grads, tx), {'loss': loss, **metrics}
