"""Processors built from a Hugging Face checkpoint directory, without torch or torchvision.

`ChatProcessor`: what every Video-LLM processor shares: the checkpoint's tokenizer and chat template,
the multiple-choice user text, the token ids of the option letters, saving. Its subclasses add the
model's video slots and pixels: `VideoProcessor` (LLaVA-OneVision: expansion of the single `<video>`
placeholder into one slot per video token, pixel preprocessing from the checkpoint's
(video_)preprocessor_config.json) and `jaxvlm.qwen2_5_vl_processor.Qwen25VLProcessor`.
`SiglipProcessor`: SigLIP text tokenization (padded to max_length, as SigLIP was trained) and pixels.
"""

from __future__ import annotations

import json
import math
import os
import string
from typing import TYPE_CHECKING, Sequence, cast

import jinja2
import numpy as np
import transformers

from jaxvlm import pixels
from jaxvlm.models.siglip import SiglipVisionConfig

if TYPE_CHECKING:
  from jaxvlm.qwen2_5_vl_processor import Qwen25VLProcessor  # imports this module

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TOKENIZER_FILE = 'tokenizer.json'
# Whichever of these exists lets AutoTokenizer build the tokenizer (e.g. SigLIP's sentencepiece).
_OTHER_TOKENIZER_FILES = ('tokenizer_config.json', 'spiece.model', 'tokenizer.model')
# Processor-level chat templates take precedence over the tokenizer's, as in transformers.
TEMPLATE_JINJA = 'chat_template.jinja'
TEMPLATE_JSON = 'chat_template.json'
PROCESSOR_CONFIG = 'processor_config.json'
IMAGE_CONFIG = 'preprocessor_config.json'
VIDEO_CONFIG = 'video_preprocessor_config.json'


def read_json(ckpt_dir: str, name: str) -> dict | None:
  """ckpt_dir/name parsed, or None when the file does not exist."""
  path = os.path.join(ckpt_dir, name)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_config(ckpt_dir: str) -> dict:
  config = read_json(ckpt_dir, 'config.json')
  if config is None:
    raise ValueError(f'{ckpt_dir} has no config.json')
  return config


def write_json(out_dir: str, name: str, data: dict) -> None:
  with open(os.path.join(out_dir, name), 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True)


def read_pixel_config(ckpt_dir: str) -> dict | None:
  """The checkpoint's video_preprocessor_config.json, else its preprocessor_config.json, else None."""
  return read_json(ckpt_dir, VIDEO_CONFIG) or read_json(ckpt_dir, IMAGE_CONFIG)


def has_tokenizer(ckpt_dir: str) -> bool:
  names = (TOKENIZER_FILE,) + _OTHER_TOKENIZER_FILES
  return any(os.path.isfile(os.path.join(ckpt_dir, n)) for n in names)


def load_tokenizer(ckpt_dir: str) -> transformers.PreTrainedTokenizerBase:
  """The checkpoint's tokenizer (fast, from tokenizer.json when present)."""
  if os.path.isfile(os.path.join(ckpt_dir, TOKENIZER_FILE)):
    return transformers.PreTrainedTokenizerFast.from_pretrained(ckpt_dir)
  if has_tokenizer(ckpt_dir):
    return transformers.AutoTokenizer.from_pretrained(ckpt_dir)
  raise FileNotFoundError(f'{ckpt_dir} has no tokenizer files ({TOKENIZER_FILE}, ...)')


def load_chat_template(ckpt_dir: str, tokenizer: transformers.PreTrainedTokenizerBase) -> str | None:
  """chat_template.jinja, else chat_template.json's `chat_template`, else the tokenizer's."""
  path = os.path.join(ckpt_dir, TEMPLATE_JINJA)
  if os.path.isfile(path):
    with open(path) as f:
      return f.read()
  from_json = read_json(ckpt_dir, TEMPLATE_JSON)
  if from_json and from_json.get('chat_template'):
    return from_json['chat_template']
  template = tokenizer.chat_template
  return template if isinstance(template, str) else None


def _single_token_id(tokenizer: transformers.PreTrainedTokenizerBase, text: str) -> int:
  ids = tokenizer.encode(text, add_special_tokens=False)
  if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
    raise ValueError(f'{text!r} is not a single known token for this tokenizer: {ids}')
  return ids[0]


class ChatProcessor:
  """The text side every Video-LLM processor shares: tokenizer, chat template, the multiple-choice user
  text, the option-letter ids, and writing tokenizer + template + pixel config back out.

  Attributes:
    tokenizer: the checkpoint's transformers tokenizer.
    chat_template: jinja template the prompts are rendered with.
    pixel_config: the (video_)preprocessor_config.json dict, or None.
  """

  def __init__(
    self, tokenizer: transformers.PreTrainedTokenizerBase, chat_template: str, pixel_config: dict | None = None
  ):
    self.tokenizer = tokenizer
    self.chat_template = chat_template
    self.pixel_config = pixel_config

  def question_text(self, question: str, options: Sequence[str]) -> str:
    """The user text of a multiple-choice question: question, lettered options, instruction."""
    if not options:
      raise ValueError(f'question {question!r} has no options')
    if len(options) > len(string.ascii_uppercase):
      raise ValueError(f'{len(options)} options: at most {len(string.ascii_uppercase)} are supported')
    lines = [question] + [f'{letter}. {option}' for letter, option in zip(string.ascii_uppercase, options)]
    return '\n'.join(lines + [ANSWER_INSTRUCTION])

  def option_letter_ids(self, n_options: int) -> np.ndarray:
    """int32 [n_options]: the token of "A", "B", ... as the first token of an answer."""
    return np.asarray(
      [_single_token_id(self.tokenizer, letter) for letter in string.ascii_uppercase[:n_options]], np.int32
    )

  def save_pretrained(self, out_dir: str) -> None:
    """Writes tokenizer, chat template and pixel config so `from_pretrained` reloads them."""
    os.makedirs(out_dir, exist_ok=True)
    self.tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, TEMPLATE_JINJA), 'w') as f:
      f.write(self.chat_template)
    if self.pixel_config is not None:
      write_json(out_dir, VIDEO_CONFIG, self.pixel_config)


class VideoProcessor(ChatProcessor):
  """Text and pixel side of LLaVA-OneVision for video prompts.

  Attributes:
    tokenizer: the checkpoint's transformers tokenizer.
    chat_template: jinja template used by `build_prompt`.
    video_token / video_token_id: the placeholder string and its id (= config `video_token_index`).
    tokens_per_frame: pooled tokens of one frame, ceil(P/2)^2 for a P x P patch grid.
    pixel_config: the (video_)preprocessor_config.json dict, or None.
  """

  def __init__(
    self,
    tokenizer: transformers.PreTrainedTokenizerBase,
    chat_template: str,
    video_token: str,
    video_token_id: int,
    tokens_per_frame: int,
    pixel_config: dict | None = None,
    processor_config: dict | None = None,
  ):
    got = tokenizer.convert_tokens_to_ids(video_token)
    if got != video_token_id:
      raise ValueError(
        f'video token {video_token!r} has id {got} in the tokenizer, the model config says {video_token_id}'
      )
    super().__init__(tokenizer, chat_template, pixel_config)
    self.video_token = video_token
    self.video_token_id = video_token_id
    self.tokens_per_frame = tokens_per_frame
    self.processor_config = processor_config

  @classmethod
  def from_pretrained(cls, ckpt_dir: str, config: dict | None = None) -> VideoProcessor:
    """From a checkpoint directory; `config` is its config.json dict (read when not given)."""
    config = config if config is not None else _read_config(ckpt_dir)
    tokenizer = load_tokenizer(ckpt_dir)
    template = load_chat_template(ckpt_dir, tokenizer)
    if template is None:
      raise ValueError(
        f'{ckpt_dir} has no chat template ({TEMPLATE_JINJA}, {TEMPLATE_JSON} or tokenizer_config.json chat_template)'
      )
    processor_config = read_json(ckpt_dir, PROCESSOR_CONFIG) or {}
    vision = SiglipVisionConfig.from_hf(config['vision_config'])
    grid = vision.image_size // vision.patch_size
    # transformers counts video tokens from the processor's num_image_tokens: it must match the model.
    declared = processor_config.get('num_image_tokens')
    if declared is not None and declared != grid * grid:
      raise ValueError(
        f'{PROCESSOR_CONFIG} num_image_tokens={declared}, but the vision config gives a '
        f'{grid}x{grid} patch grid ({grid * grid})'
      )
    pixels = read_pixel_config(ckpt_dir)
    # Each frame's P x P grid is pooled 2x2 (bilinear, rounding up) as LLaVA-OneVision does for video.
    tokens_per_frame = math.ceil(grid / 2) ** 2
    video_id = config.get('video_token_index', config.get('video_token_id'))
    if video_id is None:
      raise ValueError(f'{ckpt_dir}/config.json has no video_token_index')
    return cls(
      tokenizer,
      template,
      processor_config.get('video_token', '<video>'),
      video_id,
      tokens_per_frame,
      pixels,
      processor_config,
    )

  def num_video_tokens(self, num_frames: int) -> int:
    """Slots one `<video>` placeholder expands to: every frame's pooled tokens + one image_newline."""
    return num_frames * self.tokens_per_frame + 1

  def render(self, text: str) -> str:
    """A user turn with one video and `text`, through the chat template, with the generation prompt.

    LLaVA-OneVision templates take typed content and place `<video>` themselves; a plain text
    template (e.g. Qwen2's) gets `<video>\\n{text}` as the content string instead.
    """
    typed = [{'role': 'user', 'content': [{'type': 'video'}, {'type': 'text', 'text': text}]}]
    try:
      prompt = self._apply_template(typed)
    except (TypeError, jinja2.TemplateError):  # e.g. `'...' + message['content']` on a list
      prompt = ''
    if prompt.count(self.video_token) != 1:
      plain = [{'role': 'user', 'content': f'{self.video_token}\n{text}'}]
      prompt = self._apply_template(plain)
    if prompt.count(self.video_token) != 1:
      raise ValueError(f'the chat template does not render exactly one {self.video_token!r}: {prompt!r}')
    return prompt

  def _apply_template(self, messages: list[dict]) -> str:
    return cast(
      str,
      self.tokenizer.apply_chat_template(  # tokenize=False: the rendered text
        messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
      ),
    )

  def build_prompt(self, question: str, options: Sequence[str], num_frames: int) -> tuple[str, np.ndarray]:
    """-> (prompt text fed to the tokenizer, input_ids int32 [S] with `<video>` expanded for
    `num_frames` frames)."""
    prompt = self.render(self.question_text(question, options))
    # The template already wrote every special token (BOS included, if the model has one).
    ids = self.tokenizer(prompt, add_special_tokens=False)['input_ids']
    return prompt, self.expand_video_tokens(ids, num_frames)

  def expand_video_tokens(self, ids: Sequence[int] | np.ndarray, num_frames: int) -> np.ndarray:
    """ids [S] with each `<video>` id repeated to `num_video_tokens(num_frames)` slots -> int32 [S']."""
    ids = np.asarray(ids, np.int32)
    is_video = ids == self.video_token_id
    if not is_video.any():
      raise ValueError(f'no {self.video_token!r} (id {self.video_token_id}) in the prompt ids')
    repeats = np.where(is_video, self.num_video_tokens(num_frames), 1)
    return np.repeat(ids, repeats)

  def preprocess(self, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] -> float32 [N, h, w, 3] normalized as the checkpoint specifies."""
    if self.pixel_config is None:
      raise ValueError(f'the checkpoint has no {VIDEO_CONFIG} or {IMAGE_CONFIG}')
    return pixels.preprocess_from_processor_config(frames, self.pixel_config)

  def save_pretrained(self, out_dir: str) -> None:
    """Writes tokenizer, chat template, processor and pixel configs so `from_pretrained` reloads them."""
    super().save_pretrained(out_dir)
    if self.processor_config:
      write_json(out_dir, PROCESSOR_CONFIG, self.processor_config)


class SiglipProcessor:
  """SigLIP text tokenization (padded to `max_length` with the pad token) and pixel preprocessing."""

  def __init__(
    self, tokenizer: transformers.PreTrainedTokenizerBase, max_length: int = 64, pixel_config: dict | None = None
  ):
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.pixel_config = pixel_config

  @classmethod
  def from_pretrained(cls, ckpt_dir: str, config: dict | None = None) -> SiglipProcessor:
    config = config if config is not None else _read_config(ckpt_dir)
    tokenizer = load_tokenizer(ckpt_dir)
    # SigLIP pools the last position, so text must be padded to the length it was trained with.
    max_length = (config.get('text_config') or {}).get('max_position_embeddings', 64)
    return cls(tokenizer, max_length, read_json(ckpt_dir, IMAGE_CONFIG))

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    """texts -> input_ids int32 [Q, max_length] (padding='max_length', truncated)."""
    out = self.tokenizer(list(texts), padding='max_length', max_length=self.max_length, truncation=True)
    return np.asarray(out['input_ids'], np.int32)

  def preprocess(self, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] -> float32 [N, h, w, 3]."""
    if self.pixel_config is None:
      raise ValueError(f'the checkpoint has no {IMAGE_CONFIG}')
    return pixels.preprocess_from_processor_config(frames, self.pixel_config)

  def save_pretrained(self, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    self.tokenizer.save_pretrained(out_dir)
    if self.pixel_config is not None:
      write_json(out_dir, IMAGE_CONFIG, self.pixel_config)


def from_checkpoint_dir(ckpt_dir: str, config: dict) -> VideoProcessor | SiglipProcessor | Qwen25VLProcessor | None:
  """The processor of a checkpoint of `config['model_type']`, or None when it ships no tokenizer."""
  if not has_tokenizer(ckpt_dir):
    return None
  if config.get('model_type') == 'siglip':
    return SiglipProcessor.from_pretrained(ckpt_dir, config)
  if config.get('model_type') == 'qwen2_5_vl':
    from jaxvlm.qwen2_5_vl_processor import Qwen25VLProcessor  # imports this module

    return Qwen25VLProcessor.from_pretrained(ckpt_dir, config)
  return VideoProcessor.from_pretrained(ckpt_dir, config)
