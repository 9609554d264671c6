"""The word-level tokenizer of the synthetic world (every word its own id, deterministic) and the
LLaVA-OneVision chat template the embedded default ships with."""

from __future__ import annotations

from typing import Iterable, cast

import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxvlm.data import synthetic
from jaxvlm.processor import ANSWER_INSTRUCTION

PAD, UNK = '[PAD]', '[UNK]'
SPECIAL_TOKENS = ('<|im_start|>', '<|im_end|>', '<video>', '<image>')
# LLaVA-OneVision's layout: role and a space, media placeholders first, then '\n' + each text part.
CHAT_TEMPLATE = (
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
  "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
  "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
  "{% for c in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
  "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + c['text'] }}"
  "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CAPTION_STOPWORDS = frozenset({'a', 'an', 'at', 'the', 'on', 'and', 'background'})
WRONG_OPTION = 'no'  # what the end of a wrong option line learns to predict (see losses.llava_loss_fn)


def world_texts(num_items: int = 400, seed: int = 0) -> list[str]:
  """Every kind of text the synthetic world and the prompts produce (questions, options, captions,
  the answer instruction, option letters, role names and WRONG_OPTION), from `num_items` items per question type."""
  texts = [
    ANSWER_INSTRUCTION,
    'system user assistant',
    WRONG_OPTION,
    ' '.join('ABCDEFGHIJKLMNOPQRSTUVWXYZ'),
    ' '.join(synthetic.COLOURS),
    ' '.join(synthetic.BACKGROUNDS),
    ' '.join(synthetic.SHAPES),
    ' '.join(synthetic.DIRECTIONS),
    ' '.join(str(d) for d in range(10)),
  ]
  for i in range(num_items):
    for k, qtype in enumerate(synthetic.QTYPES):
      item = synthetic.make_item(np.random.default_rng([seed, k, i]), qtype, i % synthetic.NUM_OPTIONS, '')
      texts += [
        item.question.question,
        *item.question.options,
        *synthetic.frame_captions(item.video),
        *(' '.join(words) for words in synthetic.frame_events(item.video)),
      ]
  return texts


def build_tokenizer(texts: Iterable[str]) -> transformers.PreTrainedTokenizerFast:
  """Word-level tokenizer over the words of `texts` (sorted: deterministic ids), split on whitespace
  and punctuation; ids: [PAD] 0, [UNK] 1, words, then the special tokens. Offsets map to characters."""
  split = pre_tokenizers.Whitespace()
  words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
  vocab = {w: i for i, w in enumerate([PAD, UNK] + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = split
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token=UNK, pad_token=PAD, additional_special_tokens=list(SPECIAL_TOKENS)
  )
  fast.chat_template = CHAT_TEMPLATE
  return fast


def caption_words(tokenizer: transformers.PreTrainedTokenizerBase, caption: str) -> list[int]:
  """Ids of a frame caption's content words (colours, shapes, places, background), sorted."""
  words = pre_tokenizers.Whitespace().pre_tokenize_str(caption)
  ids = cast(list[int], tokenizer.convert_tokens_to_ids([w for w, _ in words if w not in CAPTION_STOPWORDS]))
  return sorted(set(ids))  # a list of tokens in, a list of ids out
