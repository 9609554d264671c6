"""Runs pytest on one test file as a Bazel test: `pytest_main.py tests/test_x.py`.

Bazel's test protocol is honoured where pytest has an equivalent: results go to $XML_OUTPUT_FILE as
JUnit XML, temporary files and pytest's cache stay in $TEST_TMPDIR, `--test_filter=EXPR` becomes
`-k EXPR`.
"""

from __future__ import annotations

import os
import sys

import pytest


def pytest_args(argv: list[str], env: dict[str, str]) -> list[str]:
  """pytest's command line for the test files in `argv` under the Bazel test environment `env`."""
  args = list(argv)
  tmp = env.get('TEST_TMPDIR')
  if tmp:
    args += [f'--basetemp={os.path.join(tmp, "pytest")}', '-o', f'cache_dir={os.path.join(tmp, "cache")}']
  if env.get('XML_OUTPUT_FILE'):
    args.append(f'--junitxml={env["XML_OUTPUT_FILE"]}')
  if env.get('TESTBRIDGE_TEST_ONLY'):
    args += ['-k', env['TESTBRIDGE_TEST_ONLY']]
  return args


if __name__ == '__main__':
  sys.exit(pytest.main(pytest_args(sys.argv[1:], dict(os.environ))))
