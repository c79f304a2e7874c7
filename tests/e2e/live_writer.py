"""A live-writer check: real users writing and reading through the router during a release.

:class:`LiveWriters` runs, while a release (or a rollback) happens, what a service's users
do, through the router and the example service's own API:

- a **document writer** creates documents (``POST /documents``: a Postgres row) and a
  **session writer** creates sessions (``POST /sessions``: a Redis key), each at a steady
  rate. Every write the service acknowledged (HTTP 201) is recorded with its content;
- a **reader** keeps reading what existed before the release: documents by id (their
  title and body must never change) and sessions (reading one refreshes its
  ``last_seen``, as a user's request does, so the pre-release sessions are written to all
  along).

Every answer is recorded with the color that served it (the router's
``X-Releasegate-Color`` header). :meth:`LiveWriters.stop` ends the load and
:meth:`LiveWriters.check` reads every acknowledged write back through the router and
compares its content: a write lost, changed or answered with another write's content
(an id handed out twice) is a failure. The load is bounded in time and requests, and
goes only to the router on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import redis

COLOR_HEADER = "X-Releasegate-Color"
MAX_SECONDS = 900  # a hard stop, whatever the caller forgets


@dataclass(frozen=True)
class Answer:
    at: float
    kind: str  # "document" | "session" | "read document" | "read session"
    color: str | None  # None: no answer (connection error, timeout)
    status: int  # 0: no answer


@dataclass
class LiveReport:
    """What :meth:`LiveWriters.check` found."""

    acknowledged: dict[str, int]
    lost: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    reused_ids: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def writes_per_s(self) -> float:
        return sum(self.acknowledged.values()) / self.seconds if self.seconds else 0.0

    def failed_answers(self, exclude: Callable[[Answer], bool] = lambda _a: False) -> Counter[str]:
        """Non-2xx answers and requests with no answer, by ``color:status``."""
        failed: Counter[str] = Counter()
        for answer in self.answers:
            if (answer.status == 0 or answer.status >= 300) and not exclude(answer):
                failed[f"{answer.color}:{answer.status}"] += 1
        return failed

    def served_by(self) -> Counter[str]:
        return Counter(str(a.color) for a in self.answers)

    def summary(self) -> str:
        return (
            f"acknowledged {self.acknowledged} in {self.seconds:.1f}s"
            f" ({self.writes_per_s:.1f} writes/s); lost {len(self.lost)}, changed"
            f" {len(self.changed)}, reused ids {len(self.reused_ids)}, stale reads"
            f" {len(self.stale_reads)}; failed answers {dict(self.failed_answers())};"
            f" served by {dict(self.served_by())}"
        )


def _session_fields(data: dict[str, Any]) -> tuple[Any, Any]:
    """(user id, user agent) of a session in either spelling (v1 camelCase, v2 snake)."""
    return (
        data.get("user_id", data.get("userId")),
        data.get("user_agent", data.get("userAgent")),
    )


class LiveWriters:
    """Writers and a reader through the router; see the module docs."""

    def __init__(
        self,
        router_url: str,
        pg_url: str,
        redis_url: str,
        *,
        writes_per_s: float = 20.0,
        reads_per_s: float = 10.0,
        max_user_id: int = 200,
        session_prefix: str = "sess:",
    ) -> None:
        self.router_url = router_url
        self.pg_url = pg_url
        self.redis_url = redis_url
        self.interval = 2.0 / writes_per_s  # two writers share the rate
        self.read_interval = 1.0 / reads_per_s
        self.max_user_id = max_user_id
        self.session_prefix = session_prefix
        self.tag = uuid.uuid4().hex[:8]
        self.documents: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self.stale_reads: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._stopped = 0.0
        self.old_documents: dict[int, tuple[str, str]] = {}
        self.old_sessions: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LiveWriters:
        self._load_existing()
        self._started = time.monotonic()
        for target in (self._write_documents, self._write_sessions, self._read_existing):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self._stopped = time.monotonic()

    def __enter__(self) -> LiveWriters:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _load_existing(self) -> None:
        """What existed before the release: the reader checks it never changes."""
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            rows = conn.execute("SELECT id, title, body FROM documents ORDER BY id LIMIT 200")
            self.old_documents = {int(r[0]): (str(r[1]), str(r[2])) for r in rows}
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = client.scan_iter(f"{self.session_prefix}*", count=500)
            self.old_sessions = [bytes(k).decode().split(":", 1)[1] for k in keys][:200]
        finally:
            client.close()

    def _record(self, kind: str, response: httpx.Response | None) -> None:
        color = None if response is None else response.headers.get(COLOR_HEADER)
        status = 0 if response is None else response.status_code
        with self._lock:
            self.answers.append(Answer(time.monotonic(), kind, color, status))

    def _paced(self, interval: float, action: Callable[[httpx.Client, int], None]) -> None:
        with httpx.Client(base_url=self.router_url, timeout=10) as client:
            n = 0
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() - self._started < MAX_SECONDS:
                action(client, n)
                n += 1
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _post(self, client: httpx.Client, kind: str, path: str, body: Any) -> Any:
        try:
            response = client.post(path, json=body)
        except httpx.HTTPError:
            self._record(kind, None)
            return None
        self._record(kind, response)
        return response.json() if response.status_code == 201 else None

    def _write_documents(self) -> None:
        def write(client: httpx.Client, n: int) -> None:
            body = {
                "owner_id": 1 + n % self.max_user_id,
                "title": f"live {self.tag} {n}",
                "body": f"written during the release by the live writer ({self.tag}/{n})",
            }
            data = self._post(client, "document", "/documents", body)
            if data is not None:
                with self._lock:
                    self.documents.append({"id": data["id"], **body})

        self._paced(self.interval, write)

    def _write_sessions(self) -> None:
        def write(client: httpx.Client, n: int) -> None:
            body = {"user_id": 1 + n % self.max_user_id, "user_agent": f"live {self.tag} {n}"}
            data = self._post(client, "session", "/sessions", body)
            if data is not None:
                with self._lock:
                    self.sessions.append({"id": data["id"], **body})

        self._paced(self.interval, write)

    def _read_existing(self) -> None:
        documents = sorted(self.old_documents)
        sessions = self.old_sessions

        def read(client: httpx.Client, n: int) -> None:
            if documents:
                doc_id = documents[n % len(documents)]
                response = self._get(client, "read document", f"/documents/{doc_id}")
                if response is not None and response.status_code == 200:
                    data = response.json()
                    if (data["title"], data["body"]) != self.old_documents[doc_id]:
                        self.stale_reads.append(f"document {doc_id}: {data['title']!r}")
            if sessions:
                self._get(client, "read session", f"/sessions/{sessions[n % len(sessions)]}")

        self._paced(self.read_interval, read)

    def _get(self, client: httpx.Client, kind: str, path: str) -> httpx.Response | None:
        try:
            response = client.get(path)
        except httpx.HTTPError:
            self._record(kind, None)
            return None
        self._record(kind, response)
        return response

    # -- the check -------------------------------------------------------------------------

    def check(self) -> LiveReport:
        """Read every acknowledged write back through the router and compare it."""
        if not self._stop.is_set():
            self.stop()
        report = LiveReport(
            acknowledged={"documents": len(self.documents), "sessions": len(self.sessions)},
            answers=list(self.answers),
            stale_reads=list(self.stale_reads),
            seconds=self._stopped - self._started,
        )
        ids = Counter(d["id"] for d in self.documents)
        report.reused_ids = [
            f"document {i} acknowledged {n} times" for i, n in ids.items() if n > 1
        ]
        with httpx.Client(base_url=self.router_url, timeout=10) as client:
            for doc in self.documents:
                response = client.get(f"/documents/{doc['id']}")
                if response.status_code == 404:
                    report.lost.append(f"document {doc['id']} ({doc['title']})")
                elif response.status_code != 200:
                    report.lost.append(f"document {doc['id']}: HTTP {response.status_code}")
                else:
                    data = response.json()
                    got = (data["owner_id"], data["title"], data["body"])
                    if got != (doc["owner_id"], doc["title"], doc["body"]):
                        report.changed.append(f"document {doc['id']}: {got!r}")
            for session in self.sessions:
                response = client.get(f"/sessions/{session['id']}")
                if response.status_code == 404:
                    report.lost.append(f"session {session['id']} ({session['user_agent']})")
                elif response.status_code != 200:
                    report.lost.append(f"session {session['id']}: HTTP {response.status_code}")
                elif _session_fields(response.json()) != (
                    session["user_id"],
                    session["user_agent"],
                ):
                    report.changed.append(f"session {session['id']}: {response.json()!r}")
        return report
