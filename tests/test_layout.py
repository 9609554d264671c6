"""The tree keeps its rooms: `experiments/` holds entry points only, the library never reaches up.

* no module of the code base (library, experiments, configs, benchmarks) imports an experiment:
  experiments are run, never built upon (tests call an experiment's `run(config, workdir)`, its
  entry point, as a user's command would);
* `jaxvlm/` imports neither `experiments`, `configs`, `benchmarks` nor `tests`, and defines no flags;
* every file in `experiments/` is an entry point of one shape: a `main(argv)` run by `app.run` under
  `if __name__ == '__main__':`, with its flags defined there and not at import.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / 'experiments').glob('*.py') if p.name != '__init__.py')


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Dotted names of every module `path` imports (`from a import b` gives a and a.b)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
      out |= {f'{node.module}.{a.name}' for a in node.names}
  return out


def _python_files(*roots: str) -> list[pathlib.Path]:
  return sorted(p for root in roots for p in (REPO / root).rglob('*.py'))


def test_no_module_imports_an_experiment():
  offenders = {
    str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.startswith('experiments.'))
    for p in _python_files('jaxvlm', 'experiments', 'configs', 'benchmarks')
  }
  assert {k: v for k, v in offenders.items() if v} == {}


def test_the_library_never_imports_upward():
  upward = ('experiments', 'configs', 'benchmarks', 'tests')
  offenders = {
    str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split('.')[0] in upward)
    for p in _python_files('jaxvlm')
  }
  assert {k: v for k, v in offenders.items() if v} == {}


def test_the_library_defines_no_flags():
  offenders = [
    str(p.relative_to(REPO))
    for p in _python_files('jaxvlm')
    if 'absl.flags' in _imported_modules(p) or 'config_flags' in p.read_text()
  ]
  assert offenders == []


def _main_block(tree: ast.Module) -> ast.If | None:
  for node in tree.body:
    if (
      isinstance(node, ast.If)
      and isinstance(node.test, ast.Compare)
      and getattr(node.test.left, 'id', None) == '__name__'
    ):
      return node
  return None


def _is_flag_definition(node: ast.AST) -> bool:
  call = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
  return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr.startswith('DEFINE')


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_is_an_entry_point(path):
  tree = ast.parse(path.read_text())
  block = _main_block(tree)
  assert block is not None, f"{path.name} has no `if __name__ == '__main__':` block"
  runs_main = [
    n
    for n in ast.walk(block)
    if isinstance(n, ast.Call)
    and getattr(n.func, 'attr', None) == 'run'
    and n.args
    and getattr(n.args[0], 'id', None) == 'main'
  ]
  assert runs_main, f'{path.name}: the main block does not call app.run(main)'
  assert any(isinstance(n, ast.FunctionDef) and n.name == 'main' for n in tree.body), f'{path.name}: no main()'
  at_import = [ast.unparse(n) for n in tree.body if _is_flag_definition(n)]
  assert at_import == [], f'{path.name} defines flags at import time: {at_import}'


def test_pyproject_packages_every_library_room_and_the_embedded_default():
  """pyproject.toml lists packages by name (the embedded default is mapped in from assets/), so a
  new room under jaxvlm/ must be added there or the installed package would lack it."""
  import tomllib  # pylint: disable=g-import-not-at-top

  config = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']
  rooms = {'.'.join(p.parent.relative_to(REPO).parts) for p in (REPO / 'jaxvlm').rglob('*.py')}
  assert rooms <= set(config['packages']), sorted(rooms - set(config['packages']))
  shipped = {name: config['package-dir'][name] for name in config['packages'] if name.startswith('jaxvlm.assets.')}
  assert sorted(shipped.values()) == sorted(f'assets/{p.name}' for p in (REPO / 'assets').iterdir() if p.is_dir())


def _readme_layout() -> str:
  text = (REPO / 'README.md').read_text()
  start = text.index('## Layout')
  return text[start : text.index('\n## ', start + 1)]


def test_readme_layout_names_every_module_of_the_library():
  """README's layout section is the tree: every top-level module, package and package module."""
  layout = _readme_layout()
  names = set()
  for path in (REPO / 'jaxvlm').rglob('*.py'):
    rel = path.relative_to(REPO / 'jaxvlm')
    if path.name != '__init__.py':
      names.add(rel.stem)
    if len(rel.parts) > 1:
      names.add(rel.parts[0] + '/')
  missing = sorted(n for n in names if not re.search(rf'(?<!\w){re.escape(n)}(?!\w)', layout))
  assert missing == [], f'README layout does not mention {missing}'
