"""A deterministic text embedding for the example service: no model, no download.

Character trigrams of the lower-cased text (padded with spaces) are hashed into ``dim``
buckets with a hashed sign, and the vector is L2-normalised. Similar titles share
trigrams, so they get similar vectors; the same text always gets the same vector, on
every machine and Python version (CRC-32, not Python's salted ``hash``).
"""

from __future__ import annotations

import math
import zlib

NGRAM = 3


def embed(text: str, dim: int) -> list[float]:
    """The ``dim``-dimensional unit vector of ``text``."""
    if dim < 1:
        raise ValueError("dim must be at least 1")
    vector = [0.0] * dim
    padded = f"{' ' * (NGRAM - 1)}{text.lower()}{' ' * (NGRAM - 1)}"
    for i in range(len(padded) - NGRAM + 1):
        digest = zlib.crc32(padded[i : i + NGRAM].encode("utf-8"))
        vector[digest % dim] += 1.0 if digest >> 31 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # every trigram cancelled out: any fixed unit vector will do
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]
