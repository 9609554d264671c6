"""Processor: chat template rendering, `<video>` expansion (vs transformers' count rule), letters, pixels."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxvlm import processor as processor_lib
from jaxvlm.processor import SiglipProcessor, VideoProcessor

SPECIAL = ['<|im_start|>', '<|im_end|>', '<video>', '<image>']
WORDS = (
  '[PAD] [UNK] system user assistant What colour is the ball ? A B C D . red blue green '
  'Answer with option \' s letter from given choices directly a photo of cat dog'
).split()
# LLaVA-OneVision's style: role then a space, media placeholders first, then '\n' + each text part.
LLAVA_TEMPLATE = (
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
  "{% for c in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
  "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + c['text'] }}{% endfor %}"
  "{{ '<|im_end|>\n' }}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's style: string content only.
PLAIN_TEMPLATE = (
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
  "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUESTION = 'What colour is the ball?'
OPTIONS = ['red', 'blue', 'green']
PIXELS = {
  'size': {'height': 28, 'width': 28},
  'resample': 3,
  'image_mean': [0.5, 0.5, 0.5],
  'image_std': [0.25, 0.5, 1.0],
  'rescale_factor': 1 / 255,
  'do_resize': True,
  'do_rescale': True,
  'do_normalize': True,
}


def make_tokenizer(chat_template: str | None = LLAVA_TEMPLATE) -> transformers.PreTrainedTokenizerFast:
  """A word-level tokenizer: ids 0..len(WORDS)-1 for words, then the special tokens."""
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token='[UNK]', pad_token='[PAD]', additional_special_tokens=SPECIAL
  )
  fast.chat_template = chat_template
  return fast


def video_token_id() -> int:
  return len(WORDS) + SPECIAL.index('<video>')


def llava_config(image_size: int = 28, patch_size: int = 7) -> transformers.LlavaOnevisionConfig:
  return transformers.LlavaOnevisionConfig(
    vision_config=dict(
      model_type='siglip_vision_model',
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=2,
      num_attention_heads=2,
      image_size=image_size,
      patch_size=patch_size,
    ),
    text_config=dict(
      model_type='qwen2',
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      vocab_size=64,
    ),
    video_token_index=video_token_id(),
    image_token_index=video_token_id() + 1,
    vision_feature_layer=-1,
    vision_feature_select_strategy='full',
  )


def write_llava_processor_dir(path, config=None, chat_template=LLAVA_TEMPLATE, pixels=PIXELS) -> str:
  """config.json + tokenizer (with the template in tokenizer_config.json) + pixel config."""
  path = os.fspath(path)
  (config or llava_config()).save_pretrained(path)
  make_tokenizer(chat_template).save_pretrained(path)
  if pixels is not None:
    with open(os.path.join(path, 'video_preprocessor_config.json'), 'w') as f:
      json.dump(pixels, f)
  return path


def write_random_llava_checkpoint(path, num_layers: int | None = None) -> str:
  """A tiny random LLaVA-OneVision (seed 0) saved with transformers, plus tokenizer and pixel config."""
  config = llava_config()
  if num_layers is not None:
    config.text_config.num_hidden_layers = num_layers
    config.text_config.layer_types = ['full_attention'] * num_layers
  torch.manual_seed(0)
  transformers.LlavaOnevisionForConditionalGeneration(config).save_pretrained(path)
  return write_llava_processor_dir(path, config)


@pytest.fixture
def proc(tmp_path) -> VideoProcessor:
  return VideoProcessor.from_pretrained(write_llava_processor_dir(tmp_path))


def transformers_expanded_text(text: str, num_frames: int, num_image_tokens: int) -> str:
  """`<video>` replaced by transformers' own LlavaOnevisionProcessor rule. The class cannot be
  instantiated without torchvision, so its method runs on a stand-in holding what it reads."""
  stand_in = types.SimpleNamespace(num_image_tokens=num_image_tokens, video_token='<video>')
  video_inputs = {'pixel_values_videos': [np.zeros((num_frames, 3, 4, 4))]}
  slots = transformers.LlavaOnevisionProcessor.replace_video_token(stand_in, video_inputs, 0)
  return text.replace('<video>', slots)


def test_build_prompt_renders_template_exactly(proc):
  prompt, _ = proc.build_prompt(QUESTION, OPTIONS, num_frames=3)
  assert prompt == (
    "<|im_start|>user <video>\nWhat colour is the ball?\nA. red\nB. blue\nC. green\n"
    "Answer with the option's letter from the given choices directly.<|im_end|>\n"
    "<|im_start|>assistant\n"
  )


@pytest.mark.parametrize('num_frames', [1, 3, 8])
def test_expanded_ids_match_transformers_rule(proc, num_frames):
  prompt, ids = proc.build_prompt(QUESTION, OPTIONS, num_frames)
  # Tiny vision config: 28 / 7 = 4x4 patches, pooled to 2x2 = 4 tokens per frame, + 1 newline.
  assert (ids == video_token_id()).sum() == 4 * num_frames + 1
  expected = proc.tokenizer(
    transformers_expanded_text(prompt, num_frames, num_image_tokens=16), add_special_tokens=False
  )['input_ids']
  np.testing.assert_array_equal(ids, expected)
  assert ids.dtype == np.int32
  assert proc.tokenizer.unk_token_id not in ids


def test_full_size_grid_gives_196_tokens_per_frame(tmp_path):
  # siglip-so400m-patch14-384: a 27x27 grid pooled to 14x14.
  proc = VideoProcessor.from_pretrained(write_llava_processor_dir(tmp_path, llava_config(384, 14)))
  assert proc.tokens_per_frame == 196
  assert proc.num_video_tokens(8) == 8 * 196 + 1
  text = transformers_expanded_text('<video>', 8, num_image_tokens=27 * 27)
  assert text.count('<video>') == proc.num_video_tokens(8)


def test_plain_string_template_gets_video_line(tmp_path):
  proc = VideoProcessor.from_pretrained(write_llava_processor_dir(tmp_path, chat_template=PLAIN_TEMPLATE))
  prompt, ids = proc.build_prompt(QUESTION, OPTIONS[:2], num_frames=2)
  assert prompt == (
    "<|im_start|>user\n<video>\nWhat colour is the ball?\nA. red\nB. blue\n"
    "Answer with the option's letter from the given choices directly.<|im_end|>\n"
    "<|im_start|>assistant\n"
  )
  assert (ids == video_token_id()).sum() == 9


def test_processor_level_template_wins_over_tokenizer_template(tmp_path):
  """The llava-hf hub layout: Qwen's text template in tokenizer_config.json, the multimodal one in
  chat_template.json (transformers v5 writes a single chat_template.jinja instead)."""
  path = write_llava_processor_dir(tmp_path, chat_template=None)
  tok_config = json.loads((tmp_path / 'tokenizer_config.json').read_text())
  tok_config['chat_template'] = PLAIN_TEMPLATE
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(tok_config))
  (tmp_path / 'chat_template.json').write_text(json.dumps({'chat_template': LLAVA_TEMPLATE}))
  assert processor_lib.load_tokenizer(path).chat_template == PLAIN_TEMPLATE
  assert VideoProcessor.from_pretrained(path).chat_template == LLAVA_TEMPLATE


def test_option_letter_ids(proc):
  letters = proc.option_letter_ids(4)
  np.testing.assert_array_equal(letters, [WORDS.index(c) for c in 'ABCD'])
  with pytest.raises(ValueError, match="'E' is not a single known token"):
    proc.option_letter_ids(5)


def test_expand_video_tokens_repeats_each_placeholder(proc):
  v = video_token_id()
  out = proc.expand_video_tokens([5, v, 6], num_frames=2)
  np.testing.assert_array_equal(out, [5] + [v] * 9 + [6])
  with pytest.raises(ValueError, match='no .<video>.'):
    proc.expand_video_tokens([5, 6], num_frames=2)


def test_bad_inputs_raise(proc, tmp_path):
  with pytest.raises(ValueError, match='has no options'):
    proc.build_prompt(QUESTION, [], num_frames=2)
  bad = llava_config()
  bad.video_token_index = video_token_id() + 1
  with pytest.raises(ValueError, match='video token .<video>. has id'):
    VideoProcessor.from_pretrained(write_llava_processor_dir(tmp_path / 'ids', bad))
  path = write_llava_processor_dir(tmp_path / 'grid')
  with open(os.path.join(path, 'processor_config.json'), 'w') as f:
    json.dump({'num_image_tokens': 729}, f)
  with pytest.raises(ValueError, match='num_image_tokens=729'):
    VideoProcessor.from_pretrained(path)


def test_preprocess_uses_checkpoint_pixel_config(proc):
  frames = np.full((2, 40, 50, 3), 255, np.uint8)
  x = proc.preprocess(frames)
  assert x.shape == (2, 28, 28, 3) and x.dtype == np.float32
  # A constant white frame stays constant through resizing: (1 - mean) / std per channel.
  np.testing.assert_allclose(x[0, 5, 7], [(1 - 0.5) / 0.25, (1 - 0.5) / 0.5, (1 - 0.5) / 1.0], atol=1e-6)


def test_save_pretrained_round_trip(proc, tmp_path):
  out = tmp_path / 'saved'
  proc.save_pretrained(os.fspath(out))
  llava_config().save_pretrained(out)
  again = VideoProcessor.from_pretrained(os.fspath(out))
  for a, b in zip(proc.build_prompt(QUESTION, OPTIONS, 3), again.build_prompt(QUESTION, OPTIONS, 3)):
    np.testing.assert_array_equal(a, b)
  assert again.pixel_config == proc.pixel_config


def test_from_checkpoint_dir_without_tokenizer_is_none(tmp_path):
  llava_config().save_pretrained(tmp_path)
  assert processor_lib.from_checkpoint_dir(os.fspath(tmp_path), llava_config().to_dict()) is None


def test_siglip_text_is_padded_to_max_length(tmp_path):
  transformers.SiglipConfig(text_config=dict(max_position_embeddings=16)).save_pretrained(tmp_path)
  make_tokenizer(None).save_pretrained(tmp_path)
  proc = processor_lib.from_checkpoint_dir(os.fspath(tmp_path), json.loads((tmp_path / 'config.json').read_text()))
  assert isinstance(proc, SiglipProcessor)
  ids = proc.tokenize(['a photo of a cat', 'a dog'])
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[1, :2], [WORDS.index('a'), WORDS.index('dog')])
  assert (ids[1, 2:] == WORDS.index('[PAD]')).all()
  assert ids[0, 4] == WORDS.index('cat')
