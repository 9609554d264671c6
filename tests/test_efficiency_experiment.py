"""experiments.efficiency: bad input fails before any compute, the plan chosen from a knockout summary,
the Pareto front, and a small resumable run on the embedded default writing the results contract."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import efficiency as efficiency_config
from experiments import efficiency as experiment
from jaxvlm import checkpoints, costs, runs
from jaxvlm.keyframes import efficiency
from jaxvlm.knockout import efficiency as plans_lib
from jaxvlm.models.efficient import InferencePlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny():
  model, _, processor = checkpoints.load_pretrained(os.path.join(REPO, 'assets', 'llava_ov_tiny'))
  return model, processor


def knockout_summary(clean: float, global1: dict, fine_vt: dict, vt_all: float, num_layers: int = 8) -> dict:
  """A knockout summary.json: global1 {first knocked layer (1-based): acc} of LV, fine VT windows of 4
  {first layer: acc}, global2 VT accuracy."""
  rows = [
    {'setting': 'global1', 'kind': 'LV', 'first_layer': f, 'last_layer': num_layers, 'accuracy': a}
    for f, a in global1.items()
  ]
  rows += [
    {'setting': 'fine', 'kind': 'VT', 'first_layer': f, 'last_layer': f + 3, 'accuracy': a} for f, a in fine_vt.items()
  ]
  rows.append({'setting': 'global2', 'kind': 'VT', 'first_layer': 1, 'last_layer': num_layers, 'accuracy': vt_all})
  return {'clean_accuracy': clean, 'rows': rows}


def write_knockout_run(path: str, checkpoint: str, summary: dict) -> str:
  os.makedirs(path, exist_ok=True)
  runs.write_json(os.path.join(path, 'config.json'), {'checkpoint': checkpoint})
  runs.write_json(os.path.join(path, 'summary.json'), summary)
  return path


def config(**overrides):
  c = efficiency_config.get_config('runlocal')
  c.checkpoint = os.path.join(REPO, 'assets', 'llava_ov_tiny')
  c.siglip_checkpoint = os.path.join(REPO, 'assets', 'siglip_tiny')
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_plan_chosen_from_a_knockout_summary(tiny):
  model, processor = tiny
  shape = efficiency.prompt_shape(processor, model.config, 32)
  # LV from layer 5 on (exit after 4) still within 1 point, from 3 on not; VT in layers 1-4 free, VT in
  # all layers not: the cheapest safe plan is exit after 4 with within-frame layers 1-4.
  summary = knockout_summary(0.95, {1: 0.2, 3: 0.5, 5: 0.945, 7: 0.95}, {1: 0.95, 2: 0.9}, 0.6)
  assert plans_lib.safe_choices(summary, 8, 0.01) == ([4, 6, 8], [0, 4], False)
  assert plans_lib.choose_plan(summary, model.config, shape, 0.01) == InferencePlan(4, 4)
  # Nothing safe: the full model.
  strict = knockout_summary(0.95, {1: 0.2, 3: 0.5, 5: 0.9, 7: 0.9}, {1: 0.8}, 0.6)
  assert plans_lib.choose_plan(strict, model.config, shape, 0.01) == InferencePlan(8, 0)
  # VT in every layer safe: within-frame up to the exit.
  loose = knockout_summary(0.95, {1: 0.2, 3: 0.95}, {1: 0.95}, 0.95)
  assert plans_lib.choose_plan(loose, model.config, shape, 0.01) == InferencePlan(2, 2)
  cost = lambda p: costs.prefill_cost(model.config, p, shape).total
  assert cost(InferencePlan(2, 2)) < cost(InferencePlan(2, 0)) < cost(InferencePlan(8, 0))


@pytest.mark.parametrize(
  'overrides,message',
  [
    (dict(exit_layer=9), 'exit_layer 9 is outside the decoder stack'),
    (dict(exit_layer=3, intra_frame_layers=4), 'intra_frame_layers=4: above exit_layer=3'),
    (dict(plans='2:5'), 'intra_frame_layers 5 lie above the exit'),
    (dict(plans='12:0'), 'exit_layer 12 is outside the decoder stack'),
    (dict(ks='2,16'), r"ks='2,16': \[16\] outside 1..num_frames=8"),
    (dict(selectors='uniform,learned'), "'learned' needs selector_checkpoint"),
    (dict(plans='5'), "plans='5': entry '5' is not 'exit_layer:intra_frame_layers'"),
  ],
)
def test_bad_input_fails_before_compute(tmp_path, overrides, message):
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=message):
    experiment.run(config(**overrides), workdir)
  assert not os.path.exists(workdir)  # nothing was written, nothing computed


def test_knockout_workdir_of_another_model_is_rejected(tmp_path):
  summary = knockout_summary(0.95, {1: 0.2, 5: 0.95}, {1: 0.95}, 0.6)
  other = write_knockout_run(str(tmp_path / 'ko_other'), 'llava-hf/llava-onevision-qwen2-7b-ov-hf', summary)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='is a run of checkpoint .llava-hf/llava-onevision-qwen2-7b-ov-hf.'):
    experiment.run(config(knockout_workdir=other), workdir)
  deep = write_knockout_run(
    str(tmp_path / 'ko_deep'), config().checkpoint, knockout_summary(0.95, {1: 0.2}, {1: 0.95}, 0.6, num_layers=28)
  )
  with pytest.raises(ValueError, match='its knockouts reach layer 28, this model has 8 layers'):
    experiment.run(config(knockout_workdir=deep), workdir)
  with pytest.raises(ValueError, match='holds no finished knockout run'):
    experiment.run(config(knockout_workdir=str(tmp_path / 'missing')), workdir)
  assert not os.path.exists(workdir)


def test_pareto_front():
  points = [(1.0, 0.9), (2.0, 0.95), (1.5, 0.85), (0.5, 0.5), (2.0, 0.9)]
  np.testing.assert_array_equal(plans_lib.pareto_front(points), [True, True, False, True, False])


def test_small_run_writes_the_results_contract_and_resumes(tmp_path):
  summary = knockout_summary(0.95, {1: 0.2, 3: 0.95, 5: 0.95, 7: 0.95}, {1: 0.95}, 0.6)
  ko = write_knockout_run(str(tmp_path / 'ko'), config().checkpoint, summary)
  c = config(max_samples=2, num_frames=4, ks='2', plans='', selectors='uniform', knockout_workdir=ko, batch_size=2)
  workdir = str(tmp_path / 'run')
  out = experiment.run(c, workdir)
  # LV from layer 3 on is safe and VT 1-4 is, but within-frame layers cannot exceed exit 2: exit after 2.
  assert out['header']['chosen_plan'] == 'exit2'
  names = {r['name'] for r in out['rows']}
  assert names == {f'{p}/uniform/{k}' for p in ('clean', 'exit2') for k in (2, 4)}
  rows = {r['name']: r for r in out['rows']}
  clean = rows['clean/uniform/4']
  assert clean['attention_share'] == 1.0 and clean['measured_speedup'] == 1.0 and clean['change_vs_clean'] == 0.0
  assert all(r['accuracy_low'] <= r['accuracy'] <= r['accuracy_high'] for r in out['rows'])
  assert rows['exit2/uniform/4']['total_gflops'] < clean['total_gflops']
  assert all(r['prefill_seconds'] > 0 and r['peak_memory_bytes'] > 0 for r in out['rows'])
  assert any(r['pareto'] for r in out['rows'])
  for name in ('config.json', 'samples.jsonl', 'summary.json', 'summary.csv', 'timing.json', 'pareto.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    first = [json.loads(line) for line in f]
  assert len(first) == 2 and all(len(r['logp']) == 4 for r in first)
  experiment.run(c, workdir)  # resumes: nothing recomputed, nothing duplicated
  with open(os.path.join(workdir, 'samples.jsonl')) as f:
    assert len(f.readlines()) == 2
