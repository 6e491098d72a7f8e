"""Shared test setup: CPU, absl flags marked parsed (Grain workers need it)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# One persistent compilation cache per test process, shared with the subprocesses
# the CLI tests start: the same model compiled twice is read back instead of rebuilt.
import tempfile  # noqa: E402

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='limijax-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Tests run tiny inputs, so XLA's compile time dwarfs run time: a lower backend
# optimisation level halves compile time and changes no result the tests compare
# (every comparison is between functions compiled with the same flags).
# XLA's older CPU fusion path compiles these small programs about twice as fast.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0 '
                      '--xla_cpu_use_fusion_emitters=false')
