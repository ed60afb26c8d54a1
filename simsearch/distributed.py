"""Work on a Ray cluster: the embedding pool (Ray Data) and the shard builds (Ray tasks).

Ray is imported inside these functions only: the query path, ``--help`` and every command
run without ``--ray`` never import it. The cluster runs the same code as a local run, so
simsearch (with the ``ray`` extra) must be installed on every node, and the nodes must see the
images and the output folders at the same paths (shared storage).
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

import numpy as np

from simsearch.errors import ClusterError, MissingDependencyError, SimsearchError

# Each encoder actor asks for half a CPU and the pool has one actor per CPU, so actors never
# hold every CPU: Ray Data's own tasks always find a share (with actors holding all CPUs they
# wait forever and the job hangs without a word), and the actors of a node that dies can
# restart on the others. Each actor's ONNX Runtime session runs ACTOR_THREADS thread(s).
ACTOR_CPUS = 0.5
ACTOR_THREADS = 1
SHARD_CPUS = 1  # a shard build (FAISS on one thread)
CONNECT_TIMEOUT = 5.0  # seconds to wait for the head's port before calling it unreachable
SHARD_RETRIES = 3  # a shard build is retried this often when its node dies


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--ray needs Ray: pip install 'simsearch[ray]'") from None
    return ray


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address`` (``host:port``, ``ray://host:port``
    or ``auto``: the cluster started on this machine with ``ray start``); returns the ``ray``
    module. A process already connected to that cluster stays connected.

    Raises ClusterError (one line) when no cluster answers there; MissingDependencyError when
    Ray is not installed.
    """
    ray = _ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address in ("auto", current) or address.removeprefix("ray://") == current:
            return ray
        ray.shutdown()
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            log_to_driver=False,
            include_dashboard=False,
        )
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot connect to a Ray cluster at {address}: {_first(exc)}") from None
    return ray


def _check_reachable(address: str) -> None:
    """ClusterError unless something accepts connections at ``address`` within a few seconds
    (Ray itself retries an unreachable head for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {reason}") from None


def cluster_cpus(address: str) -> int:
    """The CPUs of the cluster at ``address`` (at least 1)."""
    ray = connect(address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_actor_pool(
    address: str,
    batches: list[Any],
    worker: type,
    kwargs: dict[str, Any],
    actors: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``worker(**kwargs)(batch)`` over Arrow tables on a pool of Ray actors (Ray Data's
    ``map_batches``: each table is one batch) and return the rows of the tables it returned.

    ``actors``: the pool's size (default: one per CPU of the cluster). An actor lost with its
    node is restarted and its batches run again (Ray's retries). Raises ClusterError when the
    job fails (a SimsearchError raised by the worker comes through as itself).
    """
    connect(address)
    import ray
    import ray.data

    size = actors if actors is not None else cluster_cpus(address)
    if size < 1:
        raise ClusterError(f"--actors must be at least 1, got {size}")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # Ray Data's own progress (bars, or log lines when stderr is no terminal), or silence.
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    context.execution_options.preserve_order = True  # parts come back in catalog order
    dataset = ray.data.from_arrow(batches).map_batches(
        worker,
        fn_constructor_kwargs=kwargs,
        batch_size=None,  # one input table = one batch = one part
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_cpus=ACTOR_CPUS,  # Ray Data spreads the actors over the nodes
    )
    try:
        return [dict(row) for row in dataset.iter_rows()]
    except ray.exceptions.RayError as exc:
        raise _job_error(exc) from None


def build_shards(
    address: str, parts: list[np.ndarray], empty: Any, *, kind: str, params: dict[str, Any]
) -> list[Any]:
    """One FAISS index per slice of vectors, built in parallel Ray tasks: ``empty`` (a trained,
    empty IVF index) copied and filled, or a ``kind`` index built from scratch. Returns the
    indexes in order. Raises ClusterError when a task fails for good."""
    ray = connect(address)
    import faiss

    empty_bytes = None if empty is None else faiss.serialize_index(empty)
    task = ray.remote(num_cpus=SHARD_CPUS, max_retries=SHARD_RETRIES)(_build_shard)
    shared = None if empty_bytes is None else ray.put(empty_bytes)
    refs = [task.remote(ray.put(part), kind, params, shared) for part in parts]
    try:
        blobs = ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise _job_error(exc) from None
    return [faiss.deserialize_index(blob) for blob in blobs]


def _build_shard(
    vectors: np.ndarray, kind: str, params: dict[str, Any], empty: np.ndarray | None
) -> np.ndarray:
    """(Runs in a Ray task.) A serialized FAISS index over ``vectors``."""
    import faiss

    from simsearch import vector_index

    faiss.omp_set_num_threads(SHARD_CPUS)
    if empty is not None:
        index = vector_index.filled(faiss.deserialize_index(empty), vectors)
    else:
        index = vector_index.build(vectors, kind, params)
    return faiss.serialize_index(index)


def _job_error(exc: BaseException) -> SimsearchError:
    """A failed Ray job as one typed error: the worker's own SimsearchError when it raised one
    (Ray keeps the exception of a task, only the text of an actor's failed constructor), else
    ClusterError with the first line of Ray's message."""
    from simsearch import errors

    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        if isinstance(cause, SimsearchError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    found = WORKER_ERROR.findall(_plain(str(exc)))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, SimsearchError):
            return kind(message.strip())
    return ClusterError(f"the Ray job failed: {_first(exc)}")


WORKER_ERROR = re.compile(r"simsearch\.errors\.(\w+): (.+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    return ANSI.sub("", text)


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in _plain(str(exc)).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
