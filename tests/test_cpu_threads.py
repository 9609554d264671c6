"""XLA's CPU client needs two pool threads per local CPU device for multi-device programs (why:
jaxvlm/cpu_threads.py): with one it deadlocks, and importing jaxvlm sizes the pool before JAX starts.

The reproduction (`python -m tests.test_cpu_threads`) runs in a subprocess with 8 CPU devices: a chain
of all-to-all programs on an fsdp 4 x tensor 2 mesh (the resharding the attention heads need under
tensor parallelism), enqueued without waiting, as the sweep engine enqueues its steps.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxvlm import cpu_threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
STEPS = 400  # well past the client's 32 in-flight programs per device


def _chain() -> None:
  """The reproduction, in this process (jaxvlm is imported already, by this module): prints 'done' and
  PJRT_NPROC when every step has run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('fsdp', 'tensor'))
  rows, cols = NamedSharding(mesh, P(('fsdp', 'tensor'), None)), NamedSharding(mesh, P(None, ('fsdp', 'tensor')))
  # rows -> columns is an all-to-all; the output goes back to rows (another one) for the next step.
  step = jax.jit(lambda x: jnp.sin(jax.lax.with_sharding_constraint(x, cols)) * 1.0001, out_shardings=rows)
  x = jax.device_put(np.ones((64, 64), np.float32), rows)
  for _ in range(STEPS):
    x = step(x)
  x.block_until_ready()
  print('done', os.environ.get('PJRT_NPROC'), flush=True)


def _run(timeout_s: float, **env_vars: str) -> tuple[bool, str]:
  """(finished, stdout) of the reproduction in a subprocess, killed after timeout_s."""
  env = {k: v for k, v in os.environ.items() if k not in ('PJRT_NPROC', 'NPROC', 'JAX_NUM_CPU_DEVICES')}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}', **env_vars)
  try:
    out = subprocess.run(
      [sys.executable, '-m', 'tests.test_cpu_threads'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout_s,
    )
  except subprocess.TimeoutExpired as e:
    return False, e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
  assert out.returncode == 0, out.stderr[-3000:]
  return 'done' in out.stdout, out.stdout


def test_one_thread_per_device_deadlocks_and_importing_jaxvlm_does_not():
  # Teeth: the pool XLA makes by default on a machine with fewer cores than devices (one thread per
  # device, pinned here so the machine's core count does not matter) never finishes the chain. It
  # stalls within the first dispatches; when it works the whole chain takes a few seconds.
  finished, _ = _run(timeout_s=20, PJRT_NPROC=str(DEVICES))
  assert not finished
  # The same program with PJRT_NPROC unset: `import jaxvlm` gives the pool two threads per device
  # (or leaves a machine with that many cores alone).
  finished, out = _run(timeout_s=300)
  assert finished, out
  assert out.split()[1] == str(2 * DEVICES) or cpu_threads.pool_threads({}) >= 2 * DEVICES


@pytest.mark.parametrize(
  ('environ', 'devices'),
  [
    ({}, 1),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}, 4),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=4 --xla_force_host_platform_device_count=2'}, 2),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_NUM_CPU_DEVICES': '3'}, 3),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_NUM_CPU_DEVICES': '-1'}, 4),
  ],
)
def test_local_cpu_devices_follows_jax(environ, devices):
  assert cpu_threads.local_cpu_devices(environ) == devices


def test_ensure_sets_two_threads_per_device_and_never_overrides_the_user(monkeypatch):
  monkeypatch.setattr(cpu_threads, '_cores', lambda: 2)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert cpu_threads.pool_threads(env) == 8  # XLA's own rule: max(cores, devices)
  assert cpu_threads.ensure(env) == 16 and env['PJRT_NPROC'] == '16'
  assert cpu_threads.pool_threads(env) == 16
  for var in ('PJRT_NPROC', 'NPROC'):
    user = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', var: '3'}
    assert cpu_threads.ensure(user) is None and user[var] == '3' and len(user) == 2
    assert cpu_threads.warn_if_short(8, user)  # and a mesh over 8 CPU devices says so
  one = {}
  assert cpu_threads.ensure(one) is None and one == {}  # one device: no collectives to starve
  monkeypatch.setattr(cpu_threads, '_cores', lambda: 64)
  big = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert cpu_threads.ensure(big) is None and 'PJRT_NPROC' not in big  # 64 cores are enough already
  assert not cpu_threads.warn_if_short(8, big)


if __name__ == '__main__':
  _chain()
