"""The HTTP service: a FastAPI app over one read-only ``SearchIndex``, and the ``serve`` runner.

Endpoints::

    GET  /                        the web page (simsearch/static/, no external assets)
    POST /api/search?k=10         multipart field ``image`` (or a raw image body)
                                  -> {"query", "results": [Hit, ...], "query_image", "k", "took_ms"}
    GET  /api/items/random        a random catalog item: {"id", "label", "label_name", ...}
    GET  /api/items/{id}/image    the catalog item as PNG (ids contain slashes)
    GET  /api/health              {"status": "ok", "count": N, ...}
    GET  /docs, /redoc            API documentation (assets served locally), /openapi.json

Every error is JSON ``{"error": "<one line>"}``: 400 a malformed request (not multipart, no
``image`` field), 413 an upload over the limit, 422 an image that cannot be used or a parameter
out of range, 404 an unknown item or path, 500 a bug (logged; the server keeps serving).

Concurrency: the index is loaded once per worker process and only read while serving; when its
directory changes (``simsearch add``/``remove``/``build-index --force``), the new version is
loaded by the first request that notices it and swapped in once complete (other requests go on
with the previous version meanwhile; a version that fails to load is logged and skipped).
Uploads are read on the event loop with a byte counter (never more than the limit is
buffered); decoding, embedding and searching run in worker threads, at most ``search_threads``
at a time, so a slow or hostile upload cannot block the event loop or starve memory.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from simsearch import __version__
from simsearch.errors import (
    ConfigError,
    InvalidImageError,
    ItemNotFoundError,
    SimsearchError,
)
from simsearch.live import LiveIndex
from simsearch.search_index import SearchIndex, default_index_dir

if TYPE_CHECKING:
    from simsearch.hit import Hit

MIB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 16 * MIB
MAX_K = 1000
# Room for the multipart envelope (boundaries, part headers) around an image of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024
STATIC_DIR = Path(__file__).parent / "static"
# Environment read by `app_from_env` (the per-worker factory used with --workers > 1).
ENV_MAX_UPLOAD = "SIMSEARCH_MAX_UPLOAD_BYTES"

log = logging.getLogger("simsearch.server")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class UploadTooLargeError(Exception):
    """The request body grew past the limit while it was being read."""


def create_app(
    index: SearchIndex | str | os.PathLike[str],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    search_threads: int | None = None,
    reload_every: float = 1.0,
) -> FastAPI:
    """The FastAPI application serving ``index`` (a loaded index or an index directory).

    ``max_upload_bytes`` bounds the uploaded image (413 above it); ``search_threads`` bounds how
    many uploads are decoded and searched at once (default: the number of CPUs, at least 2);
    ``reload_every`` is how often (seconds, at most) the index directory is checked for changes.
    Raises the index's load errors (IndexNotFoundError, IndexCorruptError, ...).
    """
    if max_upload_bytes < 1:
        raise ConfigError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if not isinstance(index, SearchIndex):
        index = SearchIndex.load(index)
    # Follows add/remove/rebuilds of the directory: a changed manifest is reloaded (checked at
    # most once a second); requests keep the previous index until the new one has loaded.
    live = LiveIndex(index, check_every=reload_every)
    limiter = anyio.CapacityLimiter(search_threads or max(2, os.cpu_count() or 2))

    app = FastAPI(
        title="simsearch",
        version=__version__,
        summary="Image similarity search over autoencoder embeddings (Keras + FAISS).",
        docs_url=None,  # replaced below by pages that load their assets from this server
        redoc_url=None,
    )
    app.state.index = index  # as loaded at start
    app.state.live = live
    _add_error_handlers(app)
    _add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health", summary="Liveness and index size")
    def health() -> dict[str, Any]:
        search_index = live.current()
        return {
            "status": "ok",
            "count": len(search_index),
            "dim": search_index.dim,
            "model": search_index.manifest.get("model", {}).get("model"),
            "max_upload_bytes": max_upload_bytes,
            "max_k": MAX_K,
            "item_images": search_index.has_item_images,
        }

    @app.post(
        "/api/search",
        summary="Nearest catalog neighbours of an uploaded image",
        openapi_extra={"requestBody": _SEARCH_BODY},
        responses=_errors(
            {
                400: "Not a multipart upload with an `image` field",
                413: "Image larger than the upload limit",
                422: "Not a usable image, or k out of range",
            }
        ),
    )
    async def search(
        request: Request,
        k: int = Query(10, ge=1, le=MAX_K, description="Number of neighbours."),
    ) -> dict[str, Any]:
        name, data = await _read_image_upload(request, max_upload_bytes)
        started = time.perf_counter()
        pixels, hits = await anyio.to_thread.run_sync(
            lambda: _search(live.current(), data, name, k), limiter=limiter
        )
        return {
            "query": name,
            "results": [_hit_json(hit) for hit in hits],
            "query_image": _png_data_url(pixels),
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
        png = live.current().item_png(item_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each worker process loads the index once).

    Reads ``SIMSEARCH_INDEX_DIR`` (default ``indexes/fashion-mnist``) and
    ``SIMSEARCH_MAX_UPLOAD_BYTES`` (default 16 MiB).
    """
    raw = os.environ.get(ENV_MAX_UPLOAD) or str(DEFAULT_MAX_UPLOAD_BYTES)
    try:
        max_upload_bytes = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MAX_UPLOAD} must be an integer, got {raw!r}") from None
    return create_app(default_index_dir(), max_upload_bytes)


def serve(
    index_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    log_level: str = "info",
) -> None:
    """Serve the index at ``index_dir`` with uvicorn until interrupted.

    The index is loaded (and checked) here first, so a missing or corrupt index fails before the
    port is bound. With ``workers > 1`` each worker process loads its own copy through
    :func:`app_from_env`.
    """
    import uvicorn

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    app = create_app(index_dir, max_upload_bytes)
    count = len(app.state.index)
    print(
        f"serving {count:,} items from {index_dir} at http://{host}:{port}/ (API docs: /docs)",
        file=sys.stderr,
    )
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    del app
    os.environ["SIMSEARCH_INDEX_DIR"] = str(Path(index_dir).resolve())
    os.environ[ENV_MAX_UPLOAD] = str(max_upload_bytes)
    uvicorn.run(
        "simsearch.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


# ---------------------------------------------------------------------- search


def _search(index: SearchIndex, data: bytes, name: str, k: int) -> tuple[np.ndarray, list[Hit]]:
    """Decode + preprocess + search (runs in a worker thread)."""
    from simsearch.images import preprocess

    try:
        pixels = preprocess(data)
    except InvalidImageError as exc:
        message = str(exc).removeprefix("image data: ")  # preprocess's name for bytes
        raise InvalidImageError(f"{name}: {message}") from None
    return pixels, index.query_pixels(pixels[None], k)[0]


def _hit_json(hit: Hit) -> dict[str, Any]:
    """A hit exactly as ``simsearch query --json`` prints it (same fields, order and rounding)."""
    return hit.to_dict() | {
        "similarity": round(hit.similarity, 6),
        "distance": round(hit.distance, 6),
    }


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


async def _read_image_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The uploaded image's (name, bytes), read with a byte limit.

    A multipart body must carry the image in the field ``image``; any other content type is taken
    as the raw image. Raises HTTPException 400 (malformed request) or 413 (over ``max_bytes``).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if content_type in {"application/x-www-form-urlencoded", "application/json", "text/plain"}:
        raise HTTPException(400, "send the image as multipart/form-data (field 'image')")
    body_limit = max_bytes + MULTIPART_OVERHEAD if multipart else max_bytes
    too_large = HTTPException(413, f"upload larger than the {_size(max_bytes)} limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise too_large
    limited = Request(request.scope, receive=_limited_receive(request.receive, body_limit))
    try:
        if not multipart:
            return "upload", await limited.body()
        form = await limited.form(max_files=1, max_fields=8)
    except UploadTooLargeError:
        raise too_large from None
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected during the upload") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "no file in the multipart field 'image'")
        if upload.size is not None and upload.size > max_bytes:
            raise too_large
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large
        return upload.filename or "upload", data
    finally:
        await form.close()


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so that reading more than ``limit`` body bytes raises."""
    seen = 0

    async def limited() -> MutableMapping[str, Any]:
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


# ---------------------------------------------------------------------- errors and docs

_STATUS_OF: list[tuple[type[SimsearchError], int]] = [
    (ItemNotFoundError, 404),
    (InvalidImageError, 422),
    (ConfigError, 422),
]


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str


def _errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (all carry an ErrorBody)."""
    return {status: {"model": ErrorBody, "description": d} for status, d in descriptions.items()}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split()) or "error"}, status, headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes {"error": "..."}; FastAPI's {"detail": ...} never leaks."""

    @app.exception_handler(SimsearchError)
    async def simsearch_error(request: Request, exc: SimsearchError) -> JSONResponse:
        status = next((s for cls, s in _STATUS_OF if isinstance(exc, cls)), 500)
        if status == 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, str(exc))

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
