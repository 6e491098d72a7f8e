"""Training over several processes (several machines) with JAX's distributed runtime.

One process per machine (or per accelerator) runs the same command; they meet at a
coordinator (process 0's address and a free port), after which ``jax.devices()`` holds
every process's devices and one jitted step runs over all of them. Every process draws
the same global batches (the input pipeline is deterministic) and hands its own devices
their rows; the parameters stay replicated, so each process evaluates them alone. Only
process 0 writes files (``config.json``, ``metrics.jsonl``, ``tb/``, ``curves.png``,
``results.json``); every process calls the checkpoint managers, which save each array
once, from the processes that hold it, into the workdir they all see.

:func:`initialize` is called by ``limijax.main`` before anything touches a device. The
rest of the package asks :func:`is_primary` and :func:`barrier`, which are no-ops in a
single process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging

from limijax.errors import UserError

# Cluster managers whose environment jax.distributed.initialize reads by itself.
_DETECTED = {'SLURM_JOB_ID': 'SLURM', 'OMPI_COMM_WORLD_SIZE': 'Open MPI'}


def requested(coordinator_address: str | None, num_processes: int | None,
              process_id: int | None, auto: bool) -> bool:
  """Whether the command asks to join a multi-process run."""
  return bool(auto or coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or
              num_processes is not None or process_id is not None)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
  """Join the run's other processes (``jax.distributed.initialize``).

  The three values may be left out where JAX finds them itself: under SLURM (``srun``),
  Open MPI (``mpirun``) and on Cloud TPU; ``JAX_COORDINATOR_ADDRESS`` stands for
  ``coordinator_address``. A process waits up to ``timeout_s`` seconds for the others.
  """
  import jax  # pylint: disable=g-import-not-at-top
  given = [v is not None for v in (num_processes, process_id)]
  if any(given) and not all(given):
    raise UserError('--num_processes and --process_id go together: give both, or neither '
                    'to let JAX read them from the cluster (SLURM, Open MPI)')
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f'--process_id must be in 0 .. {num_processes - 1} '
                    f'(--num_processes={num_processes}), got {process_id}')
  # CPU devices of different processes reach each other through Gloo (the default of
  # recent JAX; older ones had none).
  if jax.config.jax_cpu_collectives_implementation in (None, '', 'none'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
  except ValueError as e:  # nothing given and no cluster detected
    found = [name for var, name in _DETECTED.items() if var in os.environ]
    raise UserError(f'cannot start the multi-process run: {e} (give --coordinator_address, '
                    f'--num_processes and --process_id'
                    f'{"" if found else ", or launch it under SLURM or Open MPI"})') from None
  logging.info('process %d of %d; %d devices in all, %d here', jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


def process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def is_primary() -> bool:
  """True in process 0 (the one that writes files), and in a single-process run."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process has reached the barrier ``name``."""
  if process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def put(tree, sharding):
  """``tree`` (host or single-device arrays, the same in every process) as global arrays
  laid out by ``sharding``.

  In a single process this is ``jax.device_put``. Across processes, each one hands over
  only its own block of every array (the rows of the batch its devices hold, all of a
  replicated array): ``device_put`` would first compare the whole value across
  processes, a transfer per step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    x = np.asarray(x)
    blocks = list(sharding.addressable_devices_indices_map(x.shape).values())
    mine = tuple(slice(min(b[d].indices(n)[0] for b in blocks),
                       max(b[d].indices(n)[1] for b in blocks))
                 for d, n in enumerate(x.shape))
    return jax.make_array_from_process_local_data(sharding, x[mine], x.shape)

  return jax.tree.map(one, tree)


# --------------------------------------------------------------------------- placement
@dataclasses.dataclass(frozen=True)
class Placement:
  """Where one seed's train state and batches live (two ``jax.sharding.Sharding``)."""
  state: Any
  batch: Any


def place_seeds(num_seeds: int, batch_size: int, devices=None) -> tuple[list[Placement], str]:
  """Each seed's :class:`Placement`, and a line for the log ('' on one device).

  With ``num_seeds`` divisible by the device count (``jax.devices()``) in a single
  process, each device trains whole seeds: seed k's state, batches and steps on device
  k mod n. Otherwise, with several devices, each batch is split over a ``data`` mesh axis
  and the state replicated, which is how several processes always train (every process
  then holds the parameters it evaluates); the global batch size stays ``batch_size``.
  When the work cannot be split evenly, one device trains (a warning; with several
  processes, an error).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding  # pylint: disable=g-import-not-at-top
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  alone = [Placement(*(SingleDeviceSharding(jax.local_devices()[0]),) * 2)] * num_seeds
  if n == 1:
    return alone, ''
  if num_seeds > 1 and num_seeds % n == 0 and jax.process_count() == 1:
    return ([Placement(*(SingleDeviceSharding(devices[k % n]),) * 2) for k in range(num_seeds)],
            f'data parallel over {n} devices (seeds split)')
  if batch_size % n == 0:
    mesh = Mesh(np.array(devices), ('data',))
    where = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
    return ([Placement(NamedSharding(mesh, P()), NamedSharding(mesh, P('data')))] * num_seeds,
            f'data parallel over {n} devices (batch split){where}')
  if jax.process_count() > 1:
    raise UserError(f'config key batch_size: {batch_size} does not divide over the {n} '
                    f'devices of the {jax.process_count()} processes')
  logging.warning('%d devices divide neither num_seeds (%d) nor batch_size (%d): training '
                  'on one device', n, num_seeds, batch_size)
  return alone, ''


def local(tree):
  """This process's copy of replicated arrays (every array, in a single process)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: x if x.is_fully_addressable else x.addressable_data(0), tree)
