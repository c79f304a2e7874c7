"""Where the durable copy of each backup set lives: the backup folder, an S3 bucket, or a
folder on a backup host reached over SFTP.

A set is always built in ``backup.dir`` (:mod:`releasegate.backup.set_create`); the
destination is where it is kept for later. By default that is the backup folder itself
(:class:`LocalFolder`, nothing is copied). With ``[backup] destination`` set, every set is
copied off the runner: ``"s3://BUCKET/PREFIX"`` to an S3-compatible bucket
(:class:`~releasegate.backup.destinations.s3.S3Bucket`), ``"sftp://USER@HOST/PATH"`` to a
folder on a backup host (:class:`~releasegate.backup.destinations.sftp.SftpFolder`), so
that a job on another machine (a rollback on a fresh CI runner) can list the sets and
fetch one by id. Callers see only :class:`Destination`.

Every destination keeps a set's files, manifest and checksums included, under
``<set id>/`` and writes its ``manifest.json`` last and deletes it first: a set whose copy
or deletion was cut short has no manifest and is never listed. Downloads are checked
against the manifest's checksums by :func:`releasegate.backup.sets.fetch_set` before they
are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from releasegate.backup.destinations.base import Destination, LocalFolder, set_dirs

if TYPE_CHECKING:
    from releasegate.config import Settings

__all__ = ["Destination", "LocalFolder", "destination_for", "set_dirs"]


def destination_for(settings: Settings) -> Destination:
    """The configured destination, by the scheme of ``backup.destination``."""
    url = settings.raw.backup.destination
    if url is None:
        return LocalFolder(settings.resolve_path(settings.raw.backup.dir))
    # Imported here: boto3 and the ssh transport load only when they are used.
    if url.startswith("sftp://"):
        from releasegate.backup.destinations.sftp import SftpFolder

        return SftpFolder.from_settings(settings)
    from releasegate.backup.destinations.s3 import S3Bucket

    return S3Bucket.from_settings(settings)
