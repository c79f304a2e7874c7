"""Load profile of the example notes service, used by ``releasegate gate``.

Each simulated user sends about two requests a second (``constant_throughput``), so the
load is ``users x 2`` requests/s whatever the latency. Requests are named after the
endpoint ("GET /documents", "GET /documents/{id}", ...) so thresholds can target one:

    [slo.thresholds]
    "GET /documents" = ["p95 < 200ms"]

Tasks that write are tagged ``write``: ``[slo] exclude_tags = ["write"]`` leaves them out
where the gate must not write (rules on their request names, such as "POST /sessions",
then see no request and are inconclusive: drop them there). Every request carries
releasegate's synthetic marker (``X-Releasegate-Synthetic``), so what the writes create
can be cleaned up afterwards; releasegate's Locust plugin adds it, not this file.

``NOTES_LOAD_MAX_ID`` bounds the user and document ids picked at random (default 1000;
the demo seeds 5000 users with one document each).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant_throughput, tag, task

MAX_ID = int(os.environ.get("NOTES_LOAD_MAX_ID", "1000"))
REQUESTS_PER_USER_S = float(os.environ.get("NOTES_LOAD_RPS_PER_USER", "2"))


class NotesUser(FastHttpUser):
    """A reader who lists and opens documents and now and then opens a session."""

    wait_time = constant_throughput(REQUESTS_PER_USER_S)

    @task(5)
    def list_documents(self) -> None:
        owner = random.randint(1, MAX_ID)
        self.client.get(f"/documents?owner_id={owner}", name="GET /documents")

    @task(3)
    def get_document(self) -> None:
        self.client.get(f"/documents/{random.randint(1, MAX_ID)}", name="GET /documents/{id}")

    @tag("write")
    @task(1)
    def session_round_trip(self) -> None:
        body = {"user_id": random.randint(1, MAX_ID), "user_agent": "releasegate-load"}
        with self.client.post(
            "/sessions", json=body, name="POST /sessions", catch_response=True
        ) as response:
            session_id = response.json().get("id") if response.status_code == 201 else None
            if not session_id:
                response.failure(f"no session created (HTTP {response.status_code})")
                return
        self.client.get(f"/sessions/{session_id}", name="GET /sessions/{id}")

    @task(1)
    def healthz(self) -> None:
        self.client.get("/healthz", name="GET /healthz")
