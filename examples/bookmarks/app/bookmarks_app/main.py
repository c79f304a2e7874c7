"""The bookmarks HTTP API over Postgres and Redis.

``create_app(settings)`` builds the FastAPI application; ``python -m bookmarks_app`` serves
it with uvicorn. One code base, three variants (``BOOKMARKS_VARIANT``):

- ``v1`` keeps a bookmark's text in ``note`` (schema 0001; it runs on 0002 too, which
  only adds a column it never reads);
- ``v2`` uses ``description`` (0002): it writes description, and note too while the
  column exists, and reads ``coalesce(description, note)``, so v1 and v2 see each
  other's bookmarks while both run on 0002, and v2 keeps working once 0003 drops note;
- ``v3-bad`` is v2 with a regression only load reveals: ``GET /bookmarks`` is 400 ms
  slower and answers HTTP 500 to about 30 % of requests, while ``/healthz`` and
  ``/readyz`` pass.

The number of bookmarks (``total`` of ``GET /bookmarks``) is cached in Redis under
``bm:cache:count``; ``POST /bookmarks`` deletes it. Endpoints: ``/healthz`` (liveness,
touches nothing), ``/readyz`` (stores reachable, database at a revision the variant
runs on), ``/version``, ``/bookmarks``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import redis.asyncio as aioredis
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from bookmarks_app.settings import Settings, VariantSpec

CHECK_TIMEOUT_S = 2.0
COUNT_KEY = "bm:cache:count"
LIST_PATH = "/bookmarks"

# v1 reads note; v2 reads the row as JSON, so one query serves both 0002 (note and
# description) and 0003 (description only): a missing column is a missing key.
_SELECT = {
    "note": "SELECT b.id, b.url, b.note, b.created_at FROM bookmarks b",
    "description": (
        "SELECT b.id, b.url, coalesce(j ->> 'description', j ->> 'note') AS description,"
        " b.created_at FROM bookmarks b CROSS JOIN LATERAL to_jsonb(b) AS j"
    ),
}
_HAS_NOTE = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('bookmarks')"
    " AND attname = 'note' AND NOT attisdropped)"
)


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


class BookmarkIn(BaseModel):
    url: str = Field(min_length=1, max_length=2000)
    # Either field is accepted by every variant: clients written for v1 send note.
    description: str | None = Field(default=None, max_length=10_000)
    note: str | None = Field(default=None, max_length=10_000)

    @property
    def text(self) -> str | None:
        return self.description if self.description is not None else self.note


class Stores:
    """The clients of one running app, created at start-up and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.db = ConnectionPool(
            settings.database_url, settings.db_pool, f"bookmarks/{settings.variant.name}"
        )
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=3, socket_connect_timeout=3
        )

    async def close(self) -> None:
        await self.db.close()
        await self.redis.aclose()


def _stores(request: Request) -> Stores:
    stores: Stores = request.app.state.stores
    return stores


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": row["created_at"].isoformat()}


async def _insert(
    conn: psycopg.AsyncConnection[Any], variant: VariantSpec, body: BookmarkIn
) -> dict[str, Any]:
    columns = {"url": body.url, variant.text_field: body.text}
    if variant.text_field == "description":
        # Fill note as long as it exists: v1, still live on 0002, reads only note.
        has_note = await (await conn.execute(_HAS_NOTE)).fetchone()
        if has_note is not None and has_note[0]:
            columns["note"] = body.text
    names = ", ".join(columns)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO bookmarks ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
            f" RETURNING id, url, {variant.text_field}, created_at",
            list(columns.values()),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def _check_postgres(stores: Stores, variant: VariantSpec) -> dict[str, Any]:
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


async def _run_check(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_S:g}s"}
    except (psycopg.Error, RedisError, OSError) as exc:
        message = str(exc).strip().splitlines()
        return {"ok": False, "error": f"{type(exc).__name__}: {message[-1] if message else ''}"}


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
    app = FastAPI(title="bookmarks", version=variant.name, lifespan=lifespan)
    select = _SELECT[variant.text_field]

    if variant.regression:
        rng = random.Random()

        @app.middleware("http")
        async def regression(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if request.method == "GET" and request.url.path == LIST_PATH:
                await asyncio.sleep(settings.bad_latency_s)
                if rng.random() < settings.bad_error_rate:
                    return JSONResponse({"detail": "internal error"}, status_code=500)
            return await call_next(request)

    @app.exception_handler(psycopg.OperationalError)
    async def postgres_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "postgres unavailable"}, status_code=503)

    @app.exception_handler(psycopg.Error)
    async def postgres_error(request: Request, exc: Exception) -> JSONResponse:
        # E.g. a column this variant uses is missing: the schema is not one it runs on.
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
        postgres, redis_check = await asyncio.gather(
            _run_check(_check_postgres(stores, variant)), _run_check(_check_redis(stores))
        )
        ready = postgres["ok"] and redis_check["ok"]
        return JSONResponse(
            {
                "status": "ready" if ready else "not ready",
                "variant": variant.name,
                "checks": {"postgres": postgres, "redis": redis_check},
            },
            status_code=200 if ready else 503,
        )

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {
            "service": "bookmarks",
            "variant": variant.name,
            "git_sha": settings.git_sha,
            "expected_revision": variant.expected_revision,
            "compatible_revisions": list(variant.compatible_revisions),
            "text_field": variant.text_field,
        }

    @app.get(LIST_PATH)
    async def list_bookmarks(
        request: Request, response: Response, limit: int = Query(default=20, ge=1, le=100)
    ) -> dict[str, Any]:
        stores = _stores(request)
        async with stores.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"{select} ORDER BY b.id DESC LIMIT %s", (limit,))
            rows = await cur.fetchall()
            cached = await stores.redis.get(COUNT_KEY)
            if cached is None:
                await cur.execute("SELECT count(*) AS n FROM bookmarks")
                counted = await cur.fetchone()
                total = int(counted["n"]) if counted else 0
                await stores.redis.set(COUNT_KEY, total, ex=settings.cache_ttl)
            else:
                total = int(cached)
        response.headers["X-Cache"] = "miss" if cached is None else "hit"
        return {"total": total, "items": [_public(row) for row in rows]}

    @app.get(LIST_PATH + "/{bookmark_id}", response_model=None)
    async def get_bookmark(request: Request, bookmark_id: int) -> dict[str, Any] | JSONResponse:
        async with (
            _stores(request).db.connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(f"{select} WHERE b.id = %s", (bookmark_id,))
            row = await cur.fetchone()
        if row is None:
            return JSONResponse({"detail": "bookmark not found"}, status_code=404)
        return _public(row)

    @app.post(LIST_PATH, status_code=201)
    async def create_bookmark(request: Request, body: BookmarkIn) -> dict[str, Any]:
        stores = _stores(request)
        async with stores.db.connection() as conn:
            try:
                row = await _insert(conn, variant, body)
            except psycopg.errors.UndefinedColumn:
                if variant.text_field == "note":
                    raise
                # 0003 dropped note between v2's check and its insert: check again.
                row = await _insert(conn, variant, body)
        await stores.redis.delete(COUNT_KEY)
        return _public(row)

    return app
