"""The pure parts of content comparisons: results, id sets, merging, COPY unescaping."""

from __future__ import annotations

from releasegate.backup.content_diff import EXAMPLES, ContentDiff, IdSet, describe, merge_keys
from releasegate.backup.content_rows import unescape


def test_scope_counts_keep_a_few_examples_and_decide_preserved() -> None:
    diff = ContentDiff("postgres", "20260101T000000.000Z")
    users = diff.scope("public.users")
    users.count("kept_unchanged", n=1200)
    for i in range(37):
        users.count("added", str(i))
    assert diff.preserved
    assert users.examples["added"] == [str(i) for i in range(EXAMPLES)]
    assert describe(diff) == [
        "postgres public.users: 1200 kept, 0 changed, 0 missing, 37 added",
        "  added: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...",
    ]
    diff.scope("public.documents").count("missing", "42")
    assert not diff.preserved
    data = diff.to_dict()
    assert data["totals"]["missing"] == 1 and data["totals"]["added"] == 37
    assert data["scopes"][1]["examples"] == {"missing": ["42"]}
    skipped = ContentDiff("qdrant", "s")
    skipped.scope("docs").note = "not compared"
    assert not skipped.preserved
    assert describe(skipped) == [
        "qdrant docs: 0 kept, 0 changed, 0 missing, 0 added (not compared)"
    ]


def test_id_set_membership() -> None:
    ids = IdSet()
    for i in range(10_000):
        ids.add(b"key:%d" % i)
    probe = [b"key:0", b"key:9999", b"key:10000", b"other"]
    assert ids.contains(probe) == [True, True, False, False]
    assert IdSet().contains([b"x"]) == [False]
    assert ids.contains([]) == []


def test_merge_keys_pairs_sorted_streams() -> None:
    base = [(b"1", "a"), (b"3", "c"), (b"5", "e")]
    live = [(b"1", "A"), (b"2", "B"), (b"5", "E")]
    assert list(merge_keys(base, [], live)) == [
        (b"1", ["a", None, "A"]),
        (b"2", [None, None, "B"]),
        (b"3", ["c", None, None]),
        (b"5", ["e", None, "E"]),
    ]


def test_unescape_copy_text() -> None:
    assert unescape(b"plain") == b"plain"
    assert unescape(b"a\\tb\\nc\\\\d") == b"a\tb\nc\\d"
    assert unescape(b"\\x") == b"x"
