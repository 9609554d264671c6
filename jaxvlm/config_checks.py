"""Config validation before any compute: every field of an experiment's config has a `Field` (its type,
range or allowed names, and whether it can change results), and relations between fields are checked
too (e.g. ks <= num_candidates). `check(config, spec)` raises one `ConfigError` naming every bad field
with its value and the allowed values, before a model is loaded or a workdir is written.

The experiments' specs live next to the code that reads the fields (`jaxvlm.knockout.config_fields`,
`jaxvlm.keyframes.config_fields`, `jaxvlm.memory_plan.CONFIG_FIELDS`); this module holds the mechanism
and the fields every experiment shares (checkpoint, dtype, benchmark + data, mesh, fresh,
retry_failures). Relations that need the model (window <= its layers) are checked by the experiment
right after the model's config is read, still before any compute.

`Field.affects_results` feeds the workdir binding (`jaxvlm.runs.prepare_workdir`): a rerun into a
workdir may change only the fields that cannot change a sample's record (batch size, mesh, ...).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxvlm.data import loaders, synthetic


class ConfigError(ValueError):
  """One or more config fields are invalid; the message names each with its value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Field:
  """problem(value) -> None if allowed, else what is wrong; allowed: the allowed values, for messages;
  optional: some presets have no such field (e.g. frame_size, only Qwen2.5-VL's)."""

  problem: Callable[[Any], str | None]
  allowed: str
  affects_results: bool = True
  optional: bool = False


def optional(field: Field) -> Field:
  return dataclasses.replace(field, optional=True)


def frame_size() -> Field:
  """'' (the checkpoint's own rule) or 'H,W' (positive ints; Qwen2.5-VL resizes every frame to it)."""

  def problem(v):
    if not isinstance(v, str):
      return f'not a string ({type(v).__name__})'
    if not v:
      return None
    parts = [x.strip() for x in v.split(',')]
    if len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts):
      return "not 'H,W'"
    return None

  return Field(problem, "'' (the checkpoint's own size) or 'H,W' in pixels, e.g. '448,448'")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(
  lo: int | None = None,
  hi: int | None = None,
  also: Sequence[int] = (),
  *,
  affects_results: bool = True,
  meaning: str = '',
) -> Field:
  """An int in [lo, hi] (None: unbounded), or one of `also` (e.g. -1 = all)."""
  rng = (f'>= {lo}' if hi is None else f'in {lo}..{hi}') if lo is not None else (f'<= {hi}' if hi is not None else '')
  allowed = ' '.join(x for x in ('an integer', rng) if x)
  if also:
    allowed += ', or ' + ' or '.join(f'{a}{meaning and f" ({meaning})"}' for a in also)

  def problem(v):
    if not _is_int(v):
      return f'not an integer ({type(v).__name__})'
    if v in also:
      return None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
      return 'out of range'
    return None

  return Field(problem, allowed, affects_results)


def number(
  lo: float | None = None,
  hi: float | None = None,
  *,
  lo_open: bool = False,
  hi_open: bool = False,
  affects_results: bool = True,
) -> Field:
  """A real number in [lo, hi] (an open end with lo_open / hi_open)."""
  parts = []
  if lo is not None:
    parts.append(f'{">" if lo_open else ">="} {lo}')
  if hi is not None:
    parts.append(f'{"<" if hi_open else "<="} {hi}')
  allowed = 'a number' + (' ' + ' and '.join(parts) if parts else '')

  def problem(v):
    if not _is_number(v) or v != v:  # NaN
      return f'not a number ({type(v).__name__})'
    if lo is not None and (v <= lo if lo_open else v < lo):
      return 'out of range'
    if hi is not None and (v >= hi if hi_open else v > hi):
      return 'out of range'
    return None

  return Field(problem, allowed, affects_results)


def boolean(*, affects_results: bool = True) -> Field:
  return Field(
    lambda v: None if isinstance(v, bool) else f'not True/False ({type(v).__name__})', 'True or False', affects_results
  )


def text(*, nonempty: bool = False, affects_results: bool = True) -> Field:
  def problem(v):
    if not isinstance(v, str):
      return f'not a string ({type(v).__name__})'
    return 'empty' if nonempty and not v.strip() else None

  return Field(problem, 'a non-empty string' if nonempty else 'a string', affects_results)


def one_of(*values: Any, affects_results: bool = True) -> Field:
  return Field(
    lambda v: None if v in values else 'not allowed', 'one of ' + ', '.join(map(repr, values)), affects_results
  )


def csv_items(v) -> list[str] | None:
  """'a,b' or (a, b) -> ['a', 'b']; None if v is neither a string nor a sequence."""
  if isinstance(v, str):
    return [x.strip() for x in v.split(',') if x.strip()]
  if isinstance(v, (list, tuple)):
    return [str(x).strip() for x in v]
  return None


def _csv_or_problem(v: Any, nonempty: bool) -> tuple[list[str], str | None]:
  """(items, None) for a comma-separated value, or ([], what is wrong with it)."""
  items = csv_items(v)
  if items is None:
    return [], f'not a comma-separated string ({type(v).__name__})'
  if nonempty and not items:
    return [], 'empty'
  return items, None


def checked_items(v) -> list[str]:
  """csv_items of a field whose own check has passed (relations run only then), so never None."""
  items = csv_items(v)
  if items is None:
    raise TypeError(f'{v!r} is neither a comma-separated string nor a sequence (its field check should have said so)')
  return items


def names(values: Iterable[str], *, nonempty: bool = True, affects_results: bool = True) -> Field:
  """Comma-separated names (or a sequence), each one of `values`."""
  values = tuple(values)

  def problem(v):
    items, bad = _csv_or_problem(v, nonempty)
    if bad:
      return bad
    unknown = [x for x in items if x not in values]
    if unknown:
      return f'unknown {", ".join(map(repr, unknown))}'
    if len(set(items)) != len(items):
      return 'a name is repeated'
    return None

  return Field(
    problem, ('' if nonempty else 'empty or ') + 'comma-separated names from ' + ', '.join(values), affects_results
  )


def int_list(lo: int = 0, *, nonempty: bool = True, affects_results: bool = True) -> Field:
  """Comma-separated integers >= lo (or a sequence)."""

  def problem(v):
    items, bad = _csv_or_problem(v, nonempty)
    if bad:
      return bad
    try:
      ints = [int(x) for x in items]
    except ValueError:
      return 'not all integers'
    below = [i for i in ints if i < lo]
    return f'{below} below {lo}' if below else None

  return Field(problem, ('' if nonempty else 'empty or ') + f'comma-separated integers >= {lo}', affects_results)


def layer_range(*, affects_results: bool = True) -> Field:
  """'' (all layers) or 'first-last' (0-based, inclusive); the upper bound is the model's, checked later."""

  def problem(v):
    if not isinstance(v, str):
      return f'not a string ({type(v).__name__})'
    if not v:
      return None
    try:
      first, last = (int(x) for x in v.split('-'))
    except ValueError:
      return 'not of the form first-last'
    return None if 0 <= first <= last else 'first must be <= last, both >= 0'

  return Field(problem, "'' (all layers) or 'first-last' (0-based, inclusive)", affects_results)


@dataclasses.dataclass(frozen=True)
class Spec:
  """An experiment's config fields by dotted name ('mesh.data'), relations between them (config ->
  problems, each naming its fields), and groups whose sub-fields are open (checked by a relation or
  free-form, e.g. 'data', whose fields depend on the benchmark)."""

  experiment: str
  config_file: str
  fields: Mapping[str, Field]
  relations: Sequence[Callable[[Any], Iterable[str]]] = ()
  open_groups: Mapping[str, bool] = dataclasses.field(default_factory=dict)  # group -> affects results

  def free_fields(self) -> list[str]:
    """Dotted names (or 'group.*') that may differ when a run resumes in an existing workdir."""
    return sorted(
      [k for k, f in self.fields.items() if not f.affects_results]
      + [f'{g}.*' for g, affects in self.open_groups.items() if not affects]
    )

  def affects_results(self, name: str) -> bool:
    if name in self.fields:
      return self.fields[name].affects_results
    for group, affects in self.open_groups.items():
      if name.startswith(group + '.'):
        return affects
    return True  # a field with no spec is assumed to change results


def flatten(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'mesh': {'data': -1}} -> {'mesh.data': -1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def _collapse(missing: list[str], fields: Iterable[str]) -> list[str]:
  """Names a group as 'g.*' when all its fields are missing."""
  out = []
  for name in missing:
    group = name.split('.')[0] + '.'
    members = [f for f in fields if f.startswith(group)]
    if '.' in name and all(m in missing for m in members):
      if group + '*' not in out:
        out.append(group + '*')
    else:
      out.append(name)
  return out


def problems(config, spec: Spec) -> list[str]:
  """Every problem of `config` under `spec` as 'field=value: what is wrong; expected ...'."""
  flat = flatten(_as_dict(config))
  out = []
  missing = sorted(k for k, f in spec.fields.items() if k not in flat and not f.optional)
  in_group = lambda k: any(k == g or k.startswith(g + '.') for g in spec.open_groups)
  unknown = sorted(k for k in flat if k not in spec.fields and not in_group(k))
  if missing or (unknown and len(unknown) * 2 >= len(flat)):
    # Mostly unknown fields: another experiment's config. Say which file this experiment reads.
    out.append(
      f'this is not a {spec.experiment} config ({spec.config_file}): '
      + (f'missing fields {", ".join(_collapse(missing, spec.fields))}' if missing else '')
      + ('; ' if missing and unknown else '')
      + (f'unknown fields {", ".join(unknown)}' if unknown else '')
    )
    return out
  for k in unknown:
    out.append(f'{k}={flat[k]!r}: unknown field (no check in the {spec.experiment} spec)')
  for name, field in spec.fields.items():
    if name not in flat:
      continue  # optional and absent
    why = field.problem(flat[name])
    if why:
      out.append(f'{name}={flat[name]!r}: {why}; expected {field.allowed}')
  if not out:  # relations read fields whose own checks passed
    for relation in spec.relations:
      out.extend(relation(config))
  return out


def check(config, spec: Spec) -> None:
  """Raises ConfigError listing every problem; returns None when the config is valid."""
  found = problems(config, spec)
  if found:
    raise ConfigError(
      f'invalid {spec.experiment} config ({len(found)} problem{"s" * (len(found) > 1)}):\n  ' + '\n  '.join(found)
    )


# ---------------------------------------------------------------- fields every experiment shares

DTYPES = ('float32', 'bfloat16', 'float16')
# Arguments of synthetic.ensure a synthetic split is generated from (the data.* fields of 'synthetic').
SYNTHETIC_FIELDS = {
  'split': one_of(*synthetic.SPLITS),
  'num': integer(1),
  'seed': integer(),
  'num_frames': integer(1),
  'size': integer(8),
  'fps': integer(1),
}


def model_fields() -> dict[str, Field]:
  return {
    'checkpoint': text(nonempty=True),
    'dtype': one_of(*DTYPES),
    'benchmark': one_of(*sorted(loaders.LOADERS)),
    'frame_size': optional(frame_size()),
  }


def mesh_fields(devices: bool = True) -> dict[str, Field]:
  """mesh.{data, fsdp, tensor}: sizes (at most one -1 = the rest) over mesh.devices: 'local' (this host's
  devices) or 'global' (every process's; weights split across hosts). Neither changes a result."""
  axis = integer(1, also=(-1,), meaning='all remaining devices', affects_results=False)
  out = {'mesh.data': axis, 'mesh.fsdp': axis, 'mesh.tensor': axis}
  if devices:
    out['mesh.devices'] = one_of('local', 'global', affects_results=False)
  return out


def placement_fields() -> dict[str, Field]:
  """Where a Video-LLM's weights live: param_dtype on the devices (changes results: bfloat16 weights are
  rounded) and the mesh (`mesh_fields`)."""
  return {'param_dtype': one_of(*DTYPES), **mesh_fields()}


def run_fields() -> dict[str, Field]:
  """How a rerun treats the workdir: fresh discards what is there, retry_failures reruns failed samples."""
  return {'fresh': boolean(affects_results=False), 'retry_failures': boolean(affects_results=False)}


def data_relation(config) -> list[str]:
  """data.* by benchmark: for 'synthetic' the generator's arguments (or data.ann = an existing split
  directory); for a benchmark, data.ann and data.video_root exist and every other data field is an
  argument of its loader. One data block serves every benchmark, so the other loaders' optional
  arguments (loaders.OPTIONAL_ARGS) may be there unset ('' / False), and the synthetic generator's
  split/num/seed are ignored by the benchmarks' loaders."""
  data = dict(config.data)
  out = []
  unset = lambda v: v in ('', None, False)
  if config.benchmark == 'synthetic':
    for key, value in data.items():
      if key in ('ann', 'video_root'):
        if not isinstance(value, str):
          out.append(f'data.{key}={value!r}: not a string; expected a path or \'\'')
        continue
      field = SYNTHETIC_FIELDS.get(key)
      if field is None:
        if key in loaders.OPTIONAL_ARGS and unset(value):
          continue
        out.append(
          f'data.{key}={value!r}: not an argument of the synthetic world; expected some of '
          f'ann, {", ".join(SYNTHETIC_FIELDS)}'
        )
      elif field.problem(value):
        out.append(f'data.{key}={value!r}: {field.problem(value)}; expected {field.allowed}')
    ann = data.get('ann') or ''
    if ann and not os.path.isdir(os.path.join(ann, 'json')):
      out.append(
        f"data.ann={ann!r}: not a synthetic split directory (no json/ inside); expected '' "
        f'(generate one under the workdir) or a directory written by experiments.make_synthetic'
      )
    return out
  params = list(inspect.signature(loaders.LOADERS[config.benchmark]).parameters)
  accepted = set(params[1:]) | {'ann', params[0]}
  for key in ('ann', 'video_root'):
    value = data.get(key)
    if key == 'video_root' and 'video_root' not in params:
      continue
    if not isinstance(value, str) or not value:
      out.append(f'data.{key}={value!r}: benchmark={config.benchmark!r} needs it; set --config.data.{key}=PATH')
    elif not os.path.exists(value):
      out.append(f'data.{key}={value!r}: no such file or directory (set --config.data.{key}=PATH)')
  for key, value in data.items():
    if key in accepted or key in SYNTHETIC_FIELDS or (key in loaders.OPTIONAL_ARGS and unset(value)):
      continue
    out.append(
      f'data.{key}={value!r}: not an argument of the {config.benchmark} loader; expected some '
      f'of {", ".join(sorted(accepted))}'
    )
  for key in ('answers_json', 'video_map_json'):
    value = data.get(key)
    if key in accepted and isinstance(value, str) and value and not os.path.exists(value):
      out.append(f'data.{key}={value!r}: no such file')
  return out


def loader_kwargs(benchmark: str, data: Mapping[str, Any]) -> dict[str, Any]:
  """The data.* fields for `loaders.load_benchmark` (the synthetic generator's are dropped; the
  optional loader arguments go through, load_benchmark drops the unset ones)."""
  params = set(inspect.signature(loaders.LOADERS[benchmark]).parameters)
  return {k: v for k, v in data.items() if k in params or k == 'ann' or k in loaders.OPTIONAL_ARGS}
