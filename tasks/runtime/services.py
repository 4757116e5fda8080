"""Services a command starts for itself: a private local Ray instance, and the error when one does not come up.

Without an address (``--ray-address`` or ``RAY_ADDRESS``) the pipeline never joins whatever Ray cluster
happens to run on the host: :func:`start_local_ray` starts a new head node of its own, with its own
temporary folder and ports, without a dashboard, stopped and removed at exit. An
explicit address (``auto`` for the host's cluster) joins that cluster instead.

Ray cannot bind its gRPC servers to the loopback interface alone (it replaces 127.0.0.1 by the node's
address); what keeps the instance private is Ray's token authentication, on by default in the Ray this
project locks (the token lives in ``~/.ray/auth_token``).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time

logger = logging.getLogger(__name__)

# Ray waits a fixed 30 s for a new node's raylet to register, which a loaded 2-core machine can miss.
LOCAL_RAY_ATTEMPTS = 3
START_RAY = "start Ray yourself ('ray start --head --num-gpus N') and pass its address with --ray-address"


class ServiceStartError(RuntimeError):
    """A service the command starts for itself (Prefect's temporary server, a local Ray) did not come up.

    Nothing of the request was started; it is no failure of a row, and a rerun does the work. The
    message says how to run the service separately.
    """


def ray_address(explicit: str | None) -> str | None:
    """The Ray cluster to join: ``explicit``, else ``$RAY_ADDRESS``; None means a private local instance."""
    return explicit or os.environ.get("RAY_ADDRESS") or None


def start_local_ray(num_cpus: int, num_gpus: int) -> None:
    """Start and connect to a new single-node Ray instance of this process's own (see the module docstring).

    Raises :class:`ServiceStartError` when it does not come up after :data:`LOCAL_RAY_ATTEMPTS` tries.
    """
    import ray

    for attempt in range(1, LOCAL_RAY_ATTEMPTS + 1):
        # Short and private: Ray's socket paths live under it and must stay under the OS limit of 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="magic141-ray-", dir="/tmp")
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=temp_dir,
            )
        except Exception as exc:  # Ray raises a bare Exception when its raylet misses the start-up wait
            logger.warning("local Ray did not start (attempt %d of %d): %s", attempt, LOCAL_RAY_ATTEMPTS, exc)
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt == LOCAL_RAY_ATTEMPTS:
                raise ServiceStartError(
                    f"a local Ray instance did not start in {LOCAL_RAY_ATTEMPTS} tries "
                    f"({' '.join(str(exc).split())}); {START_RAY}"
                ) from None
            time.sleep(2.0 * attempt)
            continue
        logger.info("started a private local Ray instance in %s (%d CPU, %d GPU)", temp_dir, num_cpus, num_gpus)
        atexit.register(_stop_local_ray, temp_dir)
        return


def _stop_local_ray(temp_dir: str) -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
