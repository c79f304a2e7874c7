"""Qdrant: one client per command, on a server (URL + API key) or an embedded storage folder.

:func:`open_store` turns the ``[qdrant]`` settings into a :class:`QdrantStore`, which
wraps the ``QdrantClient`` together with where it points, and closes it on exit. A command
opens one store and passes it to every function it calls: an embedded storage folder
admits only one client at a time (qdrant-client takes a file lock on it).

The store also gives releasegate's modules a small common vocabulary:

- :class:`CollectionSpec`: a collection's vectors, sparse vectors and payload indexes, as
  plain data that can be written to a manifest and used to create the collection again;
- :class:`PointData`: one point (id, vectors, payload) as JSON-ready data;
- :meth:`QdrantStore.scroll_batches` and :meth:`QdrantStore.upsert`: streaming in batches.

Payload indexes in embedded mode: the embedded Qdrant accepts ``create_payload_index``
but neither uses nor reports the index (``payload_schema`` is always empty). So that a
collection's indexes survive a backup, a restore or a migration there too, the store
records the indexes it creates in ``releasegate-payload-indexes.json`` inside the storage
folder (guarded by the same file lock as the storage). On a server the indexes are read
from Qdrant itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import TypeAdapter
from qdrant_client import QdrantClient, models

from releasegate.config import Settings
from releasegate.errors import InfraError, ReleasegateError, StateError
from releasegate.secrets import mask_url, redact, register_secret, register_url

INDEX_REGISTRY = "releasegate-payload-indexes.json"

PointId: TypeAlias = int | str
# The unnamed vector is a list of floats; named vectors are a dict of name -> list of floats,
# list of lists (multivector) or {"indices": [...], "values": [...]} (sparse).
VectorData: TypeAlias = list[float] | dict[str, Any]
# A payload index: a schema type name ("integer") or index params ({"type": "integer", ...}).
IndexSchema: TypeAlias = str | dict[str, Any]

_PARAMS_ADAPTER: TypeAdapter[Any] = TypeAdapter(models.PayloadSchemaParams)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, secrets removed, for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return redact(text.splitlines()[0].strip())


# -- plain data ------------------------------------------------------------------------


@dataclass
class PointData:
    """One point as plain JSON-ready data: what backups write and migrations transform."""

    id: PointId
    vector: VectorData
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: models.Record) -> PointData:
        vector: VectorData
        raw = record.vector
        if raw is None:
            vector = {}
        elif isinstance(raw, dict):
            vector = {name: _vector_to_data(value) for name, value in raw.items()}
        else:
            vector = list(raw)  # type: ignore[arg-type]  # floats already (JSON or local)
        point_id = record.id if isinstance(record.id, int) else str(record.id)
        return cls(point_id, vector, dict(record.payload or {}))

    def to_struct(self) -> models.PointStruct:
        vector: Any
        if isinstance(self.vector, dict):
            vector = {
                name: models.SparseVector(**value) if isinstance(value, dict) else value
                for name, value in self.vector.items()
            }
        else:
            vector = self.vector
        return models.PointStruct(id=self.id, vector=vector, payload=self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "vector": self.vector, "payload": self.payload}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PointData:
        point_id = data["id"]
        vector = data.get("vector", {})
        payload = data.get("payload") or {}
        if not isinstance(point_id, int | str) or isinstance(point_id, bool):
            raise ValueError(f"point id {point_id!r} is neither an integer nor a UUID string")
        if not isinstance(vector, list | dict) or not isinstance(payload, dict):
            raise ValueError(f"point {point_id!r}: malformed vector or payload")
        return cls(point_id, vector, payload)


def _vector_to_data(value: Any) -> Any:
    if isinstance(value, models.SparseVector):
        return {"indices": list(value.indices), "values": [float(v) for v in value.values]}
    if value and isinstance(value[0], list):
        return [list(row) for row in value]
    return list(value)


def index_schema_to_data(schema: Any) -> IndexSchema:
    """A payload index schema (type or params model) as JSON-ready data."""
    if isinstance(schema, models.PayloadSchemaType):
        return schema.value
    if isinstance(schema, str):
        return models.PayloadSchemaType(schema).value
    if isinstance(schema, dict):
        schema = _PARAMS_ADAPTER.validate_python(schema)
    if hasattr(schema, "model_dump"):
        data: dict[str, Any] = schema.model_dump(mode="json", exclude_none=True)
        return data
    raise ValueError(f"not a payload index schema: {schema!r}")


def index_schema_from_data(data: IndexSchema) -> Any:
    """The qdrant-client model for :func:`index_schema_to_data`'s output."""
    if isinstance(data, str):
        return models.PayloadSchemaType(data)
    return _PARAMS_ADAPTER.validate_python(data)


def index_type(data: IndexSchema) -> str:
    """The data type of an index schema: ``"integer"`` for both forms."""
    return data if isinstance(data, str) else str(data.get("type"))


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection is made of: enough to create it again, as plain data.

    ``vectors`` maps vector names to ``VectorParams``; the key ``""`` is the unnamed
    (default) vector, as in Qdrant itself.
    """

    vectors: dict[str, models.VectorParams]
    sparse_vectors: dict[str, models.SparseVectorParams] = field(default_factory=dict)
    payload_indexes: dict[str, IndexSchema] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept qdrant-client models for indexes; keep plain data, sorted by field.
        indexes = {k: index_schema_to_data(v) for k, v in sorted(self.payload_indexes.items())}
        object.__setattr__(self, "payload_indexes", indexes)

    @classmethod
    def single(
        cls,
        size: int,
        distance: models.Distance | str = models.Distance.COSINE,
        payload_indexes: Mapping[str, Any] | None = None,
    ) -> CollectionSpec:
        """One unnamed dense vector of ``size`` dimensions."""
        params = models.VectorParams(size=size, distance=models.Distance(distance))
        indexes = {k: index_schema_to_data(v) for k, v in (payload_indexes or {}).items()}
        return cls({"": params}, {}, indexes)

    def vectors_config(self) -> models.VectorParams | dict[str, models.VectorParams]:
        if list(self.vectors) == [""]:
            return self.vectors[""]
        return dict(self.vectors)

    def summary(self) -> dict[str, Any]:
        """Name -> size/distance, sparse names and index types: what counts show."""
        return {
            "vectors": {
                name: {"size": p.size, "distance": str(p.distance.value)}
                for name, p in sorted(self.vectors.items())
            },
            "sparse_vectors": sorted(self.sparse_vectors),
            "payload_indexes": {k: index_type(v) for k, v in sorted(self.payload_indexes.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "vectors": {
                name: p.model_dump(mode="json", exclude_none=True)
                for name, p in sorted(self.vectors.items())
            },
            "sparse_vectors": {
                name: p.model_dump(mode="json", exclude_none=True)
                for name, p in sorted(self.sparse_vectors.items())
            },
            "payload_indexes": dict(sorted(self.payload_indexes.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectionSpec:
        vectors = {
            str(name): models.VectorParams.model_validate(p)
            for name, p in data.get("vectors", {}).items()
        }
        sparse = {
            str(name): models.SparseVectorParams.model_validate(p)
            for name, p in data.get("sparse_vectors", {}).items()
        }
        return cls(vectors, sparse, dict(data.get("payload_indexes", {})))


# -- the store -------------------------------------------------------------------------


@dataclass
class QdrantStore:
    """A connected Qdrant client and where it points. Build it with :func:`open_store`."""

    client: QdrantClient = field(repr=False)
    url: str | None = field(default=None, repr=False)  # may hold credentials: see target
    path: Path | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def target(self) -> str:
        """Where the store is, for messages: the masked URL or the storage folder."""
        if self.url is not None:
            return mask_url(self.url)
        return f"embedded storage {self.path}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def fail(self, doing: str, exc: BaseException) -> ReleasegateError:
        """The error for a failed call, with the target masked.

        Something Qdrant reports as missing or rejects (HTTP 4xx but 401/403, or the
        embedded Qdrant's ``ValueError``) is a :class:`StateError`; anything else
        (unreachable, refused credentials, timeouts, 5xx) an :class:`InfraError`.
        """
        message = f"Qdrant ({self.target}): {doing} failed: {first_line(exc)}"
        status = getattr(exc, "status_code", None)
        rejected = isinstance(status, int) and 400 <= status < 500 and status not in (401, 403)
        if isinstance(exc, ValueError) or rejected:
            return StateError(message)
        return InfraError(message)

    # -- collections and aliases

    def collections(self) -> list[str]:
        """Names of the physical collections, sorted."""
        try:
            return sorted(c.name for c in self.client.get_collections().collections)
        except Exception as exc:
            raise self.fail("listing collections", exc) from None

    def aliases(self) -> dict[str, str]:
        """Alias -> collection, for every alias."""
        try:
            found = self.client.get_aliases().aliases
        except Exception as exc:
            raise self.fail("listing aliases", exc) from None
        return {a.alias_name: a.collection_name for a in sorted(found, key=lambda a: a.alias_name)}

    def resolve(self, name: str) -> str | None:
        """The physical collection behind ``name`` (an alias or a collection), else None."""
        aliases = self.aliases()
        if name in aliases:
            return aliases[name]
        return name if name in self.collections() else None

    def exists(self, collection: str) -> bool:
        """Whether a physical collection of that name exists (aliases do not count)."""
        return collection in self.collections()

    def count(self, collection: str) -> int:
        try:
            return int(self.client.count(collection, exact=True).count)
        except Exception as exc:
            raise self.fail(f"counting points of {collection}", exc) from None

    def spec(self, collection: str) -> CollectionSpec:
        """The vectors, sparse vectors and payload indexes of a collection."""
        try:
            info = self.client.get_collection(collection)
        except Exception as exc:
            raise self.fail(f"reading collection {collection}", exc) from None
        params = info.config.params
        raw = params.vectors
        vectors = {"": raw} if isinstance(raw, models.VectorParams) else dict(raw or {})
        sparse = dict(params.sparse_vectors or {})
        if self.embedded:
            indexes = dict(self._registry().get(self._physical(collection), {}))
        else:
            indexes = {
                name: index_schema_to_data(schema.params or schema.data_type)
                for name, schema in (info.payload_schema or {}).items()
            }
        return CollectionSpec(vectors, sparse, dict(sorted(indexes.items())))

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        """Create ``name`` with the vectors and payload indexes of ``spec``."""
        try:
            self.client.create_collection(
                name,
                vectors_config=spec.vectors_config(),
                sparse_vectors_config=dict(spec.sparse_vectors) or None,
            )
        except Exception as exc:
            raise self.fail(f"creating collection {name}", exc) from None
        if self.embedded:
            self._set_indexes(name, {})
        for field_name, schema in spec.payload_indexes.items():
            self.create_payload_index(name, field_name, schema)

    def create_payload_index(self, collection: str, field_name: str, schema: Any) -> None:
        """Create (or replace) a payload index; recorded in the registry when embedded."""
        data = index_schema_to_data(schema)
        try:
            with warnings.catch_warnings():
                # The embedded Qdrant warns that its indexes have no effect; we know.
                warnings.simplefilter("ignore", UserWarning)
                self.client.create_payload_index(
                    collection, field_name, field_schema=index_schema_from_data(data), wait=True
                )
        except Exception as exc:
            raise self.fail(f"indexing {collection}.{field_name}", exc) from None
        if self.embedded:
            physical = self._physical(collection)
            indexes = dict(self._registry().get(physical, {}))
            indexes[field_name] = data
            self._set_indexes(physical, indexes)

    def drop_collection(self, name: str) -> None:
        """Delete a physical collection (and, in Qdrant, the aliases pointing at it)."""
        try:
            self.client.delete_collection(name)
        except Exception as exc:
            raise self.fail(f"deleting collection {name}", exc) from None
        if self.embedded:
            self._set_indexes(name, None)

    def set_aliases(self, targets: Mapping[str, str]) -> None:
        """Point each alias at its collection, all in ONE atomic ``update_collection_aliases``.

        An existing alias is deleted and created again in the same request, so readers
        see either the old or the new collection, never no collection.
        """
        if not targets:
            return
        current = self.aliases()
        ops: list[Any] = []
        for alias, collection in targets.items():
            if alias in current:
                ops.append(
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                )
            ops.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
                )
            )
        try:
            self.client.update_collection_aliases(change_aliases_operations=ops)
        except Exception as exc:
            raise self.fail(f"moving aliases {dict(targets)}", exc) from None

    def delete_alias(self, alias: str) -> None:
        if alias not in self.aliases():
            return
        try:
            self.client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                ]
            )
        except Exception as exc:
            raise self.fail(f"deleting alias {alias}", exc) from None

    # -- points

    def scroll_batches(
        self,
        collection: str,
        batch_size: int,
        *,
        offset: PointId | None = None,
        with_vectors: bool = True,
        with_payload: bool = True,
        limit: int | None = None,
    ) -> Iterator[list[PointData]]:
        """The points of a collection in id order, ``batch_size`` at a time.

        Only one batch is in memory at once. ``offset`` starts at that id (inclusive);
        ``limit`` stops after that many points.
        """
        seen = 0
        next_offset: Any = offset
        while True:
            size = batch_size if limit is None else min(batch_size, limit - seen)
            if size <= 0:
                return
            try:
                records, next_offset = self.client.scroll(
                    collection,
                    limit=size,
                    offset=next_offset,
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                )
            except Exception as exc:
                raise self.fail(f"reading points of {collection}", exc) from None
            if records:
                seen += len(records)
                yield [PointData.from_record(r) for r in records]
            if next_offset is None:
                return

    def upsert(self, collection: str, points: Sequence[PointData]) -> None:
        """Write one batch of points and wait until Qdrant has applied it."""
        if not points:
            return
        try:
            self.client.upsert(collection, points=[p.to_struct() for p in points], wait=True)
        except Exception as exc:
            raise self.fail(f"writing points to {collection}", exc) from None

    def retrieve(self, collection: str, ids: Sequence[PointId]) -> dict[PointId, PointData]:
        """The points with these ids that exist, by id."""
        try:
            records = self.client.retrieve(collection, ids=list(ids), with_vectors=True)
        except Exception as exc:
            raise self.fail(f"reading points of {collection}", exc) from None
        found = [PointData.from_record(r) for r in records]
        return {p.id: p for p in found}

    # -- the embedded payload index registry

    def _physical(self, name: str) -> str:
        return self.aliases().get(name, name)

    def _registry_path(self) -> Path:
        assert self.path is not None
        return self.path / INDEX_REGISTRY

    def _registry(self) -> dict[str, dict[str, IndexSchema]]:
        try:
            data = json.loads(self._registry_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"{self._registry_path()} is unreadable: {first_line(exc)}") from None
        return data if isinstance(data, dict) else {}

    def _set_indexes(self, collection: str, indexes: dict[str, IndexSchema] | None) -> None:
        registry = self._registry()
        if indexes is None:
            registry.pop(collection, None)
        else:
            registry[collection] = indexes
        path = self._registry_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def connect(
    *,
    url: str | None = None,
    path: Path | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> QdrantStore:
    """A store on the server at ``url`` or on the embedded storage at ``path``.

    The server is asked for its collections once, so an unreachable server or a wrong API
    key fails here, as :class:`InfraError` with the URL masked. An embedded folder that
    another client holds fails the same way.
    """
    if (url is None) == (path is None):
        raise ValueError("connect() needs exactly one of url and path")
    if url is not None:
        register_url(url)
        register_secret(api_key)
        where = mask_url(url)
        try:
            client = QdrantClient(
                url=url, api_key=api_key, timeout=max(1, round(timeout)), check_compatibility=False
            )
        except Exception as exc:
            raise InfraError(f"cannot use Qdrant URL {where}: {first_line(exc)}") from None
        store = QdrantStore(client, url=url, api_key=api_key, timeout=timeout)
        try:
            client.get_collections()
        except Exception as exc:
            store.close()
            raise InfraError(f"cannot reach Qdrant at {where}: {first_line(exc)}") from None
        return store
    assert path is not None
    try:
        path.mkdir(parents=True, exist_ok=True)
        client = QdrantClient(path=str(path))
    except Exception as exc:
        raise InfraError(f"cannot open embedded Qdrant at {path}: {first_line(exc)}") from None
    return QdrantStore(client, path=path, timeout=timeout)


def connect_settings(settings: Settings) -> QdrantStore:
    """A store for the ``[qdrant]`` section: the server when its URL variable is set."""
    url, path, api_key = settings.qdrant_location()
    timeout = settings.raw.qdrant.timeout if settings.raw.qdrant else 30.0
    if url is not None:
        return connect(url=url, api_key=api_key, timeout=timeout)
    return connect(path=path, timeout=timeout)


@contextmanager
def open_store(settings: Settings) -> Iterator[QdrantStore]:
    """Open the configured Qdrant for the length of the block, then close the client."""
    store = connect_settings(settings)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def using(settings: Settings, store: QdrantStore | None) -> Iterator[QdrantStore]:
    """``store`` when the caller already has one (left open), else a new one for the block."""
    if store is not None:
        yield store
        return
    with open_store(settings) as opened:
        yield opened
