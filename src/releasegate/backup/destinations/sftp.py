"""Backup sets kept in a folder on a backup host, over SFTP.

``[backup] destination = "sftp://USER@HOST[:PORT]/PATH"`` keeps each set under
``PATH/<set id>/`` on that host (``/~/PATH`` is relative to the login's home folder).
The connection is the one every ssh use of releasegate makes (:mod:`releasegate.hosts`):
the host key pinned in the ``[ssh]`` known_hosts file (never trusted on first use), the
key file named there, no prompt. The backup host may be another host than the Docker
host; its key must be pinned in the same file.

The OpenSSH ``sftp`` client does the work, in batch mode, over the tunnel's master
connection: one login per process, the same options and the same one-line failure
reasons as the Docker host's tunnel, and the throughput of OpenSSH's own transfers (a
pure-Python SFTP client such as paramiko reaches a fraction of it on a 1 GB set, and
would need its own host-key and key handling). Only SFTP is used, no remote shell, so a
backup account restricted to ``internal-sftp`` is enough. Paths travel on sftp's stdin,
never in argv; a path may hold only ``A-Z a-z 0-9 . _ - + / ~``, so no quoting or glob
pattern can change what a command names.

Before a set is uploaded, the free space of the folder's file system (sftp ``df``) is
compared with the set's size; an upload that fails when the space is gone says so. Either
way the partly copied set is removed and the backup fails (exit 3), as when an S3 bucket
refuses an upload.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from releasegate.backup.base import name_problem
from releasegate.backup.manifest import MANIFEST_NAME, Manifest, is_set_id
from releasegate.backup.sets import format_bytes
from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.hosts.ssh import SshTarget, SshTunnel, known_ssh_failure, last_line

if TYPE_CHECKING:
    from releasegate.config import Settings

# A folder listing or a df answers within this; transfers have no limit of their own
# (ssh's ServerAliveInterval ends a connection that stops answering).
LISTING_TIMEOUT = 120.0
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/~+-]+")
_URL_FORM = "sftp://USER@HOST[:PORT]/PATH (no password: the key file is set in [ssh])"


@dataclass(frozen=True)
class SftpLocation:
    """``sftp://USER@HOST[:PORT]/PATH``: the backup host and the folder of the sets there."""

    target: SshTarget
    # As sftp names it: absolute, or relative to the login's home folder.
    folder: str

    @classmethod
    def parse(cls, url: str) -> SftpLocation:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        path = parts.path.rstrip("/")
        folder = path.removeprefix("/~/") if path.startswith("/~/") else path
        if (
            parts.scheme != "sftp"
            or not parts.hostname
            or port == -1
            or parts.password is not None
            or parts.query
            or parts.fragment
            or not folder
            or path == "/~"
            or not _SAFE_PATH.fullmatch(folder)
        ):
            # Never repeat the URL: it may hold a password.
            raise ConfigError(f"backup.destination: expected {_URL_FORM}")
        return cls(SshTarget(host=parts.hostname, user=parts.username or None, port=port), folder)

    def __str__(self) -> str:
        path = self.folder if self.folder.startswith("/") else f"/~/{self.folder}"
        return f"sftp://{self.target}{path}"


def _quoted(path: str) -> str:
    """A remote path as one sftp batch argument; inside quotes sftp expands no glob."""
    if not _SAFE_PATH.fullmatch(path):
        raise InfraError(f"backup set file name {path[:80]!r} cannot be sent over sftp")
    return f'"{path}"'


def _local(path: Path) -> str:
    """A local path as one sftp batch argument (quotes and backslashes escaped)."""
    text = str(path)
    if "\n" in text:
        raise ConfigError(f"sftp cannot name a local path with a line break: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _folders(names: list[str]) -> list[str]:
    """Every folder the set files ``names`` sit in, each after the one that holds it."""
    found = {str(parent) for n in names for parent in PurePosixPath(n).parents}
    return sorted(found - {"."})


@dataclass(frozen=True)
class RemoteEntry:
    """One line of sftp's ``ls -l``: a name in a folder and whether it is a folder."""

    name: str
    is_dir: bool
    size: int


def parse_long_listing(output: str) -> list[RemoteEntry]:
    """sftp's ``ls -la`` lines (``drwxr-xr-x ? user group SIZE Mon DD HH:MM PATH``), without
    ``.`` and ``..``; names hold no blank (:data:`_SAFE_PATH`), so the path is the last field."""
    entries: list[RemoteEntry] = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 9 or fields[0][0] not in "-dl":
            continue
        name = fields[-1].rpartition("/")[2]  # not PurePosixPath: it drops a final "."
        if name in (".", "..") or not fields[4].isdigit():
            continue
        entries.append(RemoteEntry(name, fields[0].startswith("d"), int(fields[4])))
    return entries


def parse_df(output: str) -> int | None:
    """The bytes available from sftp's ``df`` (1 KiB units: Size Used Avail (root) %Capacity)."""
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields[:4]):
            return int(fields[2]) * 1024
    return None


class SftpFolder:
    """Sets under ``<folder>/<set id>/`` on a backup host, through OpenSSH's sftp."""

    def __init__(self, location: SftpLocation, tunnel: SshTunnel) -> None:
        self.location = location
        self.tunnel = tunnel

    @classmethod
    def from_settings(cls, settings: Settings) -> SftpFolder:
        from releasegate.hosts.transport import ssh_tunnel

        url = settings.raw.backup.destination
        assert url is not None
        location = SftpLocation.parse(url)
        return cls(location, ssh_tunnel(settings, location.target))

    def describe(self) -> str:
        return str(self.location)

    def _failure(self, action: str, why: str) -> InfraError:
        return InfraError(f"backup destination {self.describe()}: {action}: {why}")

    def _path(self, *names: str) -> str:
        return str(PurePosixPath(self.location.folder, *names))

    def _sftp(self, action: str, commands: list[str], timeout: float | None = None) -> str:
        """Run sftp batch ``commands`` (each aborts the batch when it fails, unless it starts
        with ``-``); their output, or one :class:`InfraError` line saying why not."""
        try:
            self.tunnel.open()
        except InfraError as exc:
            raise self._failure(action, str(exc)) from None
        batch = "".join(f"{command}\n" for command in commands)
        try:
            done = subprocess.run(
                [*self.tunnel.sftp_args(), "-b", "-", self.location.target.host],
                input=batch,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise self._failure(action, f"no answer within {timeout:g}s") from None
        if done.returncode != 0:
            why = known_ssh_failure(done.stderr) or last_line(done.stderr) or "sftp failed"
            raise self._failure(action, why)
        return done.stdout

    def _free_bytes(self, action: str) -> int | None:
        """Space left on the folder's file system; None when the server cannot tell."""
        output = self._sftp(action, [f"-@df {_quoted(self._path())}"], LISTING_TIMEOUT)
        return parse_df(output)

    def _files(self, set_id: str) -> dict[str, int] | None:
        """The set's files (relative names and sizes), None when it has no folder."""
        found: dict[str, int] = {}
        pending = [""]
        while pending:
            relative = pending.pop()
            folder = self._path(set_id, relative) if relative else self._path(set_id)
            listing = self._sftp(
                f"cannot list backup set {set_id}",
                [f"@cd {_quoted(self._path())}", f"-@ls -la {_quoted(folder)}"],
                LISTING_TIMEOUT,
            )
            entries = parse_long_listing(listing)
            if not relative and not entries:
                return None
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir:
                    pending.append(name)
                else:
                    found[name] = entry.size
        return found

    def check(self) -> None:
        folder = _quoted(self._path())
        action = "cannot use the folder"
        output = self._sftp(action, [f"@cd {folder}", f"-@df {folder}"], LISTING_TIMEOUT)
        if parse_df(output) == 0:
            raise self._failure(action, "no space left on the backup host")

    def put_set(self, local_dir: Path, set_id: str) -> None:
        action = f"cannot upload backup set {set_id}"
        sizes = {
            p.relative_to(local_dir).as_posix(): p.stat().st_size
            for p in local_dir.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
        needed = sum(sizes.values())
        free = self._free_bytes(action)
        if free is not None and needed > free:
            raise self._failure(
                action,
                f"not enough space on the backup host"
                f" (needed {format_bytes(needed)}, free {format_bytes(free)})",
            )
        # The manifest last: until it is there, the set is not listed.
        names = [*sorted(n for n in sizes if n != MANIFEST_NAME), MANIFEST_NAME]
        folders = _folders(names)
        # A folder of its own first, apart: what the cleanup below removes is then ours.
        self._sftp(action, [f"@mkdir {_quoted(self._path(set_id))}"], LISTING_TIMEOUT)
        commands = [f"@mkdir {_quoted(self._path(set_id, f))}" for f in folders]
        commands += [
            f"@put {_local(local_dir / name)} {_quoted(self._path(set_id, name))}" for name in names
        ]
        try:
            self._sftp(action, commands)
        except InfraError as failed:
            left = self._space_left()
            # Best effort: what is left has no manifest, so it is never taken for a set.
            with contextlib.suppress(InfraError):
                self._remove(set_id, names, folders)
            if left is not None and left < max(sizes.values(), default=1):
                raise self._failure(
                    action, f"no space left on the backup host ({format_bytes(left)} free)"
                ) from None
            raise failed

    def _space_left(self) -> int | None:
        with contextlib.suppress(InfraError):
            return self._free_bytes("cannot read the free space")
        return None

    def _remove(self, set_id: str, names: list[str], folders: list[str]) -> None:
        """Remove the set's files, its manifest first, then its folders (ignoring what is
        already gone: the removal may finish one that was cut short)."""
        ordered = [MANIFEST_NAME, *(n for n in names if n != MANIFEST_NAME)]
        commands = [f"-@rm {_quoted(self._path(set_id, n))}" for n in ordered]
        commands += [f"-@rmdir {_quoted(self._path(set_id, f))}" for f in reversed(folders)]
        commands.append(f"-@rmdir {_quoted(self._path(set_id))}")
        self._sftp(f"cannot delete backup set {set_id}", commands)

    def get_set(self, set_id: str, into_dir: Path) -> None:
        files = self._files(set_id)
        if files is None or MANIFEST_NAME not in files:
            raise ConfigError(f"no backup set {set_id} at {self.describe()}")
        commands: list[str] = []
        for name in sorted(files):
            if (why := name_problem(name)) is not None:
                raise InfraError(f"backup set {set_id} at {self.describe()}: {why}")
            target = into_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            commands.append(f"@get {_quoted(self._path(set_id, name))} {_local(target)}")
        self._sftp(f"cannot download backup set {set_id}", commands)

    def list_sets(self) -> list[str]:
        # One listing: the manifests of every set folder, by a glob outside the quotes.
        output = self._sftp(
            "cannot list the sets",
            [f"@cd {_quoted(self._path())}", f"-@ls -1 *{_quoted('/' + MANIFEST_NAME)}"],
            LISTING_TIMEOUT,
        )
        found = {PurePosixPath(line.strip()).parent.name for line in output.splitlines()}
        return sorted((s for s in found if is_set_id(s)), reverse=True)

    def read_manifest(self, set_id: str) -> Manifest:
        source = f"{MANIFEST_NAME} of backup set {set_id}"
        with tempfile.TemporaryDirectory(prefix="rg-manifest-") as folder:
            local = Path(folder) / MANIFEST_NAME
            self._sftp(
                f"cannot read the manifest of backup set {set_id}",
                [f"@get {_quoted(self._path(set_id, MANIFEST_NAME))} {_local(local)}"],
                LISTING_TIMEOUT,
            )
            try:
                data = json.loads(local.read_bytes())
            except ValueError as exc:
                raise CheckFailed(f"{source} is damaged: {exc}") from None
        return Manifest.from_dict(data, source)

    def delete_set(self, set_id: str) -> None:
        names = sorted(self._files(set_id) or {})
        self._remove(set_id, names, _folders(names))
