"""Shared test setup: CPU, absl flags marked parsed (Grain workers need it)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# One persistent compilation cache per test run, shared by the xdist workers and the
# subprocesses the CLI tests start: a program compiled once is read back everywhere else.
import tempfile  # noqa: E402

_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), f'limijax-jax-cache-{_RUN}') if _RUN
    else tempfile.mkdtemp(prefix='limijax-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# Tests run tiny inputs, so XLA's compile time dwarfs run time: a lower backend
# optimisation level halves compile time and changes no result the tests compare
# (every comparison is between functions compiled with the same flags).
# XLA's older CPU fusion path compiles these small programs about twice as fast.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 '
                      '--xla_cpu_use_fusion_emitters=false')
