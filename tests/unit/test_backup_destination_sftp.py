"""The SFTP destination's address and its reading of sftp's output.

Transfers, listings and failures against a real sshd are in
tests/integration/test_backup_sftp.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.backup.destinations import destination_for
from releasegate.backup.destinations.sftp import (
    RemoteEntry,
    SftpFolder,
    SftpLocation,
    parse_df,
    parse_long_listing,
)
from releasegate.config import load_config
from releasegate.errors import ConfigError
from releasegate.hosts.ssh import SshTarget

CONFIG = '[service]\nname = "notes"\n\n[backup]\ndir = "backups"\n'


@pytest.mark.parametrize(
    ("url", "target", "folder", "described"),
    [
        (
            "sftp://backup@vault.example/srv/sets",
            SshTarget("vault.example", "backup"),
            "/srv/sets",
            "sftp://backup@vault.example/srv/sets",
        ),
        (
            "sftp://backup@10.0.0.7:2222/srv/sets/notes/",
            SshTarget("10.0.0.7", "backup", 2222),
            "/srv/sets/notes",
            "sftp://backup@10.0.0.7:2222/srv/sets/notes",
        ),
        (
            "sftp://vault.example/~/sets",
            SshTarget("vault.example"),
            "sets",
            "sftp://vault.example/~/sets",
        ),
    ],
)
def test_parse_sftp_url(url: str, target: SshTarget, folder: str, described: str) -> None:
    location = SftpLocation.parse(url)
    assert (location.target, location.folder) == (target, folder)
    assert str(location) == described


@pytest.mark.parametrize(
    "url",
    [
        "sftp://backup:pw-in-url@vault.example/srv/sets",  # a password: never
        "sftp://backup@vault.example/",  # no folder
        "sftp://backup@vault.example/~",
        "sftp://backup@vault.example:99999/srv/sets",
        "sftp://backup@vault.example/srv/my sets",  # a blank, a quote, a glob: refused
        'sftp://backup@vault.example/srv/"sets"',
        "sftp://backup@vault.example/srv/sets*",
        "sftp://backup@vault.example/srv/sets?x=1",
    ],
)
def test_parse_sftp_url_refuses_other_forms(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sftp://USER@HOST\[:PORT\]/PATH") as refused:
        SftpLocation.parse(url)
    assert "pw-in-url" not in str(refused.value)


def test_sftp_destination_from_config(tmp_path: Path) -> None:
    config = tmp_path / "releasegate.toml"
    config.write_text(CONFIG + 'destination = "sftp://backup@10.0.0.7/srv/sets"\n')
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    key = tmp_path / "id_ed25519"
    key.write_text("")
    env = {
        "RELEASEGATE_SSH_KNOWN_HOSTS": str(known_hosts),
        "RELEASEGATE_SSH_IDENTITY_FILE": str(key),
    }
    chosen = destination_for(load_config(config, env))
    assert isinstance(chosen, SftpFolder)
    assert chosen.describe() == "sftp://backup@10.0.0.7/srv/sets"
    # The pinned files of [ssh], and sftp rides on the tunnel's master with them.
    assert (chosen.tunnel.known_hosts, chosen.tunnel.identity_file) == (known_hosts, key)
    assert not chosen.tunnel.is_open


def test_config_refuses_an_sftp_destination_without_a_folder(tmp_path: Path) -> None:
    config = tmp_path / "releasegate.toml"
    config.write_text(CONFIG + 'destination = "sftp://backup@10.0.0.7"\n')
    with pytest.raises(ConfigError, match=r"backup\.destination"):
        load_config(config, {})


def test_parse_long_listing() -> None:
    output = (
        "drwx------    ? root     root           80 Dec  7 06:32 /srv/s/20260101T000000.000Z/.\n"
        "drwxr-xr-x    ? root     root         4096 Dec  7 06:32 /srv/s/20260101T000000.000Z/..\n"
        "-rw-r--r--    ? root   root    12345 Dec  7 06:32 /srv/s/20260101T000000.000Z/pg.dump\n"
        "drwxr-xr-x    ? root   root     4096 Dec  7 06:32 /srv/s/20260101T000000.000Z/qdrant\n"
        "Can't ls: something else\n"
    )
    assert parse_long_listing(output) == [
        RemoteEntry("pg.dump", is_dir=False, size=12345),
        RemoteEntry("qdrant", is_dir=True, size=4096),
    ]


def test_parse_df() -> None:
    output = (
        "        Size         Used        Avail       (root)    %Capacity\n"
        "       16384         4096        12288        12288          25%\n"
    )
    assert parse_df(output) == 12288 * 1024
    assert parse_df("Server does not support the statvfs@openssh.com extension\n") is None
