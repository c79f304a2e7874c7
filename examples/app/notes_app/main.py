"""The example "notes" HTTP API over Postgres, Redis and (optionally) Qdrant.

``create_app(settings)`` builds the FastAPI application; ``python -m notes_app`` serves it
with uvicorn. One code base, three variants (``NOTES_VARIANT``):

- ``v1`` shows documents with ``users.full_name`` and keeps sessions under ``sess:{id}``
  as camelCase JSON;
- ``v2`` uses ``users.display_name`` and ``session:{id}`` snake_case JSON;
- ``v3-bad`` is v2 with a regression only load reveals: +250 ms on ``GET /documents``
  and about 5 % HTTP 500s on the API endpoints, while ``/healthz`` and ``/readyz`` pass;
- ``v2-watch-bad`` is v2 with a defect only traffic after the promotion reveals. It takes
  the ``Host`` of the first API request it serves as its own address, and answers HTTP
  500 to a share (``NOTES_WATCH_BAD_ERROR_RATE``, default every other one) of the API
  requests that arrive under another ``Host`` (through the router) or without the
  synthetic marker (real users). A release talks to a new color directly first, with
  marked requests (smoke checks, SLO gate), and only then through the router (the
  watch), so the gate passes and the watch fails, every time. ``NOTES_FAIL_AFTER=N``
  makes it fail the same way after its first N API requests too (default 0: never).
  The failing requests are chosen by count, not at random (see :class:`WatchRegression`).

**Synthetic traffic.** A request with an ``X-Releasegate-Synthetic: <marker>`` header (what
releasegate's smoke checks, SLO gate and watch send) marks what it writes: the
``audit_log`` row of a new document gets ``"synthetic": "<marker>"`` in its detail and a
new session gets a ``synthetic`` field (which migrations/redis/0001 keeps both ways).
``python -m notes_app.cleanup_synthetic`` deletes exactly that data. A marker that is not
1-64 characters among letters, digits and ``. _ : -`` is refused with HTTP 400.

Endpoints: ``/healthz`` (liveness, touches nothing), ``/readyz`` (stores reachable and the
database at a revision the variant supports), ``/version``, ``/documents``,
``/sessions``, ``/search``.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import psycopg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from notes_app import synthetic
from notes_app.settings import Settings, VariantSpec

CHECK_TIMEOUT_S = 2.0
API_PREFIXES = ("/documents", "/sessions", "/search")


def synthetic_marker(request: Request) -> str | None:
    """The request's synthetic marker; None for real traffic, HTTP 400 when malformed."""
    marker = request.headers.get(synthetic.HEADER)
    if marker is None:
        return None
    if not synthetic.MARKER_RE.match(marker):
        raise HTTPException(400, f"malformed {synthetic.HEADER} header")
    return marker


class WatchRegression:
    """The defect of ``v2-watch-bad``: which API requests fail.

    The first API request's ``Host`` is pinned. A request fails when it is *triggered*
    (another ``Host``, no synthetic marker, or more than ``fail_after`` API requests
    served when that is set) and the running count of triggered requests times
    ``error_rate`` crosses an integer: at 0.5 every other triggered request fails, at 1
    all of them.
    """

    def __init__(self, error_rate: float, fail_after: int = 0) -> None:
        self.error_rate = error_rate
        self.fail_after = fail_after
        self.pinned_host: str | None = None
        self.served = 0
        self.triggered = 0

    def fails(self, host: str, marked: bool) -> bool:
        """Count one API request under ``host``; True when it must answer 500."""
        self.served += 1
        if self.pinned_host is None:
            self.pinned_host = host
        over = self.fail_after > 0 and self.served > self.fail_after
        if host == self.pinned_host and marked and not over:
            return False
        self.triggered += 1
        before = int((self.triggered - 1) * self.error_rate)
        return int(self.triggered * self.error_rate) > before


class ConnectionPool:
    """A small pool of async Postgres connections, opened on demand.

    The service must start (and answer ``/healthz``) while Postgres is down, so nothing
    connects before the first request; a broken connection is dropped, not reused.
    """

    def __init__(self, url: str, size: int, application_name: str) -> None:
        self._url = url
        self._application_name = application_name
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=3,
                    application_name=self._application_name,
                    options="-c statement_timeout=5000",
                )
            reusable = False
            try:
                yield conn
                reusable = True
            finally:
                if (
                    reusable
                    and not conn.closed
                    and conn.info.transaction_status == TransactionStatus.IDLE
                ):
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


class DocumentIn(BaseModel):
    owner_id: int = Field(ge=1)
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(default="", max_length=100_000)


class SessionIn(BaseModel):
    user_id: int = Field(ge=1)
    user_agent: str | None = Field(default=None, max_length=500)
    # Stored by v2 only: the v1 layout has no theme.
    theme: Literal["light", "dark"] = "light"


class Stores:
    """The clients of one running app, created at start-up and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = ConnectionPool(
            settings.database_url, settings.db_pool, f"notes/{settings.variant.name}"
        )
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=3, socket_connect_timeout=3
        )
        self.http = httpx.AsyncClient(timeout=5.0)

    async def close(self) -> None:
        await self.db.close()
        await self.redis.aclose()
        await self.http.aclose()


def _stores(request: Request) -> Stores:
    stores: Stores = request.app.state.stores
    return stores


# -- sessions in the variant's Redis layout -------------------------------------------
# v1: sess:{uuid} -> {"userId", "createdAt", "lastSeen", "userAgent"} (camelCase, no theme)
# v2: session:{uuid} -> {"user_id", "created_at", "last_seen", "user_agent", "theme"}
# Times are ISO 8601 strings. migrations/redis/0001 moves v1 sessions to the v2 layout.

_CAMEL = {
    "user_id": "userId",
    "created_at": "createdAt",
    "last_seen": "lastSeen",
    "user_agent": "userAgent",
}


def session_key(variant: VariantSpec, session_id: str) -> str:
    return f"{variant.session_prefix}{session_id}"


def encode_session(variant: VariantSpec, fields: dict[str, Any]) -> str:
    """The stored JSON of a session: snake_case fields (v2) or camelCase (v1).

    The synthetic marker keeps its name in both layouts.
    """
    if variant.session_style == "camel":
        fields = {
            _CAMEL.get(name, name): value
            for name, value in fields.items()
            if name in _CAMEL or name == synthetic.FIELD
        }
    return json.dumps(fields, separators=(",", ":"))


def _touch(variant: VariantSpec, stored: dict[str, Any], now: str) -> dict[str, Any]:
    name = "lastSeen" if variant.session_style == "camel" else "last_seen"
    return {**stored, name: now}


# -- readiness ------------------------------------------------------------------------


async def _check_postgres(stores: Stores) -> dict[str, Any]:
    variant = stores.settings.variant
    async with stores.db.connection() as conn:
        exists = await (await conn.execute("SELECT to_regclass('alembic_version')")).fetchone()
        if not exists or exists[0] is None:
            return {"ok": False, "error": "database never migrated (no alembic_version)"}
        rows = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchall()
    revisions = sorted(row[0] for row in rows)
    ok = len(revisions) == 1 and revisions[0] in variant.compatible_revisions
    result: dict[str, Any] = {
        "ok": ok,
        "revision": ",".join(revisions) or None,
        "expected": variant.expected_revision,
    }
    if not ok:
        result["error"] = (
            f"database at {','.join(revisions) or 'base'}; {variant.name} runs on"
            f" {', '.join(variant.compatible_revisions)}"
        )
    return result


async def _check_redis(stores: Stores) -> dict[str, Any]:
    await stores.redis.ping()
    return {"ok": True}


async def _check_qdrant(stores: Stores) -> dict[str, Any]:
    return {
        "ok": True,
        "collection": stores.settings.qdrant_collection,
        "dim": await _collection_dim(stores),
    }


async def _run_check(check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_S:g}s"}
    except (psycopg.Error, RedisError, httpx.HTTPError, OSError) as exc:
        message = str(exc).strip().splitlines()
        return {"ok": False, "error": f"{type(exc).__name__}: {message[-1] if message else ''}"}


# -- the application ------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI application of one variant; stores are connected lazily."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.stores = Stores(settings)
        try:
            yield
        finally:
            await app.state.stores.close()

    variant = settings.variant
    app = FastAPI(title="notes", version=variant.name, lifespan=lifespan)
    cache_prefix = f"cache:{variant.name}:"

    if variant.regression:
        rng = random.Random()

        @app.middleware("http")
        async def regression(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            path = request.url.path
            if not path.startswith(API_PREFIXES):
                return await call_next(request)
            if request.method == "GET" and path.startswith("/documents"):
                await asyncio.sleep(settings.bad_latency_s)
            if rng.random() < settings.bad_error_rate:
                return JSONResponse({"detail": "internal error"}, status_code=500)
            return await call_next(request)

    if variant.watch_regression:
        defect = WatchRegression(settings.watch_bad_error_rate, settings.fail_after)

        @app.middleware("http")
        async def watch_regression(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if request.url.path.startswith(API_PREFIXES) and defect.fails(
                request.headers.get("host", ""), synthetic.HEADER in request.headers
            ):
                return JSONResponse({"detail": "internal error"}, status_code=500)
            return await call_next(request)

    @app.exception_handler(psycopg.OperationalError)
    async def postgres_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "postgres unavailable"}, status_code=503)

    @app.exception_handler(psycopg.Error)
    async def postgres_error(request: Request, exc: Exception) -> JSONResponse:
        # E.g. a column this variant reads is missing: the schema is not the one it expects.
        return JSONResponse({"detail": f"database error: {type(exc).__name__}"}, status_code=500)

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "redis unavailable"}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        stores = _stores(request)
        names = ["postgres", "redis"]
        checks = [
            _run_check(lambda: _check_postgres(stores)),
            _run_check(lambda: _check_redis(stores)),
        ]
        if settings.qdrant_enabled:
            names.append("qdrant")
            checks.append(_run_check(lambda: _check_qdrant(stores)))
        results = dict(zip(names, await asyncio.gather(*checks), strict=True))
        ready = all(result["ok"] for result in results.values())
        return JSONResponse(
            {
                "status": "ready" if ready else "not ready",
                "variant": variant.name,
                "checks": results,
            },
            status_code=200 if ready else 503,
        )

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {
            "service": "notes",
            "variant": variant.name,
            "git_sha": settings.git_sha,
            "expected_revision": variant.expected_revision,
            "compatible_revisions": list(variant.compatible_revisions),
            "session_key": f"{variant.session_prefix}{{id}}",
            "qdrant_dim": variant.qdrant_dim,
            "search": "qdrant" if settings.qdrant_enabled else "postgres",
        }

    # -- documents (Postgres, read-through Redis cache) --------------------------------

    async def cached(
        stores: Stores, key: str, load: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, bool]:
        raw = await stores.redis.get(key)
        if raw is not None:
            return json.loads(raw), True
        value = await load()
        if value is not None:
            await stores.redis.set(key, json.dumps(value, default=str), ex=settings.cache_ttl)
        return value, False

    @app.get("/documents")
    async def list_documents(
        request: Request,
        response: Response,
        owner_id: int | None = Query(default=None, ge=1),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> list[dict[str, Any]]:
        stores = _stores(request)

        async def load() -> list[dict[str, Any]]:
            async with stores.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT id, owner_id, title, created_at FROM documents"
                    " WHERE %(owner)s::bigint IS NULL OR owner_id = %(owner)s"
                    " ORDER BY id DESC LIMIT %(limit)s",
                    {"owner": owner_id, "limit": limit},
                )
                rows = await cur.fetchall()
            return [{**row, "created_at": row["created_at"].isoformat()} for row in rows]

        if owner_id is None:
            response.headers["X-Cache"] = "bypass"
            return await load()
        docs, hit = await cached(stores, f"{cache_prefix}docs:owner:{owner_id}:{limit}", load)
        response.headers["X-Cache"] = "hit" if hit else "miss"
        result: list[dict[str, Any]] = docs
        return result

    @app.get("/documents/{document_id}", response_model=None)
    async def get_document(
        request: Request, response: Response, document_id: int
    ) -> dict[str, Any] | JSONResponse:
        stores = _stores(request)

        async def load() -> dict[str, Any] | None:
            async with stores.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT d.id, d.owner_id, u.{variant.name_column} AS owner_name,"
                    " d.title, d.body, d.created_at"
                    " FROM documents d JOIN users u ON u.id = d.owner_id WHERE d.id = %s",
                    (document_id,),
                )
                row = await cur.fetchone()
            return None if row is None else {**row, "created_at": row["created_at"].isoformat()}

        doc, hit = await cached(stores, f"{cache_prefix}doc:{document_id}", load)
        if doc is None:
            return JSONResponse({"detail": "document not found"}, status_code=404)
        response.headers["X-Cache"] = "hit" if hit else "miss"
        result: dict[str, Any] = doc
        return result

    @app.post("/documents", status_code=201, response_model=None)
    async def create_document(
        request: Request, doc: DocumentIn, marker: str | None = Depends(synthetic_marker)
    ) -> dict[str, Any] | JSONResponse:
        stores = _stores(request)
        detail: dict[str, Any] = {"owner_id": doc.owner_id}
        if marker is not None:
            detail[synthetic.FIELD] = marker
        try:
            async with stores.db.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO documents (owner_id, title, body) VALUES (%s, %s, %s)"
                    " RETURNING id, created_at",
                    (doc.owner_id, doc.title, doc.body),
                )
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(
                    "INSERT INTO audit_log (actor, action, detail) VALUES (%s, %s, %s)",
                    (
                        f"notes/{variant.name}",
                        "document.create",
                        json.dumps({"document_id": row[0], **detail}),
                    ),
                )
        except psycopg.errors.ForeignKeyViolation:
            return JSONResponse({"detail": f"user {doc.owner_id} does not exist"}, status_code=422)
        # The owner's cached lists are stale now.
        stale = [
            key
            async for key in stores.redis.scan_iter(f"{cache_prefix}docs:owner:{doc.owner_id}:*")
        ]
        if stale:
            await stores.redis.delete(*stale)
        return {"id": row[0], **doc.model_dump(), "created_at": row[1].isoformat()}

    # -- sessions (Redis) -------------------------------------------------------------

    @app.post("/sessions", status_code=201)
    async def create_session(
        request: Request, body: SessionIn, marker: str | None = Depends(synthetic_marker)
    ) -> dict[str, Any]:
        stores = _stores(request)
        session_id = str(uuid.uuid4())
        now = datetime.now(UTC).isoformat()
        fields = {
            "user_id": body.user_id,
            "created_at": now,
            "last_seen": now,
            "user_agent": body.user_agent or request.headers.get("user-agent", ""),
            "theme": body.theme,
        }
        if marker is not None:
            fields[synthetic.FIELD] = marker
        stored = encode_session(variant, fields)
        await stores.redis.set(session_key(variant, session_id), stored, ex=settings.session_ttl)
        return {"id": session_id, **json.loads(stored)}

    @app.get("/sessions/{session_id}", response_model=None)
    async def get_session(request: Request, session_id: str) -> dict[str, Any] | JSONResponse:
        stores = _stores(request)
        key = session_key(variant, session_id)
        raw = await stores.redis.get(key)
        if raw is None:
            return JSONResponse({"detail": "session not found"}, status_code=404)
        data = _touch(variant, json.loads(raw), datetime.now(UTC).isoformat())
        await stores.redis.set(key, json.dumps(data, separators=(",", ":")), keepttl=True)
        return {"id": session_id, **data}

    # -- search (Qdrant, or Postgres text match when Qdrant is off) --------------------

    @app.get("/search")
    async def search(
        request: Request,
        q: str = Query(min_length=1, max_length=500),
        limit: int = Query(default=5, ge=1, le=50),
    ) -> dict[str, Any]:
        stores = _stores(request)
        if settings.qdrant_enabled:
            return {"engine": "qdrant", "results": await _search_qdrant(stores, q, limit)}
        async with stores.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT d.id AS document_id, d.title FROM documents d"
                " WHERE d.title ILIKE %(pattern)s OR EXISTS (SELECT 1 FROM document_chunks c"
                " WHERE c.document_id = d.id AND c.text ILIKE %(pattern)s)"
                " ORDER BY d.id DESC LIMIT %(limit)s",
                {"pattern": f"%{_like_escape(q)}%", "limit": limit},
            )
            rows = await cur.fetchall()
        return {"engine": "postgres", "results": rows}

    return app


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _collection_dim(stores: Stores) -> int:
    """Vector size of the searched collection (an alias follows its migrations)."""
    settings = stores.settings
    response = await stores.http.get(
        f"{settings.qdrant_url}/collections/{settings.qdrant_collection}"
    )
    response.raise_for_status()
    vectors = response.json()["result"]["config"]["params"]["vectors"]
    return int(vectors["size"])


async def _search_qdrant(stores: Stores, q: str, limit: int) -> list[dict[str, Any]]:
    """Documents whose title vectors are nearest to the query's (see seed_qdrant)."""
    from notes_app.embedding import embed

    settings = stores.settings
    dim = await _collection_dim(stores)
    response = await stores.http.post(
        f"{settings.qdrant_url}/collections/{settings.qdrant_collection}/points/search",
        json={"vector": embed(q, dim), "limit": limit, "with_payload": True},
    )
    response.raise_for_status()
    return [
        {
            "document_id": hit["payload"].get("document_id"),
            "title": hit["payload"].get("title"),
            "score": float(hit["score"]),
        }
        for hit in response.json()["result"]
    ]
