"""The points file of a Qdrant backup (scroll method): gzip-compressed JSON lines.

The file (``format_version`` 1):

1. a header ``{"format": "releasegate.qdrant.points", "format_version": 1, "collection": NAME}``;
2. one line per point, ``{"id": ID, "dense": {VECTOR: F32}, "multi": {VECTOR: [F32, ...]},
   "sparse": {VECTOR: {"indices": [...], "values": F32}}, "payload": {...}}``, where ``F32``
   is the base64 of the little-endian float32 values (what Qdrant stores, so exact and
   compact), the unnamed vector has the name ``""``, and empty groups are left out;
3. a trailer ``{"end": true, "points": N}``: a file without it was cut short.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from releasegate.errors import CheckFailed
from releasegate.stores.qdrant import PointData, first_line
from releasegate.stores.qdrant_points import decode_point, encode_point

FORMAT = "releasegate.qdrant.points"
FORMAT_VERSION = 1
_GZIP_LEVEL = 4


class PointsWriter:
    """Writes a points file batch by batch; the trailer is written by :meth:`close`."""

    def __init__(self, path: Path, collection: str) -> None:
        self.path = path
        self.points = 0
        self._file: gzip.GzipFile = gzip.GzipFile(path, "wb", compresslevel=_GZIP_LEVEL)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "collection": collection}
        self._line(header)

    def _line(self, data: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n")

    def write(self, batch: Iterable[PointData]) -> None:
        for point in batch:
            self._line(encode_point(point))
            self.points += 1

    def close(self) -> None:
        """Write the trailer and close; a file left without it reads as cut short."""
        self._line({"end": True, "points": self.points})
        self._file.close()

    def __enter__(self) -> PointsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def write_points_file(path: Path, collection: str, batches: Iterable[Iterable[PointData]]) -> int:
    """Write a whole points file from batches of points; returns the number of points."""
    with PointsWriter(path, collection) as writer:
        for batch in batches:
            writer.write(batch)
    return writer.points


def read_points_header(path: Path) -> dict[str, Any]:
    """The header of a points file; :class:`CheckFailed` if it is not one."""
    try:
        with gzip.open(path, "rb") as handle:
            header = json.loads(handle.readline())
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise CheckFailed(f"{path.name} is not a readable points file: {first_line(exc)}") from None
    _check_header(path, header)
    return dict(header)


def _check_header(path: Path, header: Any) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckFailed(f"{path.name} is not a releasegate Qdrant points file")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckFailed(
            f"{path.name} has points format version {header.get('format_version')};"
            f" this releasegate reads version {FORMAT_VERSION}"
        )


def iter_points_file(path: Path, batch_size: int = 256) -> Iterator[list[PointData]]:
    """The points of a points file in batches, checking its header, lines and trailer.

    Raises :class:`CheckFailed` on a damaged file, at the point where the damage is found
    (a restore checks checksums first, so that it never starts on a damaged file).
    """
    batch: list[PointData] = []
    seen = 0
    line_no = 0
    try:
        with gzip.open(path, "rb") as handle:
            line_no = 1
            _check_header(path, json.loads(handle.readline()))
            for raw in handle:
                line_no += 1
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("a line that is not an object")
                if data.get("end") is True:
                    if data.get("points") != seen:
                        raise ValueError(
                            f"the trailer counts {data.get('points')} points, the file has {seen}"
                        )
                    if handle.readline():
                        raise ValueError("data after the trailer")
                    if batch:
                        yield batch
                    return
                batch.append(decode_point(data))
                seen += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    except CheckFailed:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise CheckFailed(f"{path.name} is damaged (line {line_no}): {first_line(exc)}") from None
    raise CheckFailed(f"{path.name} is cut short: no trailer after {seen} points")
