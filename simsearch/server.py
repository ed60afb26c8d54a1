"""The HTTP service: a FastAPI app over one read-only ``SearchIndex``, and the ``serve`` runner.
(``simsearch.ray_serve`` runs this same app on a Ray cluster: ``serve --ray``.)

Endpoints::

    GET  /                        the web page (simsearch/static/, no external assets)
    POST /api/search?k=10         multipart field ``image`` (or a raw image body)
                                  -> {"query", "results": [Hit, ...], "query_image",
                                      "query_framing", "k", "took_ms"}
    GET  /api/items/random        a random catalog item: {"id", "label", "label_name", ...}
    GET  /api/items/{id}/image    the catalog item as PNG (ids contain slashes)
    GET  /api/health              {"status": "ok", "count": N, "max_k", "max_upload_bytes", ...}
                                  ("degraded" with "unavailable": {"shard 2": why} when shards
                                  searched on a Ray cluster do not answer)
    GET  /docs, /redoc            API documentation (assets served locally), /openapi.json

Every error is JSON ``{"error": "<one line>"}``: 400 a malformed request (not multipart, no
``image`` field) or a ``Host`` the server does not answer to, 403 a POST from another origin,
404 an unknown item or path, 408 an upload that did not arrive within ``upload_timeout``, 413 an
upload over the limit, 422 an image that cannot be used or a parameter out of range, 503 (with
``Retry-After``) too many uploads in progress or a shard of the index not answering (never a
partial answer), 500 a bug or an unreadable index (details only in
the log: no error body carries a server path). The server keeps serving.

Hosts: the app answers only to the names it is served as (``allowed_hosts``: by default
localhost, 127.0.0.1 and [::1], any port), so a page whose domain is rebound to this address (DNS
rebinding) reads nothing; ``"*"`` turns the check off (behind a trusted reverse proxy).

Resources are bounded per process, whatever the mix of requests:

* at most ``max_uploads`` uploads are in progress at once (received, waiting or searched; 503
  above), each body within ``upload_timeout`` seconds (408) and ``max_upload_bytes`` (413); a
  body is spooled to a temporary file past 1 MiB, so a slow or held upload costs about 1 MiB of
  memory, never its size;
* at most ``search_threads`` uploads are decoded and searched at once (worker threads); only
  those hold an upload's bytes in memory, so the peak is about the baseline plus
  ``search_threads`` x (the upload + one decode's peak);
* a response sent before the request body was read (413, 400, 422 on ``k``, ...) first reads and
  drops the rest of the body while it keeps coming (up to ``DRAIN_LIMIT`` bytes, within the
  upload deadline): clients that send a whole body before they read (browsers, Python's urllib:
  no ``Expect: 100-continue``) then get the JSON error instead of a connection reset;
* with glibc, the app calls ``malloc_trim`` once a second while its size keeps moving (16 MiB
  since the last trim): what a burst of large decodes used goes back to the system instead of
  staying in glibc's heaps.

Concurrency: the index is loaded once per worker process and only read while serving; when its
directory changes (``simsearch add``/``remove``/``build-index --force``), the new version is
loaded by the first request that notices it and swapped in once complete (other requests go on
with the previous version meanwhile; a version that fails to load is logged and skipped). An item
image the held version cannot read (its files replaced behind it) is looked up once more in the
current version before the request fails.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import functools
import io
import logging
import os
import random
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    MutableMapping,
)
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import IO, Any, BinaryIO, TypeVar, cast
from urllib.parse import quote, urlsplit

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect

from simsearch import __version__
from simsearch.errors import (
    ConfigError,
    IncompatibleIndexError,
    IndexCorruptError,
    IndexNotFoundError,
    InvalidImageError,
    ItemNotFoundError,
    SimsearchError,
    UnavailableError,
)
from simsearch.live import LiveIndex
from simsearch.search_index import MAX_K, QueryResult, SearchIndex, default_index_dir

MIB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 16 * MIB
DEFAULT_UPLOAD_TIMEOUT = 60.0
DEFAULT_MAX_UPLOADS = 32
# Room for the multipart envelope (boundaries, part headers) around an image of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024
# An early answer (413, ...) first drops up to this many body bytes, as long as they keep coming
# (no pause over DRAIN_IDLE seconds): enough for a client that sends a few times the limit.
DRAIN_LIMIT = 128 * MIB
DRAIN_IDLE = 1.0
# uvicorn's limit_concurrency (open connections + running requests; it answers a plain-text 503
# above it) and keep-alive timeout, as `serve` sets them.
MAX_CONNECTIONS = 256
KEEP_ALIVE_SECONDS = 5
# The names a loopback-bound server answers to (any port); others need --allowed-host.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
STATIC_DIR = Path(__file__).parent / "static"
# Environment read by `app_from_env` (the per-worker factory used with --workers > 1 and by
# `uvicorn --factory simsearch.server:app_from_env`).
ENV_MAX_UPLOAD = "SIMSEARCH_MAX_UPLOAD_BYTES"
ENV_UPLOAD_TIMEOUT = "SIMSEARCH_UPLOAD_TIMEOUT"
ENV_MAX_UPLOADS = "SIMSEARCH_MAX_UPLOADS"
ENV_SEARCH_THREADS = "SIMSEARCH_SEARCH_THREADS"
ENV_ALLOWED_HOSTS = "SIMSEARCH_ALLOWED_HOSTS"

log = logging.getLogger("simsearch.server")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


_T = TypeVar("_T")
_D = TypeVar("_D")


class UploadTooLargeError(Exception):
    """The request body grew past the limit while it was being read."""


def create_app(
    index: SearchIndex | LiveIndex | str | os.PathLike[str],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    search_threads: int | None = None,
    reload_every: float = 1.0,
    *,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
    allowed_hosts: Collection[str] = LOOPBACK_HOSTS,
) -> FastAPI:
    """The FastAPI application serving ``index`` (a loaded index, an index directory, or a
    :class:`LiveIndex` that says how its directory is followed).

    ``max_upload_bytes`` bounds the uploaded image (413 above it); ``upload_timeout`` (seconds)
    bounds how long its body may take to arrive (408); ``max_uploads`` bounds how many uploads are
    in progress at once (503 above it); ``search_threads`` bounds how many uploads are decoded and
    searched at once (default: the number of CPUs, at least 2); ``reload_every`` is how often
    (seconds, at most) the index directory is checked for changes. ``allowed_hosts`` are the
    names (``Host`` header, port ignored) the app answers to, ``"*"`` meaning any: other Hosts
    get a 400, POSTs from other origins a 403 (DNS rebinding, cross-site posts).

    Raises ConfigError for values out of range, and the index's load errors
    (IndexNotFoundError, IndexCorruptError, ...).
    """
    if max_upload_bytes < 1:
        raise ConfigError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if not upload_timeout > 0:
        raise ConfigError(f"upload_timeout must be positive, got {upload_timeout}")
    if max_uploads < 1:
        raise ConfigError(f"max_uploads must be at least 1, got {max_uploads}")
    if search_threads is not None and search_threads < 1:
        raise ConfigError(f"search_threads must be at least 1, got {search_threads}")
    hosts = _host_names(allowed_hosts)
    if isinstance(index, LiveIndex):
        live = index
    else:
        if not isinstance(index, SearchIndex):
            index = SearchIndex.load(index)
        # Follows add/remove/rebuilds of the directory: a changed manifest is reloaded (checked
        # at most once a second); requests keep the previous index until the new one has loaded.
        live = LiveIndex(index, check_every=reload_every)
    limiter = anyio.CapacityLimiter(search_threads or max(2, os.cpu_count() or 2))
    uploads = _Uploads(max_upload_bytes, upload_timeout, max_uploads)

    app = FastAPI(
        title="simsearch",
        version=__version__,
        summary="Image similarity search over autoencoder embeddings (Keras + FAISS).",
        docs_url=None,  # replaced below by pages that load their assets from this server
        redoc_url=None,
        lifespan=_give_back_memory,
    )
    app.state.index = live.current()  # as loaded at start
    app.state.live = live
    _add_error_handlers(app)
    _add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # The last added is the outermost: a Host refused is still an early answer to drain.
    app.add_middleware(_HostCheck, hosts=hosts)
    app.add_middleware(_EarlyAnswers, timeout=upload_timeout)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health", summary="Liveness, index size and the request limits")
    def health() -> dict[str, Any]:
        search_index = live.current()
        # Shards searched elsewhere may not answer: then searches get a 503, and this says which.
        unavailable = search_index.searcher.unavailable()
        return {
            "status": "degraded" if unavailable else "ok",
            **({"unavailable": unavailable} if unavailable else {}),
            "count": len(search_index),
            "dim": search_index.dim,
            "model": search_index.manifest.get("model", {}).get("model"),
            "max_upload_bytes": max_upload_bytes,
            "max_k": MAX_K,
            "upload_timeout_s": upload_timeout,
            "item_images": search_index.has_item_images,
        }

    @app.post(
        "/api/search",
        summary="Nearest catalog neighbours of an uploaded image",
        openapi_extra={"requestBody": _SEARCH_BODY},
        responses=_errors(
            {
                400: "Not a multipart upload with an `image` field",
                408: "The upload did not arrive within the upload timeout",
                413: "Image larger than the upload limit",
                422: "Not a usable image, or k out of range",
                503: "Too many uploads in progress, or a shard of the index not answering "
                "(see Retry-After)",
            }
        ),
    )
    async def search(
        request: Request,
        k: int = Query(10, ge=1, le=MAX_K, description="Number of neighbours."),
        label: list[str] | None = Query(
            None, description="Only items of these classes (names or ids); repeatable."
        ),
        id_prefix: str | None = Query(None, description="Only items whose id starts with this."),
        min_similarity: float | None = Query(
            None, ge=-1, le=1, description="Only hits at least this similar."
        ),
        max_distance: float | None = Query(
            None, ge=0, le=2, description="Only hits at most this far (1 - similarity)."
        ),
    ) -> dict[str, Any]:
        filters: dict[str, Any] = {"labels": label, "id_prefix": id_prefix}
        filters |= {"min_similarity": min_similarity, "max_distance": max_distance}
        async with uploads.receive(request) as (name, upload):
            started = time.perf_counter()
            answer = await anyio.to_thread.run_sync(
                lambda: _search(live.current(), upload.file, name, k, filters), limiter=limiter
            )
        return {
            "query": name,
            "results": [hit.to_dict() for hit in answer.hits],
            "query_image": _png_data_url(answer.pixels),
            "query_framing": answer.framing,
            "k": k,
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @app.get(
        "/api/items/random",
        summary="A random catalog item",
        responses=_errors({404: "The index is empty"}),
    )
    def random_item() -> dict[str, Any]:
        search_index = live.current()
        if not len(search_index):
            raise HTTPException(404, "the index is empty")
        return _item_json(search_index, random.randrange(len(search_index)))

    @app.get(
        "/api/items/{item_id:path}/image",
        summary="A catalog item's image (PNG, 28x28, as the model saw it)",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}},
            **_errors({404: "No item with this id", 422: "Invalid id"}),
        },
    )
    def item_image(item_id: str) -> Response:
        png = _item_png(live, item_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each worker process loads the index once).

    Reads ``SIMSEARCH_INDEX_DIR`` (default ``indexes/fashion-mnist``), and optionally
    ``SIMSEARCH_MAX_UPLOAD_BYTES``, ``SIMSEARCH_UPLOAD_TIMEOUT`` (seconds),
    ``SIMSEARCH_MAX_UPLOADS``, ``SIMSEARCH_SEARCH_THREADS`` and ``SIMSEARCH_ALLOWED_HOSTS``
    (comma-separated names, ``*`` for any; default: the loopback names). Give uvicorn the
    options ``serve`` sets::

        uvicorn --factory simsearch.server:app_from_env --limit-concurrency 256 \\
                --timeout-keep-alive 5 [--root-path /prefix] [--forwarded-allow-ips IPS]
    """
    hosts = os.environ.get(ENV_ALLOWED_HOSTS)
    return create_app(
        default_index_dir(),
        _env(ENV_MAX_UPLOAD, int, DEFAULT_MAX_UPLOAD_BYTES),
        _env(ENV_SEARCH_THREADS, int, None),
        upload_timeout=_env(ENV_UPLOAD_TIMEOUT, float, DEFAULT_UPLOAD_TIMEOUT),
        max_uploads=_env(ENV_MAX_UPLOADS, int, DEFAULT_MAX_UPLOADS),
        allowed_hosts=hosts.split(",") if hosts else LOOPBACK_HOSTS,
    )


def allowed_hosts_for(bind_host: str, extra: Collection[str] = ()) -> tuple[str, ...]:
    """The Host names a server bound to ``bind_host`` answers to: the loopback names, the bound
    address itself unless it is a wildcard (0.0.0.0, ::), and ``extra`` (``*``: any host)."""
    names = list(LOOPBACK_HOSTS)
    if bind_host not in {"", "0.0.0.0", "::"}:
        names.append(bind_host)
    return (*names, *extra)


def serve(
    index_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    log_level: str = "info",
    *,
    allowed_hosts: Collection[str] = (),
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
    search_threads: int | None = None,
    root_path: str = "",
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve the index at ``index_dir`` with uvicorn until interrupted.

    The index is loaded (and checked) here first, so a missing or corrupt index fails before the
    port is bound. With ``workers > 1`` each worker process loads its own copy through
    :func:`app_from_env`. ``allowed_hosts`` are names served besides those of
    :func:`allowed_hosts_for`; ``root_path`` is the path prefix a reverse proxy serves the app
    under; ``forwarded_allow_ips`` the proxies whose X-Forwarded-For/-Proto are trusted
    (uvicorn's default: $FORWARDED_ALLOW_IPS or 127.0.0.1).
    """
    import uvicorn

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    hosts = allowed_hosts_for(host, allowed_hosts)
    app = create_app(
        index_dir,
        max_upload_bytes,
        search_threads,
        upload_timeout=upload_timeout,
        max_uploads=max_uploads,
        allowed_hosts=hosts,
    )
    count = len(app.state.index)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {count:,} items from {index_dir} at http://{shown}:{port}{root_path}/ "
        f"(API docs: /docs; answering Host: {', '.join(hosts)})",
        file=sys.stderr,
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "limit_concurrency": MAX_CONNECTIONS,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "root_path": root_path,
        "forwarded_allow_ips": forwarded_allow_ips,
    }
    if workers == 1:
        uvicorn.run(app, **options)
        return
    del app
    os.environ["SIMSEARCH_INDEX_DIR"] = str(Path(index_dir).resolve())
    os.environ[ENV_MAX_UPLOAD] = str(max_upload_bytes)
    os.environ[ENV_UPLOAD_TIMEOUT] = str(upload_timeout)
    os.environ[ENV_MAX_UPLOADS] = str(max_uploads)
    os.environ[ENV_ALLOWED_HOSTS] = ",".join(hosts)
    if search_threads is not None:
        os.environ[ENV_SEARCH_THREADS] = str(search_threads)
    uvicorn.run("simsearch.server:app_from_env", factory=True, workers=workers, **options)


def _env(name: str, parse: Callable[[str], _T], default: _D) -> _T | _D:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


# ---------------------------------------------------------------------- search


def _search(
    index: SearchIndex, upload: IO[bytes], name: str, k: int, filters: dict[str, Any]
) -> QueryResult:
    """Read the spooled upload, decode + preprocess + search (runs in a worker thread)."""
    upload.seek(0)
    data = upload.read()
    try:
        return index.query_detail(data, k, **filters)
    except InvalidImageError as exc:
        raise InvalidImageError(_name_the_upload(str(exc), data, name)) from None


def _name_the_upload(message: str, data: bytes, name: str) -> str:
    """The image library's message with the upload's name in place of its bytes' description."""
    from simsearch.images import _describe

    described = _describe(data)
    if described in message:
        return message.replace(described, name, 1)
    return f"{name}: {message}"


def _item_png(live: LiveIndex, item_id: str) -> bytes:
    """The item's PNG from the held index or, if that cannot read its files any more (replaced
    behind it), from the current version of the directory."""
    held = live.current()
    try:
        return held.item_png(item_id)
    except (IndexCorruptError, IndexNotFoundError, IncompatibleIndexError, OSError) as exc:
        current = live.refresh()
        if current is held:
            raise
        log.warning("item %r: the held index failed (%s); served by its new version", item_id, exc)
        return current.item_png(item_id)


def _item_json(index: SearchIndex, row: int) -> dict[str, Any]:
    item_id = str(index.ids[row])
    return {
        "id": item_id,
        "label": index.label_of(row),
        "label_name": index.label_name_of(row),
        "source": str(index.sources[row]) or None,
        "image_url": f"/api/items/{quote(item_id, safe='/')}/image",
    }


def _png_data_url(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8), mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------- memory


@functools.cache
def _libc() -> Any:
    """glibc, or None elsewhere (musl, macOS): ``malloc_trim`` is glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


# Every _TRIM_EVERY seconds, if the process size has moved _TRIM_CHANGE_BYTES (up or down) since
# the last trim, the freed heap pages glibc keeps (after large decodes, drained bodies) go back to
# the system. A trim with nothing to give back costs about 0.3 ms.
_TRIM_EVERY = 1.0
_TRIM_CHANGE_BYTES = 16 * MIB


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.asynccontextmanager
async def _give_back_memory(app: FastAPI) -> AsyncIterator[None]:
    """App lifespan: while serving, ``malloc_trim`` whenever the process size has moved since the
    last trim (checked every ``_TRIM_EVERY`` s; glibc only).

    Down counts too: once a burst's large arrays are unmapped, what is left above the size after
    the last trim may be freed heap pages that glibc would otherwise keep.
    """
    libc = _libc()
    if libc is None:
        yield
        return

    def trim_if_moved(last: int) -> int:
        if abs(_rss_bytes() - last) <= _TRIM_CHANGE_BYTES:
            return last
        libc.malloc_trim(0)
        return _rss_bytes()

    async def keep() -> None:
        last = _rss_bytes()
        while True:
            await anyio.sleep(_TRIM_EVERY)
            last = await anyio.to_thread.run_sync(trim_if_moved, last)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(keep)
        yield
        tasks.cancel_scope.cancel()


# ---------------------------------------------------------------------- uploads

_SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_NOT_AN_UPLOAD = {"application/x-www-form-urlencoded", "application/json", "text/plain"}
_CLOSE = {"Connection": "close"}


class _Uploads:
    """Receives image uploads: at most ``slots`` in progress at once (from the first body byte
    to the answer), each body within ``timeout`` seconds and ``max_bytes``, spooled to a
    temporary file past 1 MiB (Starlette's multipart spool)."""

    def __init__(self, max_bytes: int, timeout: float, slots: int) -> None:
        self.max_bytes, self.timeout, self.slots = max_bytes, timeout, slots
        self.in_progress = 0  # only touched on the event loop: no lock needed

    @contextlib.asynccontextmanager
    async def receive(self, request: Request) -> AsyncIterator[tuple[str, UploadFile]]:
        """The upload's (name, spooled file) while the caller searches it; its slot and its file
        are released on exit.

        A multipart body must carry the image in the field ``image``; any other content type is
        taken as the raw image. Raises HTTPException 400 (malformed), 408 (too slow), 413 (over
        the limit) or 503 (too many uploads in progress).
        """
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _NOT_AN_UPLOAD:
            raise HTTPException(400, "send the image as multipart/form-data (field 'image')")
        multipart = content_type == "multipart/form-data"
        body_limit = self.max_bytes + MULTIPART_OVERHEAD if multipart else self.max_bytes
        too_large = HTTPException(413, f"upload larger than the {_size(self.max_bytes)} limit")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            raise too_large
        if self.in_progress >= self.slots:
            raise HTTPException(
                503,
                f"the server is busy with {self.slots} uploads; retry in a moment",
                headers={"Retry-After": "1"},
            )
        self.in_progress += 1
        try:
            try:
                with anyio.fail_after(self.timeout):
                    name, upload = await self._receive(request, multipart, body_limit)
            except TimeoutError:
                raise HTTPException(
                    408, f"the upload did not arrive within {self.timeout:g} s", headers=_CLOSE
                ) from None
            except UploadTooLargeError:
                raise too_large from None
            except ClientDisconnect:
                raise HTTPException(400, "the client disconnected during the upload") from None
            try:
                yield name, upload
            finally:
                await upload.close()
        finally:
            self.in_progress -= 1

    async def _receive(
        self, request: Request, multipart: bool, body_limit: int
    ) -> tuple[str, UploadFile]:
        limited = Request(request.scope, receive=_limited_receive(request.receive, body_limit))
        if not multipart:
            # Closed with the UploadFile, by the caller (or below on failure).
            spool = SpooledTemporaryFile(max_size=MultiPartParser.spool_max_size)  # noqa: SIM115
            raw = UploadFile(cast(BinaryIO, spool), size=0, filename="upload")
            try:
                async for chunk in limited.stream():
                    await raw.write(chunk)
            except BaseException:
                await raw.close()
                raise
            return "upload", raw
        form = await limited.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            await form.close()
            raise HTTPException(400, "no file in the multipart field 'image'")
        if upload.size is not None and upload.size > self.max_bytes:
            await form.close()
            raise HTTPException(413, f"upload larger than the {_size(self.max_bytes)} limit")
        name = " ".join((upload.filename or "upload").split())[:200] or "upload"
        return name, upload


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so that reading more than ``limit`` body bytes raises."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLargeError
        return message

    return limited


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n:,} bytes"


class _EarlyAnswers:
    """ASGI middleware: an answer sent before the request body was read (413, 400, a 422 on
    ``k``, ...) first reads and drops the rest of the body, so that a client which sends all of
    it before reading (no ``Expect: 100-continue``) gets the answer rather than a reset.

    Dropping stops after ``DRAIN_LIMIT`` bytes, a pause of ``DRAIN_IDLE`` s or the upload
    deadline; the answer then closes the connection. Answers that already say
    ``Connection: close`` (408) are not drained, nor bodies a client holds back until it gets
    ``100 Continue`` (it then gets the answer instead, and sends nothing).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not (chunked or (declared.isdigit() and int(declared) > 0)):
            await self.app(scope, receive, send)  # no body: nothing to drain
            return
        deadline = anyio.current_time() + self.timeout
        waits_for_continue = headers.get("expect", "").lower() == "100-continue"
        state = {"asked": False, "ended": False, "received": 0}

        async def tracked_receive() -> Message:
            state["asked"] = True  # uvicorn sends "100 Continue" now, if the client waits for it
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["ended"] = not message.get("more_body", False)
            else:
                state["ended"] = True  # disconnected
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["ended"]:
                head = Headers(raw=message.get("headers", []))
                unsent = waits_for_continue and not state["asked"]  # it will never be sent
                drain = not ("close" in head.get("connection", "") or unsent)
                if drain and declared.isdigit() and int(declared) > DRAIN_LIMIT:
                    drain = False
                if not (drain and await self._drain(tracked_receive, state, deadline)):
                    message["headers"] = [
                        *(h for h in message.get("headers", []) if h[0].lower() != b"connection"),
                        (b"connection", b"close"),
                    ]
            await send(message)

        await self.app(scope, tracked_receive, guarded_send)

    @staticmethod
    async def _drain(receive: Receive, state: dict[str, Any], deadline: float) -> bool:
        """Read the rest of the body while it keeps coming; True once it has all arrived."""
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            while not state["ended"] and state["received"] <= DRAIN_LIMIT:
                with anyio.move_on_after(DRAIN_IDLE) as idle:
                    await receive()
                if idle.cancelled_caught:
                    return False
        return bool(state["ended"])


# ---------------------------------------------------------------------- hosts


def _host_names(hosts: Collection[str]) -> frozenset[str] | None:
    """Normalised names, or None for any (``*``)."""
    if isinstance(hosts, str):
        raise ConfigError("allowed_hosts must be a collection of names, not one string")
    names = {_hostname(name) for name in hosts if name.strip()}
    if "*" in names:
        return None
    if not names:
        raise ConfigError("allowed_hosts is empty: no request could be answered")
    return frozenset(names)


def _hostname(value: str) -> str:
    """A Host header's name: lower case, no port, no brackets ('[::1]:8000' -> '::1')."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class _HostCheck:
    """ASGI middleware: answer only requests for the served names (``Host``), and refuse POSTs
    whose ``Origin`` is another site. A page on another domain that rebinds its name to this
    address (DNS rebinding) can then read nothing, and no other site can post to it."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hosts is not None:
            refusal = _refusal(self.hosts, Headers(scope=scope), scope.get("method", "GET"))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(hosts: frozenset[str], headers: Headers, method: str) -> Response | None:
    """The error answer for a request to another host or a POST from another origin, or None."""
    host = headers.get("host")
    if host is not None and _hostname(host) not in hosts:
        shown = " ".join(host.split())[:100]
        return _error(
            400,
            f"this server does not answer to host {shown!r} (start it with --allowed-host)",
        )
    origin = headers.get("origin")
    if method not in {"GET", "HEAD", "OPTIONS"} and origin is not None:
        origin_host = urlsplit(origin).hostname
        if origin_host is None or _hostname(origin_host) not in hosts:
            return _error(403, "cross-origin requests are refused")
    return None


# ---------------------------------------------------------------------- errors and docs

_STATUS_OF: list[tuple[type[SimsearchError], int]] = [
    (ItemNotFoundError, 404),
    (InvalidImageError, 422),
    (ConfigError, 422),
    (UnavailableError, 503),
]
_INDEX_ERRORS = (IndexCorruptError, IndexNotFoundError, IncompatibleIndexError)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str


def _errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (all carry an ErrorBody)."""
    return {status: {"model": ErrorBody, "description": d} for status, d in descriptions.items()}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split()) or "error"}, status, headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes {"error": "..."}; FastAPI's {"detail": ...} never leaks, and a 500's
    body never carries the exception's text (it may name server paths): that goes to the log."""

    @app.exception_handler(SimsearchError)
    async def simsearch_error(request: Request, exc: SimsearchError) -> JSONResponse:
        status = next((s for cls, s in _STATUS_OF if isinstance(exc, cls)), 500)
        if status == 503:
            return _error(status, str(exc), {"Retry-After": "1"})
        if status != 500:
            return _error(status, str(exc))
        log.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, _INDEX_ERRORS):
            return _error(500, "the index could not be read (details in the server log)")
        return _error(500, "internal server error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in {"query", "path"})
            got = f" (got {err['input']!r})" if "input" in err else ""
            parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal server error")


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, with assets from the fastapi-offline package.

    Without that package (installed by the ``serve`` extra) the pages would need a CDN, so they
    are left out; /openapi.json always works.
    """
    try:
        import fastapi_offline
    except ImportError:  # pragma: no cover - the serve extra installs it
        log.warning("fastapi-offline is not installed: no /docs page (see /openapi.json)")
        return
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="simsearch API",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json",
            title="simsearch API",
            redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg",
            with_google_fonts=False,
        )
