"""Input pipeline overlap: the knockout experiment on long videos, serial vs `input_workers` workers.

Fixture: the synthetic test split (embedded default model and prompts) with every video replaced by a
long one: each of its 32 frames upscaled to --width x --height and held for --seconds / 32, with
light noise so the encoder cannot skip it, H.264 at 30 fps with keyframes every 250 frames. The
model still sees its 32 frames (uniform sampling lands in each held frame), but decoding them means
walking the whole long video.

XLA computes on --xla_threads CPU threads (1 by default; PJRT_NPROC sizes the XLA CPU client's pool,
which runs the programs): on a host whose model runs on an accelerator the CPU cores are free for the
input workers while the model computes, and one XLA thread leaves the other cores of a CPU-only
machine just as free. (XLA_FLAGS' intra_op_parallelism_threads, used here before, is not an XLA flag:
compute then ran on both cores; docs/results.md.) With XLA on every core, threads only
share the same cores and no pipeline can save more than the CPU time it does not have.

The experiment runs as it ships, `python -m experiments.knockout` in a subprocess, with JAX's
persistent compilation cache (under --fixture_dir) filled by a warm-up run, so later runs compile
nothing. Prints, each measured separately:
  decode   - wall seconds of runs.prepare over all samples with no input workers (decode + preprocess
             + prompt; the resize spreads frames over the resampler's threads as in the experiment),
             in this process, with the model loaded but not computing,
  compute  - wall seconds of collate + the knockout sweep over those prepared batches, in this process,
  serial   - wall seconds of the whole experiment subprocess with input_workers=0 (start to exit),
  overlap  - wall seconds of the whole experiment subprocess with input_workers=--workers (of
             --worker_kind, processes by default),
  fixed    - wall seconds of the whole experiment subprocess on one batch of samples (start-up, model
             load, that batch, summary): about what no input pipeline can overlap (the config checks
             refuse 0 samples; one full batch has the shapes the warm-up compiled),
each with its CPU seconds (user + system, every thread of every process; benchmarks/timing.py), and
overlap / (decode + compute), the goal being <= 0.7 with 2 workers: the whole experiment, fixed cost
included, against the decode and compute it has to do. The fixed cost does not grow with the samples, so
the fixture is big enough (--samples) for it to be small against the work; (overlap - fixed) / (decode +
compute) is printed beside it. No run is much shorter than fixed + max(compute, its other CPU seconds /
cores): the printed floor (an estimate), which on a 2-core host is what the ratio is measured against
(numbers in docs/results.md). Writing the long videos is the slow part of a first run; later runs reuse
them.

  python -m benchmarks.input_overlap --fixture_dir=/tmp/overlap   # the fixture is reused when present
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import sys
import tempfile

from absl import app, flags
import av
import jax
import numpy as np
from PIL import Image

from benchmarks import timing
from configs import knockout as knockout_config
from jaxvlm import input_pipeline, runs, sharding
from jaxvlm.data import synthetic
from jaxvlm.knockout import engine, specs

_FIXTURE_DIR = flags.DEFINE_string(
  'fixture_dir', None, 'Where the long-video fixture is written and reused (default: a temporary directory).'
)
_SAMPLES = flags.DEFINE_integer(
  'samples',
  480,
  'Samples in the fixture (enough that the fixed start-up cost of the experiment is small against its work).',
)
_SECONDS = flags.DEFINE_float(
  'seconds',
  100.0,
  'Length of each video. 100 s makes the decoding take about as long as the compute of the default '
  'settings (60 s gave decode / compute 0.61; docs/results.md).',
)
_HEIGHT = flags.DEFINE_integer('height', 120, 'Video height.')
_WIDTH = flags.DEFINE_integer('width', 160, 'Video width.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'input_workers of the overlapped run.')
_WORKER_KIND = flags.DEFINE_enum(
  'worker_kind',
  'process',
  list(input_pipeline.WORKER_KINDS),
  'input_worker_kind of the overlapped run: processes, what long videos want (configs/knockout.py).',
)
_SETTINGS = flags.DEFINE_string(
  'settings',
  knockout_config.get_config().settings,
  "Knockout settings (set the compute per batch). The experiment's own default: on the default fixture its "
  'compute and the decoding take comparable time (docs/results.md).',
)
_XLA_THREADS = flags.DEFINE_integer(
  'xla_threads',
  1,
  'CPU threads XLA computes with (0: its default, all '
  'cores). 1 leaves the other cores to the input workers, as a host '
  'whose model runs on an accelerator has them.',
)

_REPO = pathlib.Path(__file__).resolve().parent.parent
_FPS = 30
_SEED = 1234


def _long_video(src: str, dst: str, seconds: float, height: int, width: int, seed: int) -> None:
  """Re-encodes `src`'s frames, each held for an equal share of `seconds`, at height x width."""
  with av.open(src) as c:
    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
  total = int(round(seconds * _FPS))
  rng = np.random.default_rng(seed)
  big = [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR), np.int16) for f in frames]

  def noisy_frames():
    for i in range(total):
      source = big[min(i * len(big) // total, len(big) - 1)]
      yield np.clip(source + rng.integers(-6, 7, source.shape, dtype=np.int16), 0, 255).astype(np.uint8)

  synthetic.encode_h264(dst, noisy_frames(), height, width, _FPS, {'preset': 'veryfast', 'crf': '23', 'g': '250'})


def _lengthen(path: str, seconds: float, height: int, width: int, seed: int) -> None:
  """Replaces the video at `path` by its long version."""
  _long_video(path, path + '.long.mp4', seconds, height, width, seed)
  os.replace(path + '.long.mp4', path)


def _fixture(root: str) -> str:
  """root/synthetic/test with long videos (kept when the same arguments made it)."""
  split = synthetic.ensure(os.path.join(root, 'synthetic'), num=_SAMPLES.value, seed=_SEED, split='test')
  wanted = {'seconds': _SECONDS.value, 'height': _HEIGHT.value, 'width': _WIDTH.value}
  marker = os.path.join(split, 'long_videos.json')
  if os.path.isfile(marker):
    with open(marker) as f:
      made = json.load(f)
    # The sizes catch a split regenerated under the marker (its short videos would pass for long ones).
    if made.pop('sizes', None) == _sizes(split) and made == wanted:
      return split
  # Other arguments, or a run stopped half-way: some videos may already be long ones, which must not be
  # stretched again. Start from a freshly generated split (deterministic by seed).
  shutil.rmtree(split)
  split = synthetic.ensure(os.path.join(root, 'synthetic'), num=_SAMPLES.value, seed=_SEED, split='test')
  videos = os.path.join(split, 'videos')
  names = sorted(os.listdir(videos))
  # One process per core: video k's noise is seeded by k, so the fixture does not depend on the order.
  with concurrent.futures.ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
    jobs = [
      pool.submit(_lengthen, os.path.join(videos, name), _SECONDS.value, _HEIGHT.value, _WIDTH.value, k)
      for k, name in enumerate(names)
    ]
    for k, job in enumerate(concurrent.futures.as_completed(jobs)):
      job.result()
      print(f'wrote long video {k + 1}/{len(names)}', flush=True)
  with open(marker, 'w') as f:
    json.dump({**wanted, 'sizes': _sizes(split)}, f)
  return split


def _sizes(split: str) -> dict[str, int]:
  videos = os.path.join(split, 'videos')
  return {name: os.path.getsize(os.path.join(videos, name)) for name in sorted(os.listdir(videos))}


def _config(input_workers: int):
  c = knockout_config.get_config()
  c.data.num = _SAMPLES.value
  c.data.seed = _SEED
  c.settings = _SETTINGS.value
  c.input_workers = input_workers
  return c


def _cache_env(root: str) -> dict[str, str]:
  return {
    'JAX_COMPILATION_CACHE_DIR': os.path.join(root, 'jax_cache'),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }


def _experiment_time(root: str, input_workers: int, max_samples: int = -1) -> timing.Took:
  """Wall and CPU seconds of `python -m experiments.knockout` in a fresh workdir reading the fixture."""
  workdir = tempfile.mkdtemp(prefix='run_', dir=root)
  os.symlink(os.path.join(root, 'synthetic'), os.path.join(workdir, 'synthetic'))
  command = [
    sys.executable,
    '-m',
    'experiments.knockout',
    '--config=configs/knockout.py',
    f'--workdir={workdir}',
    f'--config.data.num={_SAMPLES.value}',
    f'--config.data.seed={_SEED}',
    f'--config.settings={_SETTINGS.value}',
    f'--config.input_workers={input_workers}',
    f'--config.input_worker_kind={_WORKER_KIND.value}',
    f'--config.max_samples={max_samples}',
  ]
  # Every process's CPU: the worker processes are the forkserver's children, not the experiment's.
  code, stderr, took = timing.run_process_tree(command, poll_s=0.1, cwd=_REPO, env={**os.environ, **_cache_env(root)})
  if code:
    raise RuntimeError(f'{" ".join(command)} failed:\n{stderr[-3000:]}')
  shutil.rmtree(workdir)
  return took


def _decode_and_compute(root: str) -> tuple[timing.Took, timing.Took]:
  """Time to prepare every sample in one thread, and to collate + sweep the prepared batches."""
  config = _config(0)
  model, params, processor = runs.load_model(config)
  sw = specs.sweep_from_config(config, model.config.text.num_hidden_layers)
  mesh = sharding.mesh_from_config(config.mesh)
  params = sharding.shard_params(params, mesh)
  samples, _ = runs.load_samples(config, root)
  with timing.took() as decode:
    prepared, failed = runs.prepare(samples, processor, config)
  if failed:
    raise RuntimeError(f'fixture samples failed: {failed[:3]}')
  with timing.took() as compute:
    for chunk in runs.batches(prepared, config.batch_size):
      batch = runs.collate(chunk, processor, multiple=runs.batch_multiple(mesh))
      engine.evaluate_batch(model, params, batch, sw.specs, mesh, config.tail_multiple, config.spec_chunk)
  return decode, compute


def main(argv):
  del argv
  root = _FIXTURE_DIR.value or tempfile.mkdtemp(prefix='input_overlap_')
  os.makedirs(root, exist_ok=True)
  _fixture(root)
  if _XLA_THREADS.value:  # before JAX starts its CPU backend; the subprocesses inherit both
    # PJRT_NPROC sizes the XLA CPU client's thread pool, which runs the programs (jaxvlm/cpu_threads.py);
    # Eigen's own threads are off.
    os.environ['PJRT_NPROC'] = str(_XLA_THREADS.value)
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false').strip()
  for name, value in _cache_env(root).items():  # the in-process measurements share the cache
    jax.config.update(name.lower(), int(value) if value.isdigit() else value)
  print(
    f'{_SAMPLES.value} samples, {_SECONDS.value:g} s videos at {_WIDTH.value}x{_HEIGHT.value}, '
    f'{jax.device_count()} device(s), settings {_SETTINGS.value}, {os.cpu_count()} CPUs, '
    f'XLA threads {_XLA_THREADS.value or "all"}',
    flush=True,
  )
  warm = _experiment_time(root, 0)  # fills the compilation cache
  decode, compute = _decode_and_compute(root)
  one_batch = _config(0).batch_size  # a full batch: shapes the warm-up compiled
  fixed = _experiment_time(root, 0, max_samples=one_batch)
  serial = _experiment_time(root, 0)
  overlap = _experiment_time(root, _WORKERS.value)
  both = decode + compute
  print(f'{"":<64}{"wall":>8}  {"CPU":>8}')
  for label, took in (
    ('warm-up run (fills the compile cache)', warm),
    ('decode: runs.prepare, all samples, no workers, in process', decode),
    ('compute: collate + sweep of the prepared batches, in process', compute),
    ('decode + compute', both),
    (f'fixed: whole experiment on {one_batch} samples (subprocess)', fixed),
    ('serial: whole experiment, input_workers=0 (subprocess)', serial),
    (f'overlap: whole experiment, input_workers={_WORKERS.value}, {_WORKER_KIND.value} (subprocess)', overlap),
  ):
    print(f'{label:<64}{took.wall:8.2f}  {took.cpu:8.2f} s')
  cores = len(os.sched_getaffinity(0))
  print(f'decode / compute (wall)                = {decode.wall / compute.wall:.2f}')
  print(f'serial / (decode + compute)            = {serial.wall / both.wall:.2f}')
  print(
    f'overlap / (decode + compute)           = {overlap.wall / both.wall:.2f} (goal <= 0.7; '
    'whole wall time, fixed cost included)'
  )
  print(f'(overlap - fixed) / (decode + compute) = {(overlap.wall - fixed.wall) / both.wall:.2f}')
  # About what no run beats: its fixed part plus its other CPU work spread over every core, or its fixed
  # part plus the compute (one XLA thread; the workers can split the decoding, not the compute). An
  # estimate: the compute is measured in this process, the run in another.
  floor = fixed.wall + max((overlap.cpu - fixed.cpu) / cores, compute.wall)
  print(
    f'floor / (decode + compute)             = {floor / both.wall:.2f} (fixed + max(CPU of the '
    f'overlapped run past fixed / {cores} cores, compute))'
  )


if __name__ == '__main__':
  app.run(main)
