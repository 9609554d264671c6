"""The fields of configs/train_synthetic.py, checked before any compute by `stages.train`
(`jaxvlm.config_checks.check(config, TRAIN_SYNTHETIC)`)."""

from __future__ import annotations

from jaxvlm import config_checks as cc
from jaxvlm.data import synthetic
from jaxvlm.tiny.batches import STAGES


def _relations(config) -> list[str]:
  out = []
  for stage in ('siglip', 'llava'):
    c = config[stage]
    if c.warmup > c.steps:
      out.append(f'{stage}.warmup={c.warmup}: more than {stage}.steps={c.steps}')
  if config.siglip.evidence_share + config.siglip.moving_share > 1:
    out.append(
      f'siglip.evidence_share + siglip.moving_share = '
      f'{config.siglip.evidence_share + config.siglip.moving_share}: more than 1'
    )
  if config.llava.short_frames > config.num_frames:
    out.append(f'llava.short_frames={config.llava.short_frames}: more than num_frames={config.num_frames}')
  return out


_POS, _NONNEG = cc.integer(1), cc.number(0)
_LAYER = cc.integer(0)
TRAIN_SYNTHETIC = cc.Spec(
  'train_synthetic',
  'configs/train_synthetic.py[:runlocal]',
  {
    'seed': cc.integer(),
    'num_frames': _POS,
    'data.num_train': _POS,
    'data.num_val': _POS,
    'data.fps': _POS,
    'data.workers': cc.integer(1, affects_results=False),
    'dtype': cc.one_of(*cc.DTYPES),
    'stages': cc.names(STAGES),
    'stage1_from': cc.text(),
    'checkpoint_every': cc.integer(1, affects_results=False),
    'keep_checkpoints': cc.integer(1, affects_results=False),
    'log_every': cc.integer(1, affects_results=False),
    'siglip.steps': _POS,
    'siglip.batch_size': _POS,
    'siglip.lr': cc.number(0, lo_open=True),
    'siglip.warmup': cc.integer(0),
    'siglip.weight_decay': _NONNEG,
    'siglip.evidence_share': cc.number(0, 1),
    'siglip.moving_share': cc.number(0, 1),
    'siglip.word_loss_weight': _NONNEG,
    'llava.steps': _POS,
    'llava.batch_size': _POS,
    'llava.lr': cc.number(0, lo_open=True),
    'llava.warmup': cc.integer(0),
    'llava.first_types': cc.names(synthetic.QTYPES, nonempty=False),
    'llava.first_steps': cc.integer(0),
    'llava.short_steps': cc.integer(0),
    'llava.short_frames': _POS,
    'llava.weight_decay': _NONNEG,
    **{f'llava.{w}_loss_weight': _NONNEG for w in ('frame', 'seen', 'event', 'option', 'recall', 'ground')},
    'llava.frame_loss_layer': _LAYER,
    'llava.seen_loss_layer': _LAYER,
    'llava.event_loss_layer': _LAYER,
  },
  relations=(_relations,),
)
