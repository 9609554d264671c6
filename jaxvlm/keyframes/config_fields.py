"""The keyframe experiments' config fields (configs/keyframe_diagnosis.py, configs/train_selector.py),
checked before any compute by `jaxvlm.config_checks.check(config, DIAGNOSIS / TRAIN_SELECTOR)`; layer
ranges against the model's layers are checked right after its config is read (`diagnosis.plan_from_config`,
`candidates.layer_range`)."""

from __future__ import annotations

from jaxvlm import config_checks as cc, input_pipeline
from jaxvlm.keyframes import diagnosis, efficiency


def _budgets(config, field: str) -> list[str]:
  """ks / k within 1..num_candidates."""
  values = [int(x) for x in cc.checked_items(config[field])] if field == 'ks' else [config[field]]
  bad = [k for k in values if not 1 <= k <= config.num_candidates]
  return [f'{field}={config[field]!r}: {bad} outside 1..num_candidates={config.num_candidates}'] if bad else []


def _diagnosis_relations(config) -> list[str]:
  out = cc.data_relation(config) + _budgets(config, 'ks')
  ks = [int(x) for x in cc.checked_items(config.ks)]
  if config.sensitive_k not in ks:
    out.append(f'sensitive_k={config.sensitive_k}: not one of ks={config.ks!r}')
  if 'learned' in cc.checked_items(config.selectors) and not config.selector_checkpoint:
    out.append("selectors: 'learned' needs selector_checkpoint=DIR (an experiments.train_selector workdir)")
  return out


def _train_relations(config) -> list[str]:
  out = cc.data_relation(config) + _budgets(config, 'k')
  if config.model.width % config.model.num_heads:
    out.append(f'model.width={config.model.width}: not a multiple of model.num_heads={config.model.num_heads}')
  if config.warmup_steps > config.num_steps:
    out.append(f'warmup_steps={config.warmup_steps}: more than num_steps={config.num_steps}')
  return out


_SHARED = {
  **cc.model_fields(),
  **cc.placement_fields(),
  'siglip_checkpoint': cc.text(nonempty=True),
  'max_samples': cc.integer(1, also=(-1,), meaning='all'),
  'num_candidates': cc.integer(1),
  'oracle_layers': cc.layer_range(),
  'tail_multiple': cc.integer(1, affects_results=False),
}

DIAGNOSIS = cc.Spec(
  'keyframe_diagnosis',
  'configs/keyframe_diagnosis.py[:preset]',
  {
    **_SHARED,
    **cc.run_fields(),
    'max_samples': cc.integer(1, also=(-1,), meaning='all', affects_results=False),
    'ks': cc.int_list(1),
    'selectors': cc.names(diagnosis.SELECTORS),
    'attention_layers': cc.layer_range(),
    'sensitive_k': cc.integer(1),
    'bolt_alpha': cc.number(0, lo_open=True),
    'aks_depth': cc.integer(0),
    'aks_threshold': cc.number(0, 1),
    'seed': cc.integer(),
    'batch_size': cc.integer(1, affects_results=False),
    'input_workers': cc.integer(0, affects_results=False),
    'input_worker_kind': cc.one_of(*input_pipeline.WORKER_KINDS, affects_results=False),
    'strip_samples': cc.integer(0, affects_results=False),
    'selector_checkpoint': cc.text(),
  },
  relations=(_diagnosis_relations,),
  open_groups={'data': True},
)

# Training resumes from its checkpoints: every field that shapes the labels, the data or the optimiser
# binds the workdir; only throughput and bookkeeping fields may differ.
TRAIN_SELECTOR = cc.Spec(
  'train_selector',
  'configs/train_selector.py[:preset]',
  {
    **_SHARED,
    'fresh': cc.run_fields()['fresh'],  # teacher failures are never cached: every rerun retries them
    'label': cc.boolean(affects_results=False),
    'teacher_dir': cc.text(),
    'label_batch_size': cc.integer(1, affects_results=False),
    'model.width': cc.integer(1),
    'model.depth': cc.integer(1),
    'model.num_heads': cc.integer(1),
    'model.mlp_ratio': cc.integer(1),
    'model.num_freqs': cc.integer(1),
    'tau': cc.number(0, lo_open=True),
    'pairwise_weight': cc.number(0),
    'pairwise_margin': cc.number(0),
    'batch_size': cc.integer(1),
    'num_steps': cc.integer(1),
    'learning_rate': cc.number(0, lo_open=True),
    'warmup_steps': cc.integer(0),
    'weight_decay': cc.number(0),
    'seed': cc.integer(),
    'num_devices': cc.integer(1, also=(-1,), meaning='all', affects_results=False),
    'val_fraction': cc.number(0, 1, lo_open=True, hi_open=True),
    'k': cc.integer(1),
    'eval_every': cc.integer(1),
    'checkpoint_every': cc.integer(1, affects_results=False),
    'keep': cc.integer(1, affects_results=False),
    'stop_after_steps': cc.integer(1, also=(-1,), meaning='no stop', affects_results=False),
  },
  relations=(_train_relations,),
  open_groups={'data': True},
)


def _efficiency_relations(config) -> list[str]:
  out = cc.data_relation(config)
  bad = [k for k in (int(x) for x in cc.checked_items(config.ks)) if not 1 <= k <= config.num_frames]
  if bad:
    out.append(f'ks={config.ks!r}: {bad} outside 1..num_frames={config.num_frames}')
  for item in cc.checked_items(config.plans):
    parts = item.split(':')
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      out.append(f"plans={config.plans!r}: entry {item!r} is not 'exit_layer:intra_frame_layers', e.g. '5:2'")
  if config.exit_layer >= 0 and config.intra_frame_layers > config.exit_layer:
    out.append(f'intra_frame_layers={config.intra_frame_layers}: above exit_layer={config.exit_layer}')
  if 'learned' in cc.checked_items(config.selectors) and not config.selector_checkpoint:
    out.append("selectors: 'learned' needs selector_checkpoint=DIR (an experiments.train_selector workdir)")
  return out


# Layer bounds of the plans against the model are `efficiency.grid_from_config`'s (after its config is read).
EFFICIENCY = cc.Spec(
  'efficiency',
  'configs/efficiency.py[:preset]',
  {
    **cc.model_fields(),
    **cc.run_fields(),
    'siglip_checkpoint': cc.text(nonempty=True),
    'num_frames': cc.integer(1),
    'exit_layer': cc.integer(0, also=(-1,), meaning='no explicit plan'),
    'intra_frame_layers': cc.integer(0),
    'knockout_workdir': cc.text(),
    'max_drop': cc.number(0, 1),
    'plans': cc.Field(
      lambda v: None if isinstance(v, str) else f'not a string ({type(v).__name__})',
      "comma-separated 'exit_layer:intra_frame_layers' entries, e.g. '5:2,5:0'",
    ),
    'ks': cc.int_list(1),
    'selectors': cc.names(efficiency.SELECTORS),
    'selector_checkpoint': cc.text(),
    'timing_repeats': cc.integer(1, affects_results=False),
    'max_samples': cc.integer(1, also=(-1,), meaning='all', affects_results=False),
    'batch_size': cc.integer(1, affects_results=False),
  },
  relations=(_efficiency_relations,),
  open_groups={'data': True},
)
