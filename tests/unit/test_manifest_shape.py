"""The manifest's file names and shape: pure checks, no store involved."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from releasegate.backup.base import name_problem, set_file
from releasegate.backup.manifest import Manifest, shape_problem
from releasegate.errors import CheckFailed

SHA = "0" * 64
GOOD: dict[str, Any] = {
    "format_version": 1,
    "set_id": "20260315T101500.123Z",
    "service": "notes",
    "created_at": "2026-03-15T10:15:00+00:00",
    "performer": "ci@runner",
    "git_sha": None,
    "releasegate_version": "0.1.0",
    "versions": {"alembic": "0006"},
    "stores": [
        {
            "store": "postgres",
            "method": "pg_dump custom",
            "files": [{"name": "postgres.dump", "sha256": SHA, "size": 10}],
            "counts": {"tables": {"public.users": 5}, "rows": 5},
        },
        {
            "store": "redis",
            "method": "scan+dump",
            "files": [{"name": "redis.rgdump", "sha256": SHA, "size": 3}],
            "counts": {"keys": 2, "patterns": {"*": {"keys": 2}}},
        },
        {
            "store": "qdrant",
            "method": "qdrant scroll",
            "files": [{"name": "qdrant/docs.jsonl.gz", "sha256": SHA, "size": 3}],
            "counts": {"collections": {"docs": {"points": 4}}, "aliases": {"d": "docs"}},
        },
    ],
    "timings": {},
    "ledger_release_id": 3,
}


@pytest.mark.parametrize(
    "name", ["postgres.dump", "qdrant/docs.jsonl.gz", "postgres/toc.dat", "a..b", ".hidden"]
)
def test_plain_names_inside_the_folder_pass(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "an empty file name"),
        ("/etc/hostname", "is an absolute path"),
        ("../../../../etc/passwd", "leaves or does not name"),
        ("postgres/../../x", "leaves or does not name"),
        ("./postgres.dump", "leaves or does not name"),
        ("a//b", "leaves or does not name"),
        ("dir/", "leaves or does not name"),
        ("..\\x", "backslash or NUL"),
        ("a\x00b", "backslash or NUL"),
    ],
)
def test_names_that_leave_the_folder_are_refused(name: str, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None and why in problem


def test_set_file_refuses_a_link_out_of_the_folder(tmp_path: Path) -> None:
    set_dir = tmp_path / "set"
    (set_dir / "sub").mkdir(parents=True)
    (tmp_path / "outside").write_text("x")
    (set_dir / "inside").write_text("y")
    (set_dir / "out").symlink_to(tmp_path / "outside")
    (set_dir / "sub" / "in").symlink_to(set_dir / "inside")

    assert set_file(set_dir, "sub/in") == set_dir / "sub" / "in"
    with pytest.raises(CheckFailed, match="out is a link that leaves the set folder"):
        set_file(set_dir, "out")
    with pytest.raises(CheckFailed, match="is an absolute path"):
        set_file(set_dir, "/etc/hostname")


def test_a_good_manifest_has_no_shape_problem() -> None:
    assert shape_problem(copy.deepcopy(GOOD)) is None
    assert Manifest.from_dict(copy.deepcopy(GOOD)).store_names == ["postgres", "redis", "qdrant"]


def _set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        (("stores",), "abc", "stores is not a list"),
        (("stores",), {"postgres": {}}, "stores is not a list"),
        (("versions",), ["0006"], "versions is not an object"),
        (("git_sha",), 12, "git_sha is not a string"),
        (("ledger_release_id",), "3", "ledger_release_id is not a number"),
        (("stores", 0), "postgres", "stores[0] is not an object"),
        (("stores", 0, "store"), "mysql", "stores[0].store is not one of"),
        (("stores", 1, "store"), "postgres", "postgres is listed twice"),
        (("stores", 0, "method"), None, "postgres.method is not a string"),
        (("stores", 0, "counts"), [1, 2], "postgres.counts is not an object"),
        (("stores", 0, "extra"), "x", "postgres.extra is not an object"),
        (("stores", 0, "files"), {"a": 1}, "postgres.files is not a list"),
        (("stores", 0, "files", 0), "postgres.dump", "is not an object with name"),
        (("stores", 0, "files", 0, "name"), 7, "the name is not a string"),
        (("stores", 0, "files", 0, "name"), "../x", "leaves or does not name"),
        (("stores", 0, "files", 0, "sha256"), "XYZ", "sha256 is not 64 lowercase hex"),
        (("stores", 0, "files", 0, "size"), "10", "size is not a byte count"),
        (("stores", 0, "files", 0, "size"), -1, "size is not a byte count"),
        (("stores", 0, "files", 0, "size"), True, "size is not a byte count"),
        (("stores", 0, "counts", "tables"), [], "counts.tables is not a map"),
        (("stores", 0, "counts", "tables", "public.users"), "5", "counts.tables is not a map"),
        (("stores", 1, "counts", "keys"), "2", "counts.keys is not a number"),
        (("stores", 1, "counts", "patterns"), ["*"], "counts.patterns is not a map"),
        (("stores", 2, "counts", "collections"), [], "counts.collections is not a map"),
        (("stores", 2, "counts", "aliases"), {"d": 1}, "counts.aliases is not a map"),
    ],
)
def test_each_odd_shape_is_named(path: tuple[Any, ...], value: Any, why: str) -> None:
    data = _set(path, value)
    problem = shape_problem(data)
    assert problem is not None and why in problem
    with pytest.raises(CheckFailed) as damaged:
        Manifest.from_dict(data, "manifest.json of backup set X")
    assert str(damaged.value) == f"manifest.json of backup set X is damaged: {problem}"


def test_a_file_listed_twice_is_damage() -> None:
    data = copy.deepcopy(GOOD)
    data["stores"][0]["files"].append(dict(data["stores"][0]["files"][0]))
    assert shape_problem(data) == "postgres.files lists postgres.dump twice"
