r"""Host memory of loading a ~1 GB bfloat16 LLaVA-OneVision checkpoint: whole model on one host (the
float32 path `load_pretrained(path)`) vs sharded across 2 processes x 4 CPU devices
(`load_pretrained(path, param_dtype=..., mesh=fsdp 8)`), as each process's peak RSS growth.

  python -m benchmarks.sharded_load_memory [--dir /tmp/sharded_load_ckpt] [--keep]

The checkpoint is a random model written with `checkpoints.export_pretrained(..., dtype=bfloat16)` in
256 MB shards, as hub checkpoints are. On CPU, device memory IS host memory: a process holding half of
the model on its 4 devices grows by at least half the checkpoint, so the goal (<= 0.6x) leaves 0.1x for
everything the loader holds at once. Peak RSS is the kernel's high-water mark (VmHWM), reset just
before the load (/proc/self/clear_refs), so imports and jax start-up are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

GiB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ~460M parameters: a 28-layer Qwen2 (width 1024) behind a 12-layer SigLIP (width 768): 0.92 GB in bf16.
CONFIG = {
  'model_type': 'llava_onevision',
  'vision_config': dict(
    model_type='siglip_vision_model',
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
  ),
  'text_config': dict(
    model_type='qwen2',
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
  ),
  'video_token_index': 31999,
  'image_token_index': 31998,
  'vision_feature_layer': -1,
  'vision_feature_select_strategy': 'full',
  'tie_word_embeddings': False,
}


def write_checkpoint(out_dir: str) -> int:
  """Random bf16 weights exported with the repo's export; returns the bytes of the weight files."""
  import ml_dtypes
  import numpy as np
  import jax
  from jaxvlm import checkpoints

  family = checkpoints.family_of(CONFIG)
  model = family.build(CONFIG, np.float32)
  shapes = family.param_shapes(model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape, np.float32)).astype(ml_dtypes.bfloat16), shapes)
  checkpoints.export_pretrained(model, params, CONFIG, out_dir, max_shard_bytes=256 * 2**20, dtype=ml_dtypes.bfloat16)
  return weight_bytes(out_dir)


def weight_bytes(ckpt_dir: str) -> int:
  return sum(os.path.getsize(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir) if f.endswith('.safetensors'))


def _status(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def worker(args) -> None:
  """One loading process: prints a JSON line {rss_before, peak, ...} (bytes)."""
  import jax
  import jax.numpy as jnp
  from jaxvlm import checkpoints, distributed, sharding

  if args.num_processes > 1:
    distributed.initialize(f'127.0.0.1:{args.port}', args.num_processes, args.process_id)
  mesh = sharding.make_mesh(data=1, fsdp=-1) if args.mode != 'whole' else None
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  jax.block_until_ready(jnp.zeros(8) + 1)  # start the runtime before the baseline
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM to the current RSS
  before = _status('VmRSS')
  t0 = time.time()
  if mesh is None:
    _, params, _ = checkpoints.load_pretrained(args.dir, param_dtype=dtype)
  else:
    _, params, _ = checkpoints.load_pretrained(args.dir, param_dtype=dtype, mesh=mesh)
  jax.block_until_ready(params)
  seconds = time.time() - t0
  held = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
  print(
    'RESULT '
    + json.dumps(
      {
        'rss_before': before,
        'peak': _status('VmHWM'),
        'rss_after': _status('VmRSS'),
        'held_on_devices': held,
        'seconds': seconds,
        'process': args.process_id,
      }
    ),
    flush=True,
  )
  distributed.barrier('loaded')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run(ckpt_dir: str, mode: str, dtype: str, num_processes: int, devices_per_process: int) -> list[dict]:
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}',
    PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'benchmarks.sharded_load_memory',
        '--worker',
        '--dir',
        ckpt_dir,
        '--mode',
        mode,
        '--dtype',
        dtype,
        '--num_processes',
        str(num_processes),
        '--process_id',
        str(i),
        '--port',
        str(port),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(num_processes)
  ]
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=1800)
    if p.returncode:
      raise RuntimeError(f'{mode} worker failed:\n{stderr[-3000:]}')
    out.append(json.loads([l for l in stdout.splitlines() if l.startswith('RESULT ')][-1][len('RESULT ') :]))
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dir', default=None, help='checkpoint directory (written if absent)')
  parser.add_argument('--keep', action='store_true', help='keep the written checkpoint')
  parser.add_argument('--worker', action='store_true')
  parser.add_argument('--mode', default='sharded')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--port', type=int, default=0)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  ckpt_dir = args.dir or tempfile.mkdtemp(prefix='sharded_load_ckpt_')
  try:
    if not os.path.isfile(os.path.join(ckpt_dir, 'config.json')):
      t0 = time.time()
      write_checkpoint(ckpt_dir)
      print(f'wrote {ckpt_dir} in {time.time() - t0:.0f} s')
    size = weight_bytes(ckpt_dir)
    print(
      f'checkpoint: {size / GiB:.3f} GiB of bfloat16 safetensors '
      f'({len([f for f in os.listdir(ckpt_dir) if f.endswith(".safetensors")])} files); '
      f'a float32 copy of the model would be {2 * size / GiB:.3f} GiB'
    )
    rows = [
      ('whole model, 1 process, float32 (load_pretrained(path))', run(ckpt_dir, 'whole', 'float32', 1, 1)),
      ('sharded fsdp=8, 2 processes x 4 devices, bfloat16', run(ckpt_dir, 'sharded', 'bfloat16', 2, 4)),
      ('sharded fsdp=8, 2 processes x 4 devices, float32 asked', run(ckpt_dir, 'sharded', 'float32', 2, 4)),
    ]
    print(
      f'{"load":58} {"proc":>4} {"peak RSS growth":>16} {"x ckpt":>7} {"x f32 copy":>10} {"on devices":>11} {"s":>6}'
    )
    for name, results in rows:
      for r in results:
        growth = r['peak'] - r['rss_before']
        print(
          f'{name:58} {r["process"]:>4} {growth / GiB:>12.3f} GiB {growth / size:>7.3f} '
          f'{growth / (2 * size):>10.3f} {r["held_on_devices"] / GiB:>7.3f} GiB {r["seconds"]:>6.1f}'
        )
    sharded = rows[1][1]
    worst = max(r['peak'] - r['rss_before'] for r in sharded)
    baseline = rows[0][1][0]['peak'] - rows[0][1][0]['rss_before']
    print(
      f'bf16 sharded: worst process peak growth {worst / size:.3f}x the checkpoint (goal <= 0.6x), '
      f'{worst / (2 * size):.3f}x a float32 copy of the model, {worst / baseline:.3f}x the whole-model load'
    )
  finally:
    if not args.keep and not args.dir:
      shutil.rmtree(ckpt_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
