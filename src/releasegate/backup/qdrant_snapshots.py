"""Qdrant snapshots over HTTP (a server): downloaded while hashed, uploaded to recover."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from releasegate.backup.base import CHUNK
from releasegate.errors import CheckFailed, InfraError, StateError
from releasegate.stores.qdrant import QdrantStore


def _http(store: QdrantStore) -> httpx.Client:
    if store.url is None:
        raise StateError(
            "the snapshot method needs a Qdrant server (set the qdrant.url_env variable)"
        )
    headers = {"api-key": store.api_key} if store.api_key else {}
    timeout = httpx.Timeout(store.timeout, read=max(store.timeout, 300.0))
    return httpx.Client(base_url=store.url.rstrip("/"), headers=headers, timeout=timeout)


def download_snapshot(store: QdrantStore, collection: str, path: Path) -> dict[str, Any]:
    """Create a snapshot of ``collection``, stream it to ``path``, delete it on the server."""
    try:
        snapshot = store.client.create_snapshot(collection_name=collection, wait=True)
    except Exception as exc:
        raise store.fail(f"creating a snapshot of {collection}", exc) from None
    if snapshot is None:
        raise InfraError(f"Qdrant ({store.target}) returned no snapshot for {collection}")
    digest = hashlib.sha256()
    try:
        with (
            _http(store) as http,
            http.stream(
                "GET", f"/collections/{quote(collection)}/snapshots/{quote(snapshot.name)}"
            ) as response,
        ):
            if response.status_code != 200:
                raise InfraError(
                    f"Qdrant ({store.target}): downloading snapshot {snapshot.name} of"
                    f" {collection} answered HTTP {response.status_code}"
                )
            with path.open("wb") as handle:
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
    except httpx.HTTPError as exc:
        raise store.fail(f"downloading snapshot {snapshot.name} of {collection}", exc) from None
    finally:
        try:
            store.client.delete_snapshot(collection, snapshot.name, wait=True)
        except Exception as exc:
            raise store.fail(f"deleting snapshot {snapshot.name} of {collection}", exc) from None
    checksum = digest.hexdigest()
    if snapshot.checksum and snapshot.checksum != checksum:
        raise CheckFailed(
            f"snapshot {snapshot.name} of {collection}: Qdrant reports sha256 {snapshot.checksum},"
            f" the download has {checksum}"
        )
    return {"name": snapshot.name, "size": path.stat().st_size, "sha256": checksum}


def upload_snapshot(store: QdrantStore, path: Path, collection: str, sha256: str) -> None:
    """Recover ``collection`` (created or overwritten) from a snapshot file."""
    try:
        with _http(store) as http, path.open("rb") as handle:
            response = http.post(
                f"/collections/{quote(collection)}/snapshots/upload",
                params={"wait": "true", "priority": "snapshot", "checksum": sha256},
                files={"snapshot": (path.name, handle, "application/octet-stream")},
                timeout=httpx.Timeout(store.timeout, read=None, write=None),
            )
    except httpx.HTTPError as exc:
        raise store.fail(f"uploading {path.name} into {collection}", exc) from None
    if response.status_code != 200:
        raise InfraError(
            f"Qdrant ({store.target}): uploading {path.name} into {collection} answered"
            f" HTTP {response.status_code}: {response.text[:200]}"
        )
