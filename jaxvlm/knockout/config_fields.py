"""The knockout experiment's config fields (configs/knockout.py), checked before any compute by
`jaxvlm.config_checks.check(config, KNOCKOUT)`; the model-dependent checks (window and explicit layers
inside the model's layers) are `specs.sweep_from_config`'s, run right after the model's config is read."""

from __future__ import annotations

from jaxvlm import config_checks as cc, input_pipeline
from jaxvlm.knockout import specs


def _relations(config) -> list[str]:
  out = cc.data_relation(config)
  settings = cc.checked_items(config.settings)
  if 'explicit' in settings and not cc.checked_items(config.explicit_layers):
    out.append(f"settings={config.settings!r}: setting 'explicit' needs explicit_layers (e.g. '3,4,5')")
  return out


KNOCKOUT = cc.Spec(
  'knockout',
  'configs/knockout.py[:preset]',
  {
    **cc.model_fields(),
    **cc.placement_fields(),
    **cc.run_fields(),
    'num_frames': cc.integer(1),
    'max_samples': cc.integer(1, also=(-1,), meaning='all', affects_results=False),
    'batch_size': cc.integer(1, affects_results=False),
    'input_workers': cc.integer(0, affects_results=False),
    'input_worker_kind': cc.one_of(*input_pipeline.WORKER_KINDS, affects_results=False),
    'settings': cc.names(specs.SETTINGS + ('explicit',)),
    'kinds': cc.names(specs.KINDS),
    'global1_step': cc.integer(1),
    'window': cc.integer(1),
    'window_stride': cc.integer(1),
    'explicit_layers': cc.int_list(0, nonempty=False),
    'tail_multiple': cc.integer(1, affects_results=False),
    'spec_chunk': cc.integer(1, affects_results=False),
  },
  relations=(_relations,),
  open_groups={'data': True, 'mesh': False},
)
