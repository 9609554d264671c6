"""jaxvlm: where do video language models look? Flax ports + attention knockouts + keyframe selection."""

from jaxvlm import cpu_threads as _cpu_threads

# Before anything creates a JAX backend: XLA's CPU client sizes its thread pool once, and multi-device
# CPU programs deadlock with one thread per device (why: jaxvlm/cpu_threads.py). Never overrides a value
# the user set.
_cpu_threads.ensure()
