"""The HTTP service on a Ray cluster (Ray Serve): the same ``create_app``, two layouts.

* **Whole index** (an index without shards): ``replicas`` copies of the app, each loading the
  verified index once; Ray Serve's HTTP proxy balances the requests over them.
* **Sharded index** (its manifest lists ``index.shards``): one deployment per shard, whose
  replicas each hold that shard's FAISS index and nothing else, and the app as the front: it
  receives and decodes the upload, embeds it once, sends the vector to every shard at once,
  merges their top k (:func:`simsearch.vector_index.merge_shards`, as a sharded index searched in
  one process does) and makes the hits from the item metadata it holds. So the answers are those
  of plain ``serve`` on the same index.

Both follow the index directory as ``serve`` does: a new version is swapped in once the front
and every shard have loaded and verified it; a version a shard cannot load is skipped. A shard
that does not answer (its replica restarting, its node gone, its file unreadable there) makes
searches answer 503 (never a partial result) and ``/api/health`` say ``"degraded"``, naming it.
Every call to a shard has a deadline, so no request waits on a dead replica.

Ray is imported inside functions only: plain ``serve`` never imports it. Every node needs
simsearch with the ``ray`` and ``serve`` extras, and sees the index directory at the same path
(shared storage).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch import storage, vector_index
from simsearch.errors import (
    ClusterError,
    ConfigError,
    IncompatibleIndexError,
    IndexCorruptError,
    MissingDependencyError,
    SimsearchError,
    UnavailableError,
)
from simsearch.live import LiveIndex
from simsearch.search_index import SearchIndex

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_NAME = "simsearch"
# Replicas ask for a share of a CPU, never a whole one: replicas holding every CPU would leave
# Ray Serve's own actors and the other deployments nothing to be scheduled on.
APP_CPUS = 0.5  # an app replica (decodes, embeds, searches or fans out)
SHARD_CPUS = 0.25  # a shard replica (one FAISS search per query: light)
SHARD_ONGOING = 64  # requests a shard replica takes at once (each is a sub-millisecond search)
SEARCH_TIMEOUT = 5.0  # seconds a search waits for all its shards before answering 503
HEALTH_TIMEOUT = 2.0  # seconds /api/health waits for each shard
LOAD_TIMEOUT = 300.0  # seconds a shard may take to load (and verify) a version of its file
DEPLOY_TIMEOUT = 300.0  # seconds the deployment may take to become ready
# Seconds Ray Serve's proxy waits for any request before answering 408: a request caught in a
# replica that dies can otherwise wait on Ray forever. A search takes milliseconds.
REQUEST_TIMEOUT = 30.0
KEPT_VERSIONS = 2  # versions a shard replica holds: the one served and the one coming in
CONSTRUCTOR_RETRIES = 3  # an app replica that cannot load the index fails the deployment soon
STATUS_EVERY = 2.0  # seconds between checks that the application still runs
STOP_TIMEOUT = 60.0  # seconds Ray Serve gets to remove the application before its actors are killed

log = logging.getLogger("simsearch.ray_serve")


def _ray() -> Any:
    try:
        import ray
        import ray.serve  # the serve extra of Ray
    except ImportError:
        raise MissingDependencyError(
            "serve --ray needs Ray Serve: pip install 'simsearch[serve,ray]'"
        ) from None
    return ray


# ---------------------------------------------------------------------- shards


@dataclass(frozen=True, eq=False)
class IndexVersion:
    """One version of an index directory, as the front sends it to the shards with each call:
    a shard replica loads (and verifies) its file of that version the first time it sees it."""

    directory: str
    manifest: dict[str, Any]
    digest: str  # of the manifest: names the version

    @classmethod
    def of(cls, directory: Path, manifest: dict[str, Any]) -> IndexVersion:
        return cls(str(directory), manifest, storage.manifest_digest(manifest))


def open_shard(version: IndexVersion, number: int) -> vector_index.VectorIndex:
    """Shard ``number`` of ``version``, from its files (checked against their sha256).
    Raises IndexCorruptError."""
    directory, manifest = Path(version.directory), version.manifest
    conf = manifest["index"]
    sizes = conf.get("shards")
    if sizes is None or not 0 <= number < len(sizes):
        raise IndexCorruptError(f"{directory}: this version of the index has no shard {number}")
    # The shard's files (index-002.faiss, ...) under the names of an unsharded index's
    # (index.faiss, ...): opened as one index, by the code that opens any index.
    tail = re.compile(rf"-{number:03d}(?=\.\w+$)")
    names = {
        tail.sub("", name): name
        for name in manifest["files"]
        if vector_index.is_index_file(name) and tail.search(name)
    }
    one = {key: value for key, value in conf.items() if key != "shards"}

    def path_of(name: str) -> Path:
        return storage.file_path(directory, manifest, names[name], verify=True)

    shard = vector_index.open_searcher(one, names, path_of)
    if not isinstance(shard, vector_index.VectorIndex) or shard.count != sizes[number]:
        raise IndexCorruptError(
            f"{directory}: shard {number} holds {shard.count} items, the manifest says "
            f"{sizes[number]}"
        )
    shard.check(shard.count, int(manifest["embedding_dim"]))
    return shard


class ShardServer:
    """(A Ray Serve deployment.) Searches shard ``number`` of the versions the front asks for,
    loading each once. It keeps the KEPT_VERSIONS versions asked for last: the one searched
    stays while versions that were only loaded (broken on another shard, say) come and go, since
    its files may be gone from the directory by then."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._shards: dict[str, vector_index.VectorIndex] = {}
        self._used: dict[str, float] = {}  # version -> when last asked for
        self._loading = threading.Lock()  # one load at a time; searches of loaded ones go on

    async def load(self, version: IndexVersion) -> int:
        """Load ``version`` (if not yet) and return its item count. Raises IndexCorruptError."""
        return (await self._shard(version)).count

    async def search(
        self, version: IndexVersion, vectors: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 unit vectors -> scores (n, k'), rows within the shard (n, k'), as
        :meth:`simsearch.vector_index.VectorIndex.search`."""
        # On the replica's event loop: a search of a few queries takes well under a
        # millisecond, less than handing it to a thread would.
        return (await self._shard(version)).search(vectors, k, allowed)

    async def _shard(self, version: IndexVersion) -> vector_index.VectorIndex:
        self._used[version.digest] = time.monotonic()
        shard = self._shards.get(version.digest)
        if shard is not None:
            return shard
        return await asyncio.to_thread(self._open, version)  # reading files: off the loop

    def _open(self, version: IndexVersion) -> vector_index.VectorIndex:
        with self._loading:
            shard = self._shards.get(version.digest)
            if shard is None:
                shard = open_shard(version, self.number)
                while len(self._shards) >= KEPT_VERSIONS:
                    unused = min(self._shards, key=lambda digest: self._used.get(digest, 0.0))
                    del self._shards[unused]
                    self._used.pop(unused, None)
                self._shards[version.digest] = shard
                log.info(
                    "shard %d: loaded %d items of %s", self.number, shard.count, version.digest
                )
        return shard


class RemoteShards:
    """The FAISS part of one index version whose shards are searched by ShardServer
    deployments (one handle per shard): a :class:`simsearch.vector_index.Searcher`.

    Made by the front for each version it loads: every shard loads the version first. With
    ``strict`` a shard that cannot load it raises (IndexCorruptError: the version is skipped;
    UnavailableError: tried again later); without (at start) that is logged and reported by
    :meth:`unavailable` until the shard answers.
    """

    def __init__(self, handles: list[Any], version: IndexVersion, *, strict: bool) -> None:
        conf = version.manifest["index"]
        sizes = conf.get("shards")
        if sizes is None or len(sizes) != len(handles):
            raise IncompatibleIndexError(
                f"{version.directory}: this version of the index has "
                f"{len(sizes) if sizes is not None else 'no'} shards, the service runs "
                f"{len(handles)}: restart `simsearch serve --ray` to serve it"
            )
        self.kind: str = conf["type"]
        self.params: dict[str, Any] = dict(conf.get("params") or {})
        self.sizes = [int(n) for n in sizes]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self._dim = int(version.manifest["embedding_dim"])
        self._tombstones = int(conf.get("tombstones", 0))
        self._handles = handles
        self._version = version
        problems = self._ask_all("load", LOAD_TIMEOUT)
        if problems and strict:
            # A shard that answered it cannot load the version makes it broken (skipped); one
            # that did not answer leaves it to be tried again.
            broken = {i: e for i, e in problems.items() if not isinstance(e, UnavailableError)}
            if broken:
                shard, exc = next(iter(broken.items()))
                raise IndexCorruptError(f"shard {shard} cannot load this version: {exc}")
            raise next(iter(problems.values()))
        for shard, exc in problems.items():
            log.warning("shard %d cannot load %s: %s", shard, version.directory, exc)

    @property
    def d(self) -> int:
        return self._dim

    @property
    def count(self) -> int:
        return int(self.starts[-1])

    @property
    def tombstones(self) -> int:
        return self._tombstones

    @property
    def ntotal(self) -> int:
        return self.count + self._tombstones

    def check(self, count: int, dim: int) -> None:
        if self.count != count or self._dim != dim:
            raise IndexCorruptError(
                f"the shards hold {self.count} x {self._dim}, expected {count} x {dim}"
            )

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every shard searched at once; their top k merged. Raises UnavailableError when a
        shard does not answer within SEARCH_TIMEOUT (or cannot search). ``catalog``: the
        catalog's vectors, with which an ``ivf-fastscan`` index's candidates are re-ranked
        here, as a sharded index in one process re-ranks each shard's."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        parts = vector_index.split_allowed(allowed, self.starts)
        refine = vector_index.refine_of(self.kind, self.params) if catalog is not None else 1
        deadline = time.monotonic() + SEARCH_TIMEOUT
        calls = [self._call(i, "search", vectors, k * refine, part) for i, part in enumerate(parts)]
        try:
            results = [self._result(i, call, deadline) for i, call in enumerate(calls)]
        except SimsearchError as exc:
            for call in calls:
                call.response.cancel()
            if isinstance(exc, UnavailableError):
                raise
            raise UnavailableError(f"a shard cannot search: {exc}") from None
        if refine == 1 or catalog is None:
            return vector_index.merge_shards(results, self.starts, k)
        shifted = [
            np.where(rows >= 0, rows + start, -1)
            for (_, rows), start in zip(results, self.starts[:-1], strict=True)
        ]
        candidates = np.concatenate(shifted, axis=1)
        # FAISS's re-ranking stops at a list's first -1: put every shard's -1s last
        last = np.argsort(candidates < 0, axis=1, kind="stable")
        candidates = np.take_along_axis(candidates, last, axis=1)
        return vector_index.rerank(vectors, catalog, candidates, k, threads)

    def unavailable(self) -> dict[str, str]:
        """The shards that do not answer within HEALTH_TIMEOUT (or cannot load this version),
        by name ("shard 2"), with the reason."""
        problems = self._ask_all("load", HEALTH_TIMEOUT)
        return {f"shard {i}": _one_line(str(exc)) for i, exc in problems.items()}

    def added(self, vectors: np.ndarray) -> vector_index.Searcher:
        raise ConfigError("a served index is read-only: change it with simsearch add")

    def removed(self, keep: np.ndarray, vectors: np.ndarray) -> vector_index.Searcher:
        raise ConfigError("a served index is read-only: change it with simsearch remove")

    # ------------------------------------------------------------------ calls

    def _ask_all(self, method: str, timeout: float) -> dict[int, SimsearchError]:
        """Call ``method`` on every shard at once; the errors by shard number."""
        deadline = time.monotonic() + timeout
        calls = [self._call(i, method) for i in range(len(self._handles))]
        problems: dict[int, SimsearchError] = {}
        for i, call in enumerate(calls):
            try:
                self._result(i, call, deadline)
            except SimsearchError as exc:
                problems[i] = exc
        return problems

    def _call(self, shard: int, method: str, *args: Any) -> _Call:
        handle = getattr(self._handles[shard], method)
        return _Call(handle.remote(self._version, *args), method, args)

    def _result(self, shard: int, call: _Call, deadline: float) -> Any:
        """The call's answer by ``deadline``. A replica that died is asked once more (another
        replica, or the one restarted in its place). Raises UnavailableError (no answer) or
        the shard's own SimsearchError (it answered that it cannot)."""
        ray = _ray()
        from ray.serve.exceptions import RayServeException

        for attempt in (1, 2):
            try:
                return call.response.result(timeout_s=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                call.response.cancel()
                raise UnavailableError(
                    f"shard {shard} did not answer in time (restarting?); retry in a moment"
                ) from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, SimsearchError):
                    raise type(cause)(f"shard {shard}: {_one_line(str(cause))}") from None
                raise UnavailableError(f"shard {shard} failed: {_first_line(exc)}") from None
            except (ray.exceptions.RayError, RayServeException) as exc:
                if attempt == 1 and time.monotonic() < deadline:
                    call = self._call(shard, call.method, *call.args)
                    continue
                raise UnavailableError(
                    f"shard {shard} is not answering ({type(exc).__name__}); retry in a moment"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class _Call:
    response: Any  # a ray.serve.handle.DeploymentResponse
    method: str
    args: tuple[Any, ...]


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "error"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def sharded_loader(handles: list[Any], *, strict: bool) -> Callable[[Path], SearchIndex]:
    """Opens an index directory with its FAISS part on the shard deployments ``handles``."""

    def remote(directory: Path, manifest: dict[str, Any]) -> vector_index.Searcher:
        return RemoteShards(handles, IndexVersion.of(directory, manifest), strict=strict)

    return functools.partial(SearchIndex.load, searcher_from=remote)


# ---------------------------------------------------------------------- the app


class SimsearchApp:
    """(A Ray Serve ingress deployment.) The app of :mod:`simsearch.server` over the index at
    ``index_dir``: the whole index, or the front of the sharded index when ``shards`` (one
    handle per shard deployment) are given. ``options``: :func:`create_app`'s keywords."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self, index_dir: str, options: dict[str, Any], shards: list[Any] | None = None
    ) -> None:
        self.options = options
        # In a thread: waiting for the shards' answers must not block the replica's event loop
        # (Ray Serve routes the calls on it).
        if shards is None:
            self.index: SearchIndex | LiveIndex = await asyncio.to_thread(
                SearchIndex.load, index_dir
            )
            return
        # At start a shard that cannot load is reported (health: degraded), not fatal; later
        # versions are loaded in the background and swapped in once every shard has them.
        first = await asyncio.to_thread(sharded_loader(shards, strict=False), Path(index_dir))
        self.index = LiveIndex(first, load=sharded_loader(shards, strict=True), background=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from simsearch.server import create_app

        return create_app(self.index, **self.options)


def application(
    index_dir: Path, manifest: dict[str, Any], replicas: int, options: dict[str, Any]
) -> Any:
    """The Ray Serve application for the index at ``index_dir`` (whole or sharded, as its
    ``manifest`` says), ``replicas`` copies of each deployment."""
    _ray()
    from ray import serve

    from simsearch.server import DEFAULT_MAX_UPLOADS

    ingress: Any = serve.deployment(serve.ingress()(SimsearchApp))
    app = ingress.options(
        name="app",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": APP_CPUS},
        # The app bounds its own uploads (503 above max_uploads), as under uvicorn.
        max_ongoing_requests=int(options.get("max_uploads", DEFAULT_MAX_UPLOADS)),
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
    )
    sizes = manifest["index"].get("shards")
    if sizes is None:
        return app.bind(str(index_dir), options)
    shard: Any = serve.deployment(ShardServer)
    shards = [
        shard.options(
            name=f"shard-{i:03d}",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": SHARD_CPUS},
            max_ongoing_requests=SHARD_ONGOING,
        ).bind(i)
        for i in range(len(sizes))
    ]
    return app.bind(str(index_dir), options, shards)


# ---------------------------------------------------------------------- running it


def connect(address: str) -> Any:
    """Connect to the Ray cluster at ``address`` (see ``simsearch.distributed.connect``),
    with Ray Serve's INFO lines kept off this command's stderr; returns the ``ray`` module."""
    from simsearch.distributed import connect as connect_cluster

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return connect_cluster(address)


@dataclass
class Deployed:
    """The application running on a cluster: where it answers, and how to remove it."""

    url: str
    count: int
    shards: int | None
    started_serve: bool  # Ray Serve was not running before: stop() shuts it down

    def running(self) -> bool:
        """The application is still deployed (False too when Ray Serve is gone)."""
        from ray import serve

        try:
            return APP_NAME in serve.status().applications
        except Exception:  # the controller is gone (serve shutdown, head lost)
            return False

    def stop(self) -> None:
        """Remove the application (and Ray Serve with its proxies and controller when this
        process started it): no simsearch actor is left on the cluster. Bounded: when Ray Serve
        does not finish within STOP_TIMEOUT, the actors it was removing are killed."""
        from ray import serve

        def remove() -> None:
            try:
                serve.shutdown() if self.started_serve else serve.delete(APP_NAME)
            except Exception as exc:  # the cluster went away meanwhile: nothing left to remove
                log.warning("removing the application: %s", _first_line(exc))

        worker = threading.Thread(target=remove, name="simsearch-stop", daemon=True)
        worker.start()
        worker.join(STOP_TIMEOUT)
        if worker.is_alive():
            print(
                f"Ray Serve did not stop within {STOP_TIMEOUT:.0f} s: killing its actors",
                file=sys.stderr,
            )
            _kill_serve_actors(everything=self.started_serve)


def _kill_serve_actors(everything: bool) -> None:
    """Kill the named Ray Serve actors left on the cluster: all of them (this process started
    Ray Serve) or only this application's replicas."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = str(actor["name"])
        if name.startswith("SERVE_") and (everything or f"::{APP_NAME}" in name):
            try:
                ray.kill(ray.get_actor(name, namespace=actor["namespace"]), no_restart=True)
            except Exception as exc:  # gone meanwhile
                log.warning("killing %s: %s", name, _first_line(exc))


def deploy(
    index_dir: str | Path,
    address: str,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    root_path: str = "",
    **options: Any,
) -> Deployed:
    """Deploy the app for the index at ``index_dir`` on the Ray cluster at ``address`` and
    wait until it answers (at most DEPLOY_TIMEOUT). ``options``: :func:`create_app`'s keywords
    (``max_upload_bytes``, ``allowed_hosts``, ...).

    Every file of the index is checked against its sha256 here before it is deployed. Raises
    ClusterError (unreachable cluster, failed deployment), ConfigError, and the index's
    errors.
    """
    if replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    index_dir = Path(index_dir).resolve()
    connect(address)
    manifest, problems = storage.verify(index_dir)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IndexCorruptError(f"{index_dir}: {problems[0]}{more}")
    from ray import serve

    started_serve = not serve.status().proxies
    serve.start(
        proxy_location="HeadOnly",
        http_options={
            "host": host,
            "port": port,
            "root_path": root_path,
            "request_timeout_s": REQUEST_TIMEOUT,
        },
    )
    app = application(index_dir, manifest, replicas, options)
    failure: list[BaseException] = []
    ready = threading.Event()

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except BaseException as exc:  # reported by the waiting thread
            failure.append(exc)
        finally:
            ready.set()

    deployed = Deployed(
        _url(host, port, root_path), int(manifest["count"]), _shard_count(manifest), started_serve
    )
    threading.Thread(target=run, daemon=True, name="simsearch-deploy").start()
    try:
        if not ready.wait(DEPLOY_TIMEOUT):
            raise ClusterError(
                f"the application did not start within {DEPLOY_TIMEOUT:g} s: {_status_line()}"
            )
        if failure:
            raise ClusterError(f"the deployment failed: {_deploy_error(failure[0])}")
    except BaseException:
        deployed.stop()
        raise
    return deployed


def _url(host: str, port: int, root_path: str) -> str:
    """Where the proxy answers: Ray Serve started before keeps the address it was given."""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config  # type: ignore[union-attr]
        host, port, root_path = config.host, config.port, config.root_path
    except Exception:  # a private API: else the address asked for
        pass
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{root_path}"


def _shard_count(manifest: dict[str, Any]) -> int | None:
    sizes = manifest["index"].get("shards")
    return None if sizes is None else len(sizes)


def _status_line() -> str:
    """What Ray Serve says about the application's deployments, in one line."""
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return "not deployed"
    messages = [
        f"{name}: {_one_line(d.message)}" for name, d in status.deployments.items() if d.message
    ]
    return "; ".join(messages) or str(status.status)


def _deploy_error(exc: BaseException) -> str:
    """Why the deployment failed, in one line: the error a replica's constructor raised (from
    what Ray Serve says about the deployments), else the first line of Ray's message."""
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    messages = [d.message for d in status.deployments.values()] if status is not None else []
    for text in [*messages, str(exc)]:
        lines = [line.strip() for line in text.splitlines()]
        for line in reversed(lines):
            if re.match(r"[\w.]+(Error|Exception): ", line):
                return _one_line(line.removeprefix("simsearch.errors."))
    return _first_line(exc)


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the service as Ctrl-C does (cleanly), and so does SIGINT even when this
    process was started with it ignored (a background job of a script: Python then installs no
    Ctrl-C handler of its own)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def run(
    index_dir: str | Path,
    address: str,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allowed_hosts: Collection[str] = (),
    root_path: str = "",
    **options: Any,
) -> None:
    """``simsearch serve --ray``: deploy, then wait until Ctrl-C or SIGTERM (the application
    and, if this process started it, Ray Serve are then removed) or until the application is
    removed from the cluster (``serve shutdown``)."""
    from simsearch.server import allowed_hosts_for

    hosts = allowed_hosts_for(host, allowed_hosts)
    with _stopped_by_sigterm():
        try:
            deployed = deploy(
                index_dir, address, replicas, host, port, root_path=root_path,
                allowed_hosts=hosts, **options,
            )  # fmt: skip
            try:
                _announce(deployed, index_dir, address, replicas, hosts)
                while deployed.running():
                    time.sleep(STATUS_EVERY)
                print("the application was removed from the cluster", file=sys.stderr)
            except KeyboardInterrupt:
                print("stopping: removing the application from the cluster", file=sys.stderr)
            finally:
                deployed.stop()
        finally:
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()


def _announce(
    deployed: Deployed, index_dir: str | Path, address: str, replicas: int, hosts: Collection[str]
) -> None:
    layout = (
        f"{replicas} app replica(s)"
        if deployed.shards is None
        else f"{replicas} front replica(s), {deployed.shards} shards x {replicas} replica(s)"
    )
    print(
        f"serving {deployed.count:,} items from {index_dir} on the Ray cluster at {address} "
        f"({layout}) at {deployed.url}/ (answering Host: {', '.join(hosts)}; Ctrl-C stops it)",
        file=sys.stderr,
    )
