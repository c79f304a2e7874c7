"""Load profile of the bookmarks service, used by ``releasegate gate`` and the watch.

Each simulated user sends about two requests a second (``constant_throughput``).
Requests are named after the endpoint ("GET /bookmarks", "GET /bookmarks/{id}",
"POST /bookmarks"), the scopes of ``[slo.thresholds]``.

Mostly reads: one request in ten creates a bookmark (tag ``write``; ``[slo]
exclude_tags = ["write"]`` leaves them out). releasegate's Locust plugin marks every
request with ``X-Releasegate-Synthetic``; the bookmarks the load adds stay, and a
rollback's verification counts them as rows added since the backup, which it allows.

Bookmarks are opened by ids the user has seen: in the lists it fetched or the bookmarks
it created. Before it has seen one, it lists instead.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant_throughput, tag, task

REQUESTS_PER_USER_S = float(os.environ.get("BOOKMARKS_LOAD_RPS_PER_USER", "2"))
KNOWN_IDS_KEPT = 200


class BookmarksReader(FastHttpUser):
    """A reader who lists and opens bookmarks and now and then adds one."""

    wait_time = constant_throughput(REQUESTS_PER_USER_S)

    def on_start(self) -> None:
        self.known_ids: list[int] = []

    def _remember(self, ids: list[int]) -> None:
        self.known_ids = (self.known_ids + ids)[-KNOWN_IDS_KEPT:]

    @task(6)
    def list_bookmarks(self) -> None:
        response = self.client.get("/bookmarks?limit=20", name="GET /bookmarks")
        if response.status_code == 200:
            self._remember([item["id"] for item in response.json()["items"]])

    @task(3)
    def get_bookmark(self) -> None:
        if not self.known_ids:
            self.list_bookmarks()
            return
        bookmark_id = random.choice(self.known_ids)
        self.client.get(f"/bookmarks/{bookmark_id}", name="GET /bookmarks/{id}")

    @tag("write")
    @task(1)
    def add_bookmark(self) -> None:
        body = {
            "url": f"https://example.com/releasegate-load/{random.randrange(10**9)}",
            "description": "added by the load test",
        }
        response = self.client.post("/bookmarks", json=body, name="POST /bookmarks")
        if response.status_code == 201:
            self._remember([response.json()["id"]])
