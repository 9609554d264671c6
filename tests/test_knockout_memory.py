"""A knocked-out layer needs no more memory than a clean one: no S x S tensor (compile only)."""

from __future__ import annotations

import pytest

from benchmarks import knockout_memory as bench
from jaxvlm.knockout import specs as knockout


@pytest.fixture(scope='module')
def clean_bytes():
  return bench.layer_temp_bytes(None)


@pytest.mark.parametrize('kind', knockout.KINDS)
def test_knocked_out_layer_memory_within_1_25x_of_clean(clean_bytes, kind):
  clean, s = clean_bytes
  knocked, _ = bench.layer_temp_bytes(kind)
  print(f'S={s}: clean {clean / 2**20:.1f} MiB, {kind} {knocked / 2**20:.1f} MiB, ratio {knocked / clean:.3f}')
  assert knocked <= 1.25 * clean
  # One f32 S x S x H score tensor alone would be 16.6 GiB; the whole layer must stay far below it.
  assert knocked < s * s * bench.QWEN2_7B['num_attention_heads'] * 4 / 4
