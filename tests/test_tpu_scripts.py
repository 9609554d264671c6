"""Tests of the Cloud TPU scripts in tpu/ against a fake `gcloud` that records its argv.

The fake can also play a one-worker TPU VM living in a local directory: `ssh --command=S` runs
`bash -c S` there (HOME = that directory) and `scp` copies to or from it. That executes the exact
remote scripts the tools build, so quoting is checked by running it, not by reading it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / 'tpu'
SCRIPTS = ('create.sh', 'setup.sh', 'run.sh', 'fetch.sh', 'delete.sh', 'launch.sh')
LIBTPU_INDEX = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
home = os.environ.get('FAKE_TPU_HOME')
if home and args[:3] == ['compute', 'tpus', 'tpu-vm']:
  if args[3] == 'ssh':
    script = next(a.split('=', 1)[1] for a in args if a.startswith('--command='))
    env = dict(os.environ, HOME=home)
    sys.exit(subprocess.run(['bash', '-c', script], cwd=home, env=env).returncode)
  if args[3] == 'scp':
    src, dst = [a for a in args[4:] if not a.startswith('--')]
    on_vm = lambda p: os.path.join(home, p.split(':', 1)[1])
    if ':' in src:
      src = on_vm(src)
      dst = os.path.join(dst, os.path.basename(src)) if os.path.isdir(dst) else dst
      shutil.copytree(src, dst)
    else:
      shutil.copy(src, on_vm(dst))
"""

# TPU VM tools the remote scripts call; all stand-ins record their argv next to the log.
FAKE_CURL = '#!/bin/sh\necho 3\n'  # the metadata server: this VM is worker 3
FAKE_UV = """#!/bin/sh
echo "$*" >> "$FAKE_TOOLS_LOG"
if [ "$1" = venv ]; then
  mkdir -p .venv/bin
  echo '#!/bin/sh' > .venv/bin/python
  echo 'echo "python $*" >> "$FAKE_TOOLS_LOG"' >> .venv/bin/python
  chmod +x .venv/bin/python
fi
"""


@pytest.fixture
def env(tmp_path):
  """Environment with fake gcloud/curl/uv first on PATH; recorded calls go to tmp_path."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, text in (('gcloud', FAKE_GCLOUD), ('curl', FAKE_CURL), ('uv', FAKE_UV)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return dict(
    os.environ,
    PATH=f'{bin_dir}:{os.environ["PATH"]}',
    TMPDIR=str(tmp_path),
    FAKE_GCLOUD_LOG=str(tmp_path / 'gcloud.log'),
    FAKE_TOOLS_LOG=str(tmp_path / 'tools.log'),
  )


@pytest.fixture(scope='module')
def source_repo(tmp_path_factory):
  """A tiny committed checkout for setup.sh to ship (the test must not depend on this repo's .git)."""
  repo = tmp_path_factory.mktemp('src')
  (repo / 'requirements.txt').write_text('numpy\n')
  (repo / 'pkg dir').mkdir()
  (repo / 'pkg dir' / "it's.py").write_text('x = 1\n')
  (repo / 'uncommitted.txt').write_text('not shipped\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run([*git, 'add', 'requirements.txt', 'pkg dir'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'c'], check=True)
  return repo


def run(script, *args, env, cwd=None):
  return subprocess.run([str(TPU / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def gcloud_calls(env):
  """The argv (without 'gcloud') of every fake gcloud call, in order."""
  log = pathlib.Path(env['FAKE_GCLOUD_LOG'])
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def ssh_script(call):
  """The remote shell script of a recorded `tpu-vm ssh` call."""
  return next(a.split('=', 1)[1] for a in call if a.startswith('--command='))


SCOPE = ['--name=my-tpu', '--zone=us-west4-a']
KNOCKOUT = [
  'python',
  '-m',
  'experiments.knockout',
  '--config=configs/knockout.py:llava_ov_7b',
  '--workdir=workdirs/ko 7b',
]
# One invocation per script, each with its expected gcloud calls.
CASES = {
  'create v5e spot': (
    'create.sh',
    [*SCOPE, '--accelerator-type=v5litepod-8', '--spot', '--project=my proj'],
    [
      [
        'compute',
        'tpus',
        'tpu-vm',
        'create',
        'my-tpu',
        '--zone=us-west4-a',
        '--project=my proj',
        '--accelerator-type=v5litepod-8',
        '--version=v2-alpha-tpuv5-lite',
        '--spot',
      ]
    ],
  ),
  'create v5p queued': (
    'create.sh',
    [
      *SCOPE,
      '--accelerator-type',
      'v5p-32',
      '--queued',
      '--spot',
      '--data-disk',
      'source=projects/p/zones/z/disks/w,mode=read-only',
    ],
    [
      [
        'compute',
        'tpus',
        'queued-resources',
        'create',
        'my-tpu',
        '--node-id=my-tpu',
        '--zone=us-west4-a',
        '--accelerator-type=v5p-32',
        '--runtime-version=v2-alpha-tpuv5',
        '--spot',
        '--data-disk=source=projects/p/zones/z/disks/w,mode=read-only',
      ]
    ],
  ),
  'create explicit version': (
    'create.sh',
    [*SCOPE, '--accelerator-type=v6e-8', '--version=v2-alpha-tpuv6e-custom', '--preemptible'],
    [
      [
        'compute',
        'tpus',
        'tpu-vm',
        'create',
        'my-tpu',
        '--zone=us-west4-a',
        '--accelerator-type=v6e-8',
        '--version=v2-alpha-tpuv6e-custom',
        '--preemptible',
      ]
    ],
  ),
  'delete': ('delete.sh', SCOPE, [['compute', 'tpus', 'tpu-vm', 'delete', 'my-tpu', '--zone=us-west4-a', '--quiet']]),
  'delete queued': (
    'delete.sh',
    [*SCOPE, '--queued'],
    [['compute', 'tpus', 'queued-resources', 'delete', 'my-tpu', '--zone=us-west4-a', '--force', '--quiet']],
  ),
  'fetch all workers': (
    'fetch.sh',
    [*SCOPE, '--workdir=jaxvlm/wd', '--worker=all', '--num-workers=2', '--dest=out'],
    [
      [
        'compute',
        'tpus',
        'tpu-vm',
        'scp',
        '--recurse',
        'my-tpu:jaxvlm/wd',
        f'out/worker-{i}/',
        '--zone=us-west4-a',
        f'--worker={i}',
      ]
      for i in range(2)
    ],
  ),
  'run': ('run.sh', [*SCOPE, '--log-name=ko', '--', *KNOCKOUT], None),
  'setup': ('setup.sh', [*SCOPE, '--expect-devices=32', '--source={src}'], None),
}


@pytest.mark.parametrize('case', CASES)
def test_calls_gcloud_as_expected(case, env, tmp_path, source_repo):
  script, args, expected = CASES[case]
  args = [a.format(src=source_repo) for a in args]
  result = run(script, *args, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(env)
  if expected is not None:
    assert calls == [['compute', 'tpus', *c[2:]] for c in expected]
  assert all('--zone=us-west4-a' in c for c in calls) and calls


@pytest.mark.parametrize('case', CASES)
def test_dry_run_prints_the_same_commands_and_calls_nothing(case, env, tmp_path, source_repo):
  script, args, _ = CASES[case]
  args = [a.format(src=source_repo) for a in args]
  (tmp_path / 'real').mkdir()
  (tmp_path / 'dry').mkdir()
  real = run(script, *args, env=env, cwd=tmp_path / 'real')
  assert real.returncode == 0, real.stderr
  calls = gcloud_calls(env)
  pathlib.Path(env['FAKE_GCLOUD_LOG']).unlink()

  dry = run(script, '--dry-run', *args, env=env, cwd=tmp_path / 'dry')
  assert dry.returncode == 0, dry.stderr
  assert gcloud_calls(env) == []
  assert not list((tmp_path / 'dry').iterdir())  # no local side effects either (mkdir, archive)
  printed = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert [p[1:] for p in printed if p[0] == 'gcloud'] == calls
  # Lines that are not gcloud calls are the local steps (mkdir, git archive, rm) of the real run.
  assert {p[0] for p in printed} <= {'gcloud', 'mkdir', 'git', 'rm'}


def test_run_ssh_targets_all_workers_and_keeps_quoting(env, tmp_path):
  result = run('run.sh', *SCOPE, '--log-name=ko', '--', *KNOCKOUT, "it's", '$HOME', env=env)
  assert result.returncode == 0, result.stderr
  [call] = gcloud_calls(env)
  assert call[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert '--worker=all' in call and '--zone=us-west4-a' in call
  # The argv survives two levels of shell quoting: parse the innermost `bash -c` word.
  script = ssh_script(call)
  inner = next(w for w in shlex.split(script.split('; ')[-1]) if w.startswith('python -m'))
  assert shlex.split(inner) == [*KNOCKOUT, "it's", '$HOME']


def fake_vm(tmp_path, env):
  """A directory playing the TPU VM's home, wired into the fake gcloud."""
  home = tmp_path / 'vm'
  (home / 'jaxvlm' / '.venv' / 'bin').mkdir(parents=True)
  (home / 'jaxvlm' / '.venv' / 'bin' / 'python').symlink_to(sys.executable)
  env['FAKE_TPU_HOME'] = str(home)
  return home


ECHO_ARGV = [
  'python',
  '-c',
  'import json, os, sys; print(json.dumps([sys.argv[1:], os.environ["A"], os.environ["PYTHONUNBUFFERED"]]))',
]
TRICKY = ['a b', "it's", '$HOME', '"q"', '--workdir=workdirs/ko 7b', '*']


def test_run_executes_the_command_intact_and_logs_per_worker(env, tmp_path):
  home = fake_vm(tmp_path, env)
  result = run('run.sh', *SCOPE, '--log-name=ko', "--env=A=x 'y'", '--', *ECHO_ARGV, *TRICKY, env=env)
  assert result.returncode == 0, result.stderr
  expected = [TRICKY, "x 'y'", '1']
  assert json.loads(result.stdout.splitlines()[-1]) == expected  # streamed by tee
  log = home / 'jaxvlm' / 'logs' / 'ko.worker-3.log'
  assert json.loads(log.read_text()) == expected


def test_run_command_snippet_and_exit_status(env, tmp_path):
  home = fake_vm(tmp_path, env)
  ok = run('run.sh', *SCOPE, '--log-name=s', '--command=echo one && echo "t w o" | tr " " _ && echo err >&2', env=env)
  assert ok.returncode == 0, ok.stderr
  assert (home / 'jaxvlm' / 'logs' / 's.worker-3.log').read_text() == 'one\nt_w_o\nerr\n'
  failing = run('run.sh', *SCOPE, '--command=echo before; exit 7', env=env)
  assert failing.returncode == 7  # the pipe into tee must not hide a failed experiment


def test_run_background_returns_and_logs(env, tmp_path):
  home = fake_vm(tmp_path, env)
  result = run(
    'run.sh', *SCOPE, '--log-name=bg', '--background', '--', 'sh', '-c', 'sleep 0.2; echo done "$0"', 'x y', env=env
  )
  assert result.returncode == 0, result.stderr
  assert 'worker 3: started pid' in result.stdout
  log = home / 'jaxvlm' / 'logs' / 'bg.worker-3.log'
  deadline = time.time() + 10
  while time.time() < deadline and not (log.exists() and log.read_text()):
    time.sleep(0.05)
  assert log.read_text() == 'done x y\n'


def test_setup_ships_head_installs_and_checks_devices(env, tmp_path, source_repo):
  home = tmp_path / 'vm'
  home.mkdir()
  env['FAKE_TPU_HOME'] = str(home)
  result = run('setup.sh', *SCOPE, '--expect-devices=32', f'--source={source_repo}', env=env)
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(env)
  assert [c[3] for c in calls] == ['scp', 'ssh']
  assert '--worker=all' in calls[0] and '--worker=all' in calls[1]
  # The committed HEAD arrived and was unpacked, nothing else; both archives are gone.
  assert (home / 'jaxvlm' / 'pkg dir' / "it's.py").read_text() == 'x = 1\n'
  assert (home / 'jaxvlm' / 'requirements.txt').exists()
  assert not (home / 'jaxvlm' / 'uncommitted.txt').exists()
  assert not (home / 'jaxvlm-src.tar.gz').exists()
  assert not (tmp_path / 'jaxvlm-my-tpu.tar.gz').exists()
  tools = pathlib.Path(env['FAKE_TOOLS_LOG']).read_text().splitlines()
  assert tools[0] == 'venv --allow-existing --python 3.11 .venv'
  assert tools[1] == (f'pip install --python .venv/bin/python -r requirements.txt jax[tpu] --find-links {LIBTPU_INDEX}')
  assert tools[2].startswith('python -c import sys, jax;') and tools[2].endswith(' 32')


def test_setup_clone_mode(env):
  result = run(
    'setup.sh',
    *SCOPE,
    '--dry-run',
    '--repo-url=https://example.com/j v.git',
    '--ref=v1',
    '--worker=0',
    '--remote-dir=code dir',
    env=env,
  )
  assert result.returncode == 0, result.stderr
  [line] = result.stdout.splitlines()  # no archive to ship: a single ssh call
  call = shlex.split(line)
  assert '--worker=0' in call
  steps = ssh_script(call).split('; ')
  assert "[ -d 'code dir'/.git ] || git clone --quiet 'https://example.com/j v.git' 'code dir'" in steps
  assert "git -C 'code dir' fetch --quiet origin v1" in steps
  assert "cd 'code dir'" in steps


def test_device_check_runs_and_fails_off_tpu(env, source_repo):
  """The Python one-liner is valid and rejects a CPU-only jax with a clear message."""
  result = run('setup.sh', *SCOPE, '--dry-run', '--expect-devices=8', f'--source={source_repo}', env=env)
  check = shlex.split(ssh_script(shlex.split(result.stdout.splitlines()[-1])).split('; ', 9)[-1])
  assert check[:2] == ['.venv/bin/python', '-c'] and check[-1] == '8'
  proc = subprocess.run(
    [sys.executable, *check[1:]], capture_output=True, text=True, timeout=60, env=dict(os.environ, JAX_PLATFORMS='cpu')
  )
  assert proc.returncode == 1
  assert 'expected 8 tpu devices, jax sees 1 cpu devices' in proc.stderr


def test_fetch_copies_each_worker_into_its_own_directory(env, tmp_path):
  home = fake_vm(tmp_path, env)
  (home / 'jaxvlm' / 'wd').mkdir()
  (home / 'jaxvlm' / 'wd' / 'summary.json').write_text('{"acc": 1}')
  result = run('fetch.sh', *SCOPE, '--workdir=jaxvlm/wd', '--worker=0,1', f'--dest={tmp_path / "res"}', env=env)
  assert result.returncode == 0, result.stderr
  for i in (0, 1):
    assert (tmp_path / 'res' / f'worker-{i}' / 'wd' / 'summary.json').read_text() == '{"acc": 1}'


def _inner_command(call) -> list[str]:
  """The experiment argv inside a recorded run.sh ssh call."""
  script = ssh_script(call)
  return shlex.split(next(w for w in shlex.split(script.split('; ')[-1]) if w.startswith('python -m')))


def test_launch_runs_the_planned_72b_mesh_on_every_worker(env):
  result = run(
    'launch.sh',
    *SCOPE,
    '--accelerator-type=v5litepod-32',
    f'--python={sys.executable}',
    '--',
    '--config.max_samples=10',
    env=env,
  )
  assert result.returncode == 0, result.stderr
  [call] = gcloud_calls(env)
  assert call[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu'] and '--worker=all' in call
  # experiments.plan's recommendation for 72B on 32 v5e chips (4 hosts): one global mesh, tensor=2.
  assert _inner_command(call) == [
    'python',
    '-m',
    'experiments.knockout',
    '--config=configs/knockout.py:llava_ov_72b',
    '--workdir=workdirs/knockout_llava_ov_72b',
    '--config.mesh.devices=global',
    '--config.mesh.data=1',
    '--config.mesh.fsdp=16',
    '--config.mesh.tensor=2',
    '--config.max_samples=10',
  ]
  assert 'logs/knockout_llava_ov_72b.worker-' in ssh_script(call)


def test_launch_dry_run_with_an_explicit_mesh_prints_the_call(env, tmp_path):
  args = [
    *SCOPE,
    '--accelerator-type=v5p-8',
    '--mesh=1,4,1',
    '--experiment=keyframe_diagnosis',
    '--num-frames=16',
    '--workdir=wd 72b',
    '--env=HF_HOME=/mnt/disks/weights/hf',
    '--background',
  ]
  real = run('launch.sh', *args, env=env)
  assert real.returncode == 0, real.stderr
  calls = gcloud_calls(env)
  pathlib.Path(env['FAKE_GCLOUD_LOG']).unlink()
  (tmp_path / 'dry').mkdir()
  dry = run('launch.sh', '--dry-run', *args, env=env, cwd=tmp_path / 'dry')
  assert dry.returncode == 0, dry.stderr
  assert gcloud_calls(env) == [] and not list((tmp_path / 'dry').iterdir())
  [line] = dry.stdout.splitlines()
  assert shlex.split(line)[1:] == calls[0]
  assert _inner_command(calls[0])[3:] == [
    '--config=configs/keyframe_diagnosis.py:llava_ov_72b',
    '--workdir=wd 72b',
    '--config.mesh.devices=global',
    '--config.mesh.data=1',
    '--config.mesh.fsdp=4',
    '--config.mesh.tensor=1',
    '--config.num_frames=16',
  ]
  assert 'HF_HOME=/mnt/disks/weights/hf' in ssh_script(calls[0]) and 'nohup' in ssh_script(calls[0])


def test_launch_refuses_a_slice_the_preset_does_not_fit(env):
  result = run('launch.sh', *SCOPE, '--accelerator-type=v5litepod-16', f'--python={sys.executable}', env=env)
  assert result.returncode == 2
  assert 'llava_ov_72b does not fit v5litepod-16' in result.stderr
  assert 'fsdp=16' in result.stderr  # the plan's numbers are shown
  assert gcloud_calls(env) == []


MISSING = [
  ('create.sh', ['--zone=z'], ['--name', '--accelerator-type']),
  ('create.sh', ['--name=n', '--accelerator-type=v4-8'], ['--zone']),
  ('setup.sh', [], ['--name', '--zone']),
  ('run.sh', ['--name=n', '--', 'ls'], ['--zone']),
  ('run.sh', SCOPE, ['missing command']),
  ('fetch.sh', SCOPE, ['--workdir']),
  ('fetch.sh', [*SCOPE, '--workdir=w', '--worker=all'], ['--num-workers']),
  ('delete.sh', ['--name=n'], ['--zone']),
  ('create.sh', [*SCOPE, '--accelerator-type=x1-8'], ['no default --version']),
  ('create.sh', [*SCOPE, '--accelerator-type=v5p-8', '--queued', '--preemptible'], ['--spot']),
  ('run.sh', [*SCOPE, '--env=1BAD=x', '--', 'ls'], ['KEY=VALUE']),
  ('run.sh', [*SCOPE, '--worker=first', '--', 'ls'], ['--worker']),
  ('delete.sh', [*SCOPE, '--bogus'], ['unknown flag --bogus']),
  ('delete.sh', [*SCOPE, '--zone'], ['--zone needs a value']),
  ('launch.sh', SCOPE, ['--accelerator-type']),
  ('launch.sh', [*SCOPE, '--accelerator-type=v5p-8', '--mesh=1,4'], ['--mesh must be D,F,T']),
  ('launch.sh', [*SCOPE, '--accelerator-type=v5p-8', '--experiment=nope'], ['no experiments/nope.py']),
  ('launch.sh', [*SCOPE, '--accelerator-type=v5p-8', '--mesh=1,4,1', '--', 'rm'], ["--config.* flags"]),
]


@pytest.mark.parametrize('script,args,words', MISSING)
@pytest.mark.parametrize('dry', [False, True])
def test_bad_flags_fail_clearly(script, args, words, dry, env):
  result = run(script, *args, *(['--dry-run'] if dry else []), env=env)
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.startswith(f'{script}: error: ')
  assert all(w in result.stderr for w in words), result.stderr
  assert gcloud_calls(env) == []


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(script, env):
  result = run(script, '--help', env=env)
  assert result.returncode == 0
  assert result.stdout.startswith(f'Usage: {script} --name=NAME --zone=ZONE')
  assert '--dry-run' in result.stdout
  assert gcloud_calls(env) == []
