"""The router's generated haproxy.cfg and the parsing of runtime API answers.

The config is also checked by the real ``haproxy -c``; the parsers are fed answers
captured from HAProxy 2.6.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError, InfraError
from releasegate.router.config import (
    COLOR_HEADER,
    MAX_SOCKET_PATH,
    REMOTE_RUNTIME_DIR,
    TRAFFIC_LOG_FORMAT,
    TRAFFIC_RING,
    filter_state_file,
    generate_config,
    haproxy_duration,
    render_config,
    router_config,
)
from releasegate.router.process import runner_for
from releasegate.router.runtime import (
    admin_state,
    parse_info,
    parse_servers_state,
    parse_stat_csv,
    split_answers,
)
from releasegate.router.state import ColorState, RouterState
from releasegate.router.switching import switch_commands

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def settings_for(tmp_path: Path, router: str = "", deploy: str = "") -> Settings:
    path = tmp_path / "releasegate.toml"
    path.write_text(
        f'[service]\nname = "notes"\n\n[deploy]\n{deploy}\n\n[router]\n{router}\n',
        encoding="utf-8",
    )
    return load_config(path, env={})


# -- generation -----------------------------------------------------------------------


def test_default_config_declares_both_colors_blue_live(tmp_path: Path) -> None:
    text = generate_config(settings_for(tmp_path))
    runtime = tmp_path / ".releasegate" / "router"
    lines = [line.strip() for line in text.splitlines()]
    assert f"stats socket '{runtime}/admin.sock' mode 600 level admin expose-fd listeners" in lines
    assert f"server-state-file '{runtime}/servers.state'" in lines
    assert "frontend notes-in" in lines
    assert "bind 127.0.0.1:18080" in lines
    assert "backend notes" in lines
    assert "default_backend notes" in lines
    assert "server blue 127.0.0.1:18081 weight 100 check inter 1s fall 2 rise 1" in lines
    assert "server green 127.0.0.1:18082 weight 0 check inter 1s fall 2 rise 1" in lines
    for directive in (
        "option httpchk GET /healthz",
        "http-check expect status 200",
        "option redispatch 1",
        "retries 3",
        "retry-on conn-failure empty-response junk-response 0rtt-rejected 502 503 504",
        "http-reuse safe",
        "load-server-state-from-file global",
        f"http-response set-header {COLOR_HEADER} %[srv_name]",
        "timeout connect 2s",
        "timeout server 30s",
    ):
        assert directive in lines, directive
    # Never a reload: no directive that would need one, and no disabled server that
    # a later "enable" would depend on.
    assert "disabled" not in text


def test_settings_reach_the_config(tmp_path: Path) -> None:
    text = generate_config(
        settings_for(
            tmp_path,
            router='bind = ":9999"\nhealth_path = "/ready"\ncheck_interval = "250ms"\n'
            'runtime_dir = "rt"\nmaxconn = 123\nserver_timeout = "1m"\n',
            deploy="blue_port = 7001\ngreen_port = 7002",
        )
    )
    assert "    bind :9999\n" in text
    assert "option httpchk GET /ready\n" in text
    assert "server blue 127.0.0.1:7001 weight 100 check inter 250ms fall 2 rise 1" in text
    assert "server green 127.0.0.1:7002 weight 0 check inter 250ms" in text
    assert f"stats socket '{tmp_path / 'rt' / 'admin.sock'}'" in text
    assert "maxconn 123\n" in text
    assert "timeout server 60s\n" in text


def test_non_idempotent_requests_are_never_replayed(tmp_path: Path) -> None:
    text = generate_config(settings_for(tmp_path))
    acl = text.index("acl releasegate_non_idempotent method POST PATCH")
    rule = text.index("http-request disable-l7-retry if releasegate_non_idempotent")
    assert acl < rule


def test_every_request_is_logged_into_the_traffic_ring(tmp_path: Path) -> None:
    text = generate_config(settings_for(tmp_path, router="traffic_ring_size = 65536"))
    ring = text.index(f"ring {TRAFFIC_RING}\n")
    assert "    format raw\n    maxlen 256\n    size 65536\n" in text[ring:]
    frontend = text[text.index("frontend notes-in") : text.index("backend notes")]
    assert f"    log ring@{TRAFFIC_RING} format raw local0 info\n" in frontend
    assert f'    log-format "{TRAFFIC_LOG_FORMAT}"\n' in frontend
    assert "    option dontlognull\n" in frontend


def test_the_sticky_cookie_holds_only_while_both_colors_take_traffic(tmp_path: Path) -> None:
    text = generate_config(settings_for(tmp_path))
    backend = text[text.index("backend notes") :]
    for color in ("blue", "green"):
        assert (
            f"use-server {color} if {{ nbsrv ge 2 }} {{ req.cook(RGCOLOR) -m str {color} }}"
            in backend
        )
    assert 'add-header Set-Cookie "RGCOLOR=%[srv_name]; Path=/; HttpOnly; SameSite=Lax"' in backend
    assert "if { nbsrv ge 2 } !{ var(txn.sticky_color),strcmp(txn.served_color) eq 0 }" in backend
    # The cookie rules come before the servers, and HAProxy's own cookie persistence
    # (which honours a draining server) is not used.
    assert backend.index("use-server") < backend.index("server blue")
    assert "\n    cookie " not in backend


@pytest.mark.parametrize("size", ["1000", "2147483648"])
def test_the_traffic_ring_size_is_bounded(tmp_path: Path, size: str) -> None:
    with pytest.raises(ConfigError, match=r"router\.traffic_ring_size"):
        settings_for(tmp_path, router=f"traffic_ring_size = {size}")


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_generated_config_passes_haproxy_check(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, router='runtime_dir = "rt"')
    config = tmp_path / "haproxy.cfg"
    config.write_text(generate_config(settings))
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Configuration file is valid" in result.stdout
    assert "[ALERT]" not in result.stderr


def test_same_port_for_both_colors_is_a_config_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, deploy="blue_port = 7000\ngreen_port = 7000")
    with pytest.raises(ConfigError, match="both 7000"):
        generate_config(settings)


def test_a_deep_runtime_dir_keeps_its_socket_in_a_short_folder(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, router=f'runtime_dir = "{"d" * 120}"')
    paths = router_config(settings).paths
    assert paths.config.parent == paths.runtime_dir  # everything else stays there
    assert len(str(paths.socket).encode()) <= MAX_SOCKET_PATH
    assert paths.socket.parent != paths.runtime_dir
    # One short folder per runtime directory, the same every time.
    again = router_config(settings_for(tmp_path, router=f'runtime_dir = "{"d" * 120}"'))
    other = router_config(settings_for(tmp_path, router=f'runtime_dir = "{"e" * 120}"'))
    assert again.paths.socket == paths.socket != other.paths.socket


def test_a_short_runtime_dir_holds_its_socket(tmp_path: Path) -> None:
    paths = router_config(settings_for(tmp_path, router='runtime_dir = "rt"')).paths
    assert paths.socket == tmp_path / "rt" / "admin.sock"


def test_a_remote_docker_host_keeps_the_router_files_in_its_volume(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text('[service]\nname = "notes"\n\n[router]\nruntime_dir = "rt"\n')
    remote = load_config(path, env={"DOCKER_HOST": "ssh://deploy@203.0.113.7"})
    config = router_config(remote)
    assert config.paths.runtime_dir == REMOTE_RUNTIME_DIR
    assert f"stats socket '{REMOTE_RUNTIME_DIR}/admin.sock'" in render_config(config)
    # HAProxy on this machine could not serve the remote host's colors.
    with pytest.raises(ConfigError, match=r'router\.mode = "container"'):
        runner_for(remote, config)
    assert not (tmp_path / "rt").exists()


def test_path_with_a_quote_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, router='runtime_dir = "it\'s"')
    with pytest.raises(ConfigError, match="quote"):
        generate_config(settings)


@pytest.mark.parametrize(
    ("router", "key"),
    [
        ('bind = "127.0.0.1:80 ssl"', "router.bind"),
        ('health_path = "healthz"', "router.health_path"),
        ('health_path = "/a b"', "router.health_path"),
        ('check_interval = "0ms"', "router.check_interval"),
        ('mode = "k8s"', "router.mode"),
    ],
)
def test_router_keys_are_validated(tmp_path: Path, router: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        settings_for(tmp_path, router=router)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1.0, "1s"), (0.25, "250ms"), (30.0, "30s"), (0.0001, "1ms"), (1.5, "1500ms")],
)
def test_haproxy_duration(seconds: float, text: str) -> None:
    assert haproxy_duration(seconds) == text


# -- the saved server state -----------------------------------------------------------

STATE_HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
    " srv_iweight srv_time_since_last_change srv_check_status srv_check_result"
    " srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id"
    " srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr"
    " srv_agent_port"
)
STATE_AFTER_PROMOTE = f"""1
{STATE_HEADER}
3 notes 1 blue 127.0.0.1 2 8 0 100 1 15 3 2 6 0 0 0 - 18081 - 0 0 - - 0
3 notes 2 green 127.0.0.1 2 0 100 0 0 15 3 2 6 0 0 0 - 18082 - 0 0 - - 0

"""


def test_saved_state_is_kept_when_addresses_match(tmp_path: Path) -> None:
    config = router_config(settings_for(tmp_path))
    kept = filter_state_file(STATE_AFTER_PROMOTE, config)
    assert kept is not None
    assert kept.splitlines()[0] == "1"
    assert [line.split()[3] for line in kept.splitlines()[2:]] == ["blue", "green"]


def test_saved_state_is_dropped_when_a_port_changed(tmp_path: Path) -> None:
    config = router_config(settings_for(tmp_path, deploy="green_port = 18090"))
    assert filter_state_file(STATE_AFTER_PROMOTE, config) is None


def test_saved_state_of_another_service_or_format_is_ignored(tmp_path: Path) -> None:
    config = router_config(settings_for(tmp_path))
    assert filter_state_file(STATE_AFTER_PROMOTE.replace(" notes ", " other "), config) is None
    assert filter_state_file("2\n" + STATE_AFTER_PROMOTE[2:], config) is None
    assert filter_state_file("", config) is None


# -- runtime API answers --------------------------------------------------------------


def test_parse_servers_state() -> None:
    blue, green = parse_servers_state(STATE_AFTER_PROMOTE)
    assert (blue.backend, blue.name, blue.address, blue.port) == (
        "notes",
        "blue",
        "127.0.0.1",
        18081,
    )
    assert (blue.admin, blue.weight, blue.initial_weight, blue.op_state) == (
        "drain",
        0,
        100,
        "running",
    )
    assert (green.admin, green.weight, green.initial_weight) == ("ready", 100, 0)


def test_parse_servers_state_rejects_an_error_answer() -> None:
    with pytest.raises(InfraError, match="Can't find backend"):
        parse_servers_state("Can't find backend.\n\n")


@pytest.mark.parametrize(
    ("bits", "state"),
    [
        (0, "ready"),
        (0x08, "drain"),
        (0x10, "drain"),
        (0x01, "maint"),
        (0x09, "maint"),
        (0x20, "maint"),
    ],
)
def test_admin_state_bits(bits: int, state: str) -> None:
    assert admin_state(bits) == state


STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,"
    "hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,"
    "req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,"
    "qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,\n"
    "notes,blue,0,0,3,5,,812,0,0,,0,,0,0,0,0,UP,100,1,0,1,1,1,0,,1,3,1,,0,,2,0,,0,L7OK,200,1,"
    "0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,\n"
    'notes,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,"DOWN 1/2",0,1,0,1,1,0,1,,1,3,2,,0,,2,0,,0,'
    "L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Connection refused,,\n\n"
)


def test_parse_stat_csv() -> None:
    blue, green = parse_stat_csv(STAT)
    assert (blue["pxname"], blue["svname"], blue["status"], blue["scur"], blue["stot"]) == (
        "notes",
        "blue",
        "UP",
        "3",
        "812",
    )
    assert blue["check_status"] == "L7OK"
    assert blue["check_desc"] == "Layer7 check passed"
    assert (green["status"], green["check_status"], green["check_desc"]) == (
        "DOWN 1/2",
        "L4CON",
        "Connection refused",
    )


def test_parse_stat_csv_needs_a_header() -> None:
    with pytest.raises(InfraError, match="show stat"):
        parse_stat_csv("Unknown command.\n\n")


def test_parse_info() -> None:
    info = parse_info("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 4242\nUptime_sec: 7\n\n")
    assert info["Pid"] == "4242"
    assert info["Version"] == "2.6.12-1+deb12u4"


def test_split_answers_maps_each_complaint_to_its_command() -> None:
    answers = split_answers("\nNo such server.\n\n10 (initial 0)\n\n", 3)
    assert answers == ["", "No such server.", "10 (initial 0)"]
    assert split_answers("\n\n\n", 3) == ["", "", ""]


# -- live color and switch commands ---------------------------------------------------


def color(name: str, admin: str = "ready", weight: int = 0) -> ColorState:
    return ColorState(
        color=name,
        address="127.0.0.1:1",
        admin=admin,  # type: ignore[arg-type]
        op_state="running",
        status="UP",
        weight=weight,
        check="L7OK 200",
        check_passed=True,
        sessions=0,
        total=0,
    )


def state(blue: ColorState, green: ColorState) -> RouterState:
    return RouterState(backend="notes", socket="s", colors={"blue": blue, "green": green})


def test_live_color_is_the_ready_color_with_weight() -> None:
    initial = state(color("blue", weight=100), color("green", weight=0))
    assert (initial.live, initial.standby, initial.canary) == ("blue", "green", None)
    promoted = state(color("blue", "drain", 0), color("green", weight=100))
    assert (promoted.live, promoted.standby) == ("green", "blue")
    # A drained color with weight left is not live.
    draining = state(color("blue", "drain", 100), color("green", weight=100))
    assert draining.live == "green"
    assert draining.weights == {"blue": 0, "green": 100}


def test_canary_keeps_the_heavier_color_live() -> None:
    canary = state(color("blue", weight=90), color("green", weight=10))
    assert (canary.live, canary.standby, canary.canary) == ("blue", "green", "green")


def test_no_live_color_when_nothing_or_a_tie_serves() -> None:
    assert state(color("blue", weight=50), color("green", weight=50)).live is None
    assert state(color("blue", "maint", 100), color("green", weight=0)).live is None


def test_switch_commands_raise_before_they_lower() -> None:
    commands = switch_commands("notes", {"blue": 0, "green": 100}, {"blue"})
    assert commands == [
        "set server notes/green state ready",
        "set server notes/green weight 100",
        "set server notes/blue weight 0",
        "set server notes/blue state drain",
    ]
    canary = switch_commands("notes", {"blue": 90, "green": 10}, set())
    assert canary == [
        "set server notes/blue state ready",
        "set server notes/blue weight 90",
        "set server notes/green state ready",
        "set server notes/green weight 10",
    ]


def test_render_config_is_deterministic(tmp_path: Path) -> None:
    config = router_config(settings_for(tmp_path))
    assert render_config(config) == render_config(config)
