"""pytest_test: one Bazel py_test per pytest file."""

def pytest_test(name, deps = [], data = [], **kwargs):
    """Defines `<name>_lib` (the module `<name>.py`, importable by other tests) and py_test `<name>`.

    The py_test runs pytest (//third_party/bazel/python:pytest_main.py) on `<name>.py` from the runfiles
    root, so modules import as `jaxvlm.x`, `tests.x`, ... and the repository's pytest.ini applies.

    Args:
      name: test module name without `.py`, in the calling package.
      deps: py_library targets the module imports.
      data: files the test reads at run time.
      **kwargs: passed to py_test (size, timeout, tags, ...).
    """
    src = name + ".py"
    native.py_library(
        name = name + "_lib",
        srcs = [src],
        deps = deps,
        testonly = True,
    )
    native.py_test(
        name = name,
        srcs = ["//third_party/bazel/python:pytest_main.py"],
        main = "//third_party/bazel/python:pytest_main.py",
        args = ["%s/%s" % (native.package_name(), src)],
        deps = [":" + name + "_lib"],
        data = data + ["//:pytest.ini"],
        python_version = "PY3",
        # Bazel's implicit __init__.py files would make the runfiles root a package and pytest would
        # then import tests/test_x.py under a wrong module name; the repository has its own.
        legacy_create_init = False,
        **kwargs
    )
