"""The backup destination: which one the config chooses, its address, the local folder.

The S3 bucket itself is exercised against moto's server in
tests/integration/test_backup_s3.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate.backup.destinations import LocalFolder, destination_for
from releasegate.backup.destinations.s3 import S3Bucket, parse_s3_url
from releasegate.backup.manifest import MANIFEST_NAME
from releasegate.config import load_config
from releasegate.errors import ConfigError

CONFIG = """\
[service]
name = "notes"

[backup]
dir = "backups"
"""
SECRET = "Kq9-destination-secret"


def settings(tmp_path: Path, backup: str = "", **env: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "releasegate.toml"
    path.write_text(CONFIG + backup)
    return load_config(path, env)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://releases", "releases", ""),
        ("s3://releases/", "releases", ""),
        ("s3://releases/notes", "releases", "notes/"),
        ("s3://releases//notes/prod/", "releases", "notes/prod/"),
    ],
)
def test_parse_s3_url(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize("url", ["s3:///notes", "gs://releases/notes"])
def test_parse_s3_url_refuses_other_forms(url: str) -> None:
    with pytest.raises(ConfigError, match="s3://BUCKET/PREFIX"):
        parse_s3_url(url)


@pytest.mark.parametrize(
    "value", ["/mnt/backups", "s3://", "s3:// bucket", "https://bucket.example/notes"]
)
def test_config_refuses_a_destination_that_is_no_s3_url(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"backup\.destination"):
        settings(tmp_path, f'destination = "{value}"\n')


def test_default_destination_is_the_backup_folder(tmp_path: Path) -> None:
    chosen = destination_for(settings(tmp_path))
    assert isinstance(chosen, LocalFolder)
    assert chosen.describe() == str(tmp_path.resolve() / "backups")


def test_s3_destination_from_config_and_environment(tmp_path: Path) -> None:
    chosen = destination_for(
        settings(
            tmp_path,
            'destination = "s3://releases/notes"\nendpoint_url_env = "RG_ENDPOINT"\n',
            RG_ENDPOINT="http://user:pw-in-url@127.0.0.1:9000",
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_ACCESS_KEY_ID="rg-key",
        )
    )
    assert isinstance(chosen, S3Bucket)
    assert (chosen.bucket, chosen.prefix) == ("releases", "notes/")
    described = chosen.describe()
    assert described == "s3://releases/notes/ at http://user:***@127.0.0.1:9000"
    assert SECRET not in described


def test_s3_destination_needs_its_endpoint_variable(tmp_path: Path) -> None:
    configured = settings(
        tmp_path, 'destination = "s3://releases/notes"\nendpoint_url_env = "RG_ENDPOINT"\n'
    )
    with pytest.raises(ConfigError, match=r"RG_ENDPOINT \(backup\.endpoint_url_env\) is not set"):
        destination_for(configured)


def _make_set(root: Path, set_id: str, *, manifest: bool = True) -> Path:
    folder = root / set_id
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "part").write_text("rows")
    if manifest:
        (folder / MANIFEST_NAME).write_text("{}")
    return folder


def test_local_folder_lists_only_sets_with_a_manifest(tmp_path: Path) -> None:
    folder = LocalFolder(tmp_path)
    _make_set(tmp_path, "20260101T000000.000Z")
    _make_set(tmp_path, "20260102T000000.000Z")
    _make_set(tmp_path, "20260103T000000.000Z", manifest=False)
    (tmp_path / "not-a-set").mkdir()
    assert folder.list_sets() == ["20260102T000000.000Z", "20260101T000000.000Z"]


def test_local_folder_copies_a_set_out_and_deletes_it(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    folder = LocalFolder(root)
    made = _make_set(root, "20260101T000000.000Z")
    folder.put_set(made, made.name)  # created in place: nothing to copy
    assert folder.list_sets() == [made.name]

    into = tmp_path / "copy"
    folder.get_set(made.name, into)
    assert (into / "data" / "part").read_text() == "rows"
    with pytest.raises(ConfigError, match=r"no backup set 20260102T000000\.000Z"):
        folder.get_set("20260102T000000.000Z", tmp_path / "other")

    folder.delete_set(made.name)
    assert folder.list_sets() == [] and not made.exists()
