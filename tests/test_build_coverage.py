"""The Bazel BUILD files cover every module and test file, and each target's deps reach its imports.

No bazel needed: the BUILD files are evaluated as Python with recording stand-ins for Bazel's built-ins
(the Starlark they use -- calls, lists, dicts, comprehensions, `def` in .bzl macros -- is also Python),
so globs and macros expand as Bazel expands them.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import pathlib
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BUILD_NAMES = ('BUILD', 'BUILD.bazel')
# Library modules that must be in some py_library's srcs (globs relative to the repository root).
LIBRARY_GLOBS = ('jaxvlm/**/*.py', 'experiments/*.py', 'configs/*.py', 'benchmarks/*.py')


@dataclasses.dataclass
class Target:
  kind: str
  label: str
  attrs: dict


class Workspace:
  """The targets of every BUILD file under `root` (nested Bazel repositories excluded)."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.targets: dict[str, Target] = {}
    self.namespaces: dict[str, dict] = {}  # package -> the BUILD file's globals after evaluation
    for package in self._packages():
      self._evaluate(package)

  def _packages(self) -> list[str]:
    packages = []
    for dirpath, dirnames, filenames in os.walk(self.root):
      rel = os.path.relpath(dirpath, self.root)
      rel = '' if rel == '.' else rel
      dirnames[:] = [
        d
        for d in dirnames
        if not d.startswith(('.', 'bazel-')) and not (pathlib.Path(dirpath, d) / 'WORKSPACE').exists()
      ]
      if any(name in filenames for name in BUILD_NAMES):
        packages.append(rel)
    return sorted(packages)

  def _is_package(self, path: pathlib.Path) -> bool:
    return any((path / name).exists() for name in BUILD_NAMES)

  def glob(self, package: str, include, exclude=(), **unused):
    """Bazel's glob: files under `package` matching `include` minus `exclude`, not in subpackages."""
    base = self.root / package

    def expand(patterns):
      found = set()
      for pattern in patterns:
        # pathlib's trailing `**` yields directories; Bazel's yields the files below them.
        pattern = pattern + '/*' if pattern.endswith('**') else pattern
        for path in base.glob(pattern):
          rel = path.relative_to(base)
          in_subpackage = any(self._is_package(base.joinpath(*rel.parts[:i])) for i in range(1, len(rel.parts)))
          if path.is_file() and not in_subpackage:
            found.add(rel.as_posix())
      return found

    return sorted(expand(include) - expand(exclude))

  def label(self, package: str, ref: str) -> str | None:
    """Canonical `//pkg:name` for a label written in `package`; None for other repositories."""
    if ref.startswith('@'):
      return None
    if ref.startswith('//'):
      pkg, _, name = ref[2:].partition(':')
      return f'//{pkg}:{name or pkg.rsplit("/", 1)[-1]}'
    return f'//{package}:{ref.lstrip(":")}'

  def _record(self, package: str, kind: str):
    def rule(name, **attrs):
      label = f'//{package}:{name}'
      assert label not in self.targets, f'{label} defined twice'
      self.targets[label] = Target(kind, label, {'package': package, **attrs})

    return rule

  def _builtins(self, package: str) -> dict:
    rules = {
      kind: self._record(package, kind)
      for kind in ('py_library', 'py_test', 'py_binary', 'py_runtime', 'filegroup', 'toolchain')
    }
    return dict(
      rules,
      glob=lambda include, exclude=(), **kw: self.glob(package, include, exclude),
      package=lambda **kw: None,
      exports_files=lambda srcs, **kw: None,
      package_name=lambda: package,
    )

  def _load(self, package: str, namespace: dict):
    def load(ref, *symbols, **aliases):
      label = self.label(package, ref)
      if label is None:  # @bazel_tools: its rules are recorded under their own names
        for symbol in symbols:
          namespace[symbol] = self._record(package, symbol)
        return
      pkg, _, name = label[2:].partition(':')
      module = {'native': types.SimpleNamespace(**self._builtins(package))}
      exec(compile((self.root / pkg / name).read_text(), label, 'exec'), module)
      namespace.update({s: module[s] for s in symbols})
      namespace.update({alias: module[s] for alias, s in aliases.items()})

    return load

  def _evaluate(self, package: str):
    path = next(self.root / package / n for n in BUILD_NAMES if (self.root / package / n).exists())
    namespace = self._builtins(package)
    namespace['load'] = self._load(package, namespace)
    exec(compile(path.read_text(), str(path), 'exec'), namespace)
    self.namespaces[package] = namespace

  def files(self, target: Target, attr: str) -> set[str]:
    """Repository-relative paths of the files a target lists in `attr` (filegroups expanded)."""
    out = set()
    for ref in target.attrs.get(attr, ()):
      label = self.label(target.attrs['package'], ref)
      if label is None:
        continue
      if label in self.targets:
        out |= self.files(self.targets[label], 'srcs')
      else:
        pkg, _, name = label[2:].partition(':')
        out.add(os.path.join(pkg, name))
    return out

  def closure(self, target: Target) -> set[str]:
    """Python sources of a target and everything it depends on."""
    out = self.files(target, 'srcs')
    for ref in target.attrs.get('deps', ()):
      label = self.label(target.attrs['package'], ref)
      if label is not None:
        assert label in self.targets, f'{target.label} depends on undefined {label}'
        out |= self.closure(self.targets[label])
    return out

  def of_kind(self, kind: str) -> list[Target]:
    return [t for t in self.targets.values() if t.kind == kind]


def first_party_imports(root: pathlib.Path, path: str) -> set[str]:
  """Files of the repository's own modules that `path` imports (packages' __init__.py included)."""
  top = {p.name for p in root.iterdir() if (p / '__init__.py').exists()}
  here = pathlib.PurePosixPath(path).parent.parts
  modules = set()
  for node in ast.walk(ast.parse((root / path).read_text())):
    if isinstance(node, ast.Import):
      modules |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = here[: len(here) - node.level + 1] if node.level else ()
      name = '.'.join((*base, *(node.module.split('.') if node.module else ())))
      modules.add(name)
      modules |= {f'{name}.{alias.name}' for alias in node.names}  # a submodule, when one exists
  files = set()
  for module in modules:
    parts = module.split('.')
    if parts[0] not in top:
      continue
    for i in range(1, len(parts) + 1):
      for candidate in ('/'.join(parts[:i]) + '.py', '/'.join(parts[:i]) + '/__init__.py'):
        if (root / candidate).exists():
          files.add(candidate)
  return files


def unreached_imports(ws: Workspace) -> list[str]:
  problems = []
  for target in ws.of_kind('py_library') + ws.of_kind('py_test') + ws.of_kind('py_binary'):
    reached = ws.closure(target)
    for src in sorted(ws.files(target, 'srcs')):
      for needed in sorted(first_party_imports(ws.root, src) - reached):
        problems.append(f'{src} imports {needed}, which the deps of {target.label} do not reach')
  return problems


def uncovered_modules(ws: Workspace, patterns=LIBRARY_GLOBS) -> list[str]:
  in_libraries = set().union(*(ws.files(t, 'srcs') for t in ws.of_kind('py_library')))
  modules = {p.relative_to(ws.root).as_posix() for pattern in patterns for p in ws.root.glob(pattern)}
  return sorted(modules - in_libraries)


def untested_files(ws: Workspace) -> list[str]:
  """tests/test_*.py files no py_test runs (pytest_main's argument) with the file in its sources."""
  run = {arg for t in ws.of_kind('py_test') for arg in t.attrs.get('args', ()) if arg in ws.closure(t)}
  return sorted(
    p.relative_to(ws.root).as_posix()
    for p in ws.root.glob('tests/test_*.py')
    if p.relative_to(ws.root).as_posix() not in run
  )


@pytest.fixture(scope='module')
def workspace() -> Workspace:
  return Workspace(REPO)


def test_every_library_module_is_in_a_py_library(workspace):
  assert uncovered_modules(workspace) == []


def test_every_test_file_has_a_py_test(workspace):
  assert untested_files(workspace) == []
  tests = {t.label for t in workspace.of_kind('py_test')}
  assert '//tests:test_build_coverage' in tests and '//tests:test_attention' in tests


def test_deps_reach_every_first_party_import(workspace):
  assert unreached_imports(workspace) == []


def test_listed_files_exist(workspace):
  # A file named outright (not globbed) that was renamed or deleted breaks every build.
  listed = set().union(*(workspace.files(t, a) for t in workspace.targets.values() for a in ('srcs', 'data')))
  assert sorted(f for f in listed if not (REPO / f).is_file()) == []


def test_per_test_settings_name_existing_test_files(workspace):
  namespace = workspace.namespaces['tests']
  existing = {p.stem for p in REPO.glob('tests/test_*.py')}
  for table in ('DEPS', 'DATA', 'SIZES'):
    assert set(namespace[table]) <= existing, (table, sorted(set(namespace[table]) - existing))


def test_tpu_scripts_test_gets_the_scripts(workspace):
  data = workspace.files(workspace.targets['//tests:test_tpu_scripts'], 'data')
  assert {p.relative_to(REPO).as_posix() for p in REPO.glob('tpu/*.sh')} <= data
  assert 'pytest.ini' in data


def test_library_layers_do_not_import_upwards(workspace):
  # models and data sit below the top-level modules; an upward import is a Bazel dependency cycle.
  core = workspace.files(workspace.targets['//:jaxvlm_core'], 'srcs')
  for name in ('//:jaxvlm_models', '//:jaxvlm_data', '//:jaxvlm_sharding'):
    for src in workspace.files(workspace.targets[name], 'srcs'):
      assert not first_party_imports(REPO, src) & core, (src, name)


# The checks themselves, on a small made-up repository where they must find problems.
FAKE_BUILD = '''
load("//defs:macros.bzl", "make_test")
py_library(name = "lib", srcs = glob(["pkg/**/*.py"], exclude = ["pkg/skipped.py"]))
make_test(name = "test_a", deps = [":lib"])
'''
FAKE_MACROS = '''
def make_test(name, deps = []):
    native.py_test(name = name, srcs = [name + ".py"], args = [name + ".py"], deps = deps)
'''


def make_fake_repo(root: pathlib.Path):
  files = {
    'BUILD': FAKE_BUILD,
    'defs/BUILD': '',
    'defs/macros.bzl': FAKE_MACROS,
    'pkg/__init__.py': '',
    'pkg/a.py': 'import pkg.b\n',
    'pkg/b.py': 'from . import c\n',
    'pkg/c.py': '',
    'pkg/skipped.py': '',
    'pkg/sub/BUILD': 'py_library(name = "sub", srcs = ["x.py"])',
    'pkg/sub/__init__.py': '',
    'pkg/sub/x.py': '',
    'other/__init__.py': '',
    'test_a.py': 'from pkg import a\nfrom other import thing\n',
    'vendored/WORKSPACE': '',
    'vendored/BUILD': 'this is not python',
  }
  for rel, text in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_checks_find_problems_in_a_fake_repo(tmp_path):
  make_fake_repo(tmp_path)
  ws = Workspace(tmp_path)
  assert set(ws.targets) == {'//:lib', '//:test_a', '//pkg/sub:sub'}
  lib = ws.files(ws.targets['//:lib'], 'srcs')
  assert lib == {'pkg/__init__.py', 'pkg/a.py', 'pkg/b.py', 'pkg/c.py'}  # subpackage and exclude out
  assert first_party_imports(tmp_path, 'pkg/b.py') == {'pkg/__init__.py', 'pkg/c.py'}
  assert uncovered_modules(ws, ('pkg/*.py', 'other/*.py')) == ['other/__init__.py', 'pkg/skipped.py']
  assert unreached_imports(ws) == ['test_a.py imports other/__init__.py, which the deps of //:test_a do not reach']
  (tmp_path / 'tests').mkdir()
  (tmp_path / 'tests' / 'test_b.py').write_text('')
  ws = Workspace(tmp_path)
  assert untested_files(ws) == ['tests/test_b.py']
  assert ws.files(ws.targets['//pkg/sub:sub'], 'srcs') == {'pkg/sub/x.py'}


def test_pytest_runner_follows_the_bazel_test_protocol():
  spec = importlib.util.spec_from_file_location(
    'pytest_main', REPO / 'third_party' / 'bazel' / 'python' / 'pytest_main.py'
  )
  runner = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(runner)
  env = {'TEST_TMPDIR': '/t', 'XML_OUTPUT_FILE': '/o/test.xml', 'TESTBRIDGE_TEST_ONLY': 'parity'}
  assert runner.pytest_args(['tests/test_x.py'], env) == [
    'tests/test_x.py',
    '--basetemp=/t/pytest',
    '-o',
    'cache_dir=/t/cache',
    '--junitxml=/o/test.xml',
    '-k',
    'parity',
  ]
  assert runner.pytest_args(['tests/test_x.py'], {}) == ['tests/test_x.py']
