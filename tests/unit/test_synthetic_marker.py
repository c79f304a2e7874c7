"""The synthetic marker, the [slo] tag keys and the Locust command line that carries both."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasegate import __version__
from releasegate.config import load_config
from releasegate.errors import ConfigError
from releasegate.gates import synthetic
from releasegate.gates.locust_runner import LocustPlan

MINIMAL = """\
[service]
name = "notes"

[slo]
locustfile = "loadtests/locustfile.py"
"""


def test_marker_is_the_release_id_or_manual() -> None:
    assert synthetic.marker_for(None) == "manual"
    assert synthetic.marker_for(42) == "42"
    assert synthetic.marker_for("rel-7.a:b_c") == "rel-7.a:b_c"


@pytest.mark.parametrize("bad", ["", "two words", "a\nb", "x" * 65, "-leading", "é"])
def test_a_marker_that_cannot_travel_in_a_header_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid synthetic marker"):
        synthetic.marker_for(bad)


def test_user_agent_names_the_version() -> None:
    assert synthetic.user_agent() == f"releasegate/{__version__} (synthetic)"
    assert synthetic.headers("9") == {
        "X-Releasegate-Synthetic": "9",
        "User-Agent": f"releasegate/{__version__} (synthetic)",
    }


def test_add_to_forces_the_marker_and_keeps_a_given_user_agent() -> None:
    ua = synthetic.user_agent()
    assert synthetic.add_to(None, "7") == {"User-Agent": ua, "X-Releasegate-Synthetic": "7"}
    spoofed = {"x-releasegate-synthetic": "real", "Accept": "a/b", "user-agent": "mine"}
    assert synthetic.add_to(spoofed, "7") == {
        "Accept": "a/b",
        "user-agent": "mine",
        "X-Releasegate-Synthetic": "7",
    }
    assert spoofed["x-releasegate-synthetic"] == "real"  # the caller's mapping is not changed


# -- [slo] tags and exclude_tags -------------------------------------------------------


def _load(tmp_path: Path, extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "releasegate.toml"
    path.write_text(MINIMAL + extra)
    return load_config(path, env or {})


def test_tags_default_to_no_filter(tmp_path: Path) -> None:
    slo = _load(tmp_path, "").raw.slo
    assert slo.tags is None and slo.exclude_tags is None


def test_tags_are_read_from_the_file_and_from_an_override(tmp_path: Path) -> None:
    slo = _load(tmp_path, 'tags = ["read", "api.v2"]\nexclude_tags = ["write"]\n').raw.slo
    assert slo.tags == ["read", "api.v2"] and slo.exclude_tags == ["write"]
    env = {"RELEASEGATE_SLO__EXCLUDE_TAGS": '["write", "slow"]'}
    assert _load(tmp_path, "", env).raw.slo.exclude_tags == ["write", "slow"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('exclude_tags = "write"\n', "slo.exclude_tags: Input should be a valid list"),
        ("tags = [1]\n", "slo.tags.0: 1 is not a Locust tag"),
        ('exclude_tags = ["two words"]\n', "slo.exclude_tags.0"),
        ('tags = ["--headless"]\n', "slo.tags.0"),
        ("tags = []\n", "slo.tags: an empty list runs no task"),
    ],
)
def test_bad_tags_are_config_errors_naming_the_key(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    assert str(info.value).startswith("releasegate.toml: ")
    assert message in str(info.value)


# -- the Locust command line ---------------------------------------------------------


def _plan(**kwargs: object) -> LocustPlan:
    return LocustPlan(
        locustfile=Path("/l.py"),
        host="http://127.0.0.1:1",
        out_dir=Path("/o"),
        users=1,
        spawn_rate=1,
        warmup=1,
        duration=1,
        **kwargs,  # type: ignore[arg-type]
    )


def test_command_carries_marker_and_tag_filters() -> None:
    cmd = _plan(synthetic="42", tags=("read",), exclude_tags=("write", "slow")).command()
    assert cmd[cmd.index("--releasegate-synthetic") + 1] == "42"
    assert cmd[cmd.index("--tags") + 1 : cmd.index("--tags") + 2] == ["read"]
    at = cmd.index("--exclude-tags")
    assert cmd[at + 1 : at + 3] == ["write", "slow"]


def test_command_without_marker_or_filters_has_none_of_their_options() -> None:
    cmd = _plan().command()
    assert not {"--releasegate-synthetic", "--tags", "--exclude-tags"} & set(cmd)
