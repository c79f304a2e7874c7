"""Backup sets kept in an S3-compatible bucket, through boto3.

A set at the bucket is the set folder's files under ``<prefix>/<set id>/``. Its
``manifest.json`` is uploaded last and deleted first: a set whose upload or deletion was
cut short has no manifest and is never listed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from releasegate.backup.base import name_problem
from releasegate.backup.manifest import MANIFEST_NAME, Manifest, is_set_id
from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.secrets import check_url, mask_url, register_secret

if TYPE_CHECKING:
    from releasegate.config import Settings

T = TypeVar("T")

# A destination that does not answer should fail a backup within seconds, not minutes.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
MAX_ATTEMPTS = 3
# S3 deletes at most this many keys per request.
_DELETE_BATCH = 1000


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as (bucket, prefix), the prefix empty or ending in ``/``."""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not bucket:
        raise ConfigError(f"backup.destination {url!r} is not of the form s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Bucket:
    """Sets under ``<prefix><set id>/`` in an S3-compatible bucket, through boto3.

    Credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``) or boto3's other
    usual sources; they are never part of a message. Every failure to reach the bucket
    or have a request accepted is an :class:`InfraError` (exit 3).
    """

    def __init__(self, bucket: str, prefix: str, client: Any, endpoint: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Bucket:
        section = settings.raw.backup
        assert section.destination is not None
        bucket, prefix = parse_s3_url(section.destination)
        endpoint: str | None = None
        if section.endpoint_url_env is not None:
            endpoint = settings.env.get(section.endpoint_url_env) or None
            if endpoint is None:
                raise ConfigError(
                    f"environment variable {section.endpoint_url_env}"
                    " (backup.endpoint_url_env) is not set"
                )
            check_url(endpoint, f"${section.endpoint_url_env}")
        import boto3
        from botocore.config import Config

        env = settings.env
        secret = env.get("AWS_SECRET_ACCESS_KEY") or None
        token = env.get("AWS_SESSION_TOKEN") or None
        register_secret(secret)
        register_secret(token)
        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            profile_name=env.get("AWS_PROFILE") or None,
        )
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        )
        client = session.client("s3", endpoint_url=endpoint, config=config)
        return cls(bucket, prefix, client, endpoint)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {mask_url(self.endpoint)}" if self.endpoint else where

    def _set_prefix(self, set_id: str) -> str:
        return f"{self.prefix}{set_id}/"

    def _call(self, action: str, request: Callable[[], T]) -> T:
        """Run one request; a failure becomes one :class:`InfraError` line."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return request()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            why = f"{error.get('Code', 'error')}: {error.get('Message') or 'refused'}"
        except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: a failed managed upload
            why = str(exc)
        raise InfraError(f"backup destination {self.describe()}: {action}: {why}") from None

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in self._call("cannot list the sets", lambda: list(pages)):
            for item in page.get("Contents", []):
                yield str(item["Key"])

    def check(self) -> None:
        self._call("cannot reach the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))

    def put_set(self, local_dir: Path, set_id: str) -> None:
        base = self._set_prefix(set_id)
        files = sorted(
            p.relative_to(local_dir).as_posix()
            for p in local_dir.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        # The manifest last: until it is there, the set is not listed.
        files = [f for f in files if f != MANIFEST_NAME] + [MANIFEST_NAME]
        uploaded: list[str] = []
        try:
            for name in files:
                key = base + name
                upload = partial(self.client.upload_file, str(local_dir / name), self.bucket, key)
                self._call(f"cannot upload backup set {set_id}", upload)
                uploaded.append(key)
        except InfraError:
            # Best effort: what is left has no manifest, so it is never taken for a set.
            with contextlib.suppress(InfraError):
                self._delete_keys(set_id, uploaded)
            raise

    def get_set(self, set_id: str, into_dir: Path) -> None:
        base = self._set_prefix(set_id)
        names = [key[len(base) :] for key in self._keys(base)]
        if MANIFEST_NAME not in names:
            raise ConfigError(f"no backup set {set_id} at {self.describe()}")
        for name in names:
            if (why := name_problem(name)) is not None:
                raise InfraError(f"backup set {set_id} at {self.describe()}: {why}")
            target = into_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            download = partial(self.client.download_file, self.bucket, base + name, str(target))
            self._call(f"cannot download backup set {set_id}", download)

    def list_sets(self) -> list[str]:
        found: list[str] = []
        for key in self._keys(self.prefix):
            set_id, _, name = key[len(self.prefix) :].partition("/")
            if name == MANIFEST_NAME and is_set_id(set_id):
                found.append(set_id)
        return sorted(found, reverse=True)

    def read_manifest(self, set_id: str) -> Manifest:
        key = self._set_prefix(set_id) + MANIFEST_NAME
        response = self._call(
            f"cannot read the manifest of backup set {set_id}",
            lambda: self.client.get_object(Bucket=self.bucket, Key=key),
        )
        source = f"{MANIFEST_NAME} of backup set {set_id}"
        try:
            data = json.loads(response["Body"].read())
        except ValueError as exc:
            raise CheckFailed(f"{source} is damaged: {exc}") from None
        return Manifest.from_dict(data, source)

    def delete_set(self, set_id: str) -> None:
        self._delete_keys(set_id, list(self._keys(self._set_prefix(set_id))))

    def _delete_keys(self, set_id: str, keys: list[str]) -> None:
        manifest = self._set_prefix(set_id) + MANIFEST_NAME
        action = f"cannot delete backup set {set_id}"
        if manifest in keys:  # first: a set cut short while deleted is no longer listed
            self._call(action, lambda: self.client.delete_object(Bucket=self.bucket, Key=manifest))
        rest = [k for k in keys if k != manifest]
        for start in range(0, len(rest), _DELETE_BATCH):
            batch = [{"Key": k} for k in rest[start : start + _DELETE_BATCH]]
            delete = partial(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            response = self._call(action, delete)
            if errors := response.get("Errors"):
                first = errors[0]
                raise InfraError(
                    f"backup destination {self.describe()}: {action}: {first.get('Key')}:"
                    f" {first.get('Code')}: {first.get('Message')}"
                )
