"""The host transport without a host: ssh's failures classified, DOCKER_HOST parsed,
the transport picked, the config keys validated."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError
from releasegate.hosts import ssh
from releasegate.hosts import transport as transport_module
from releasegate.hosts.ssh import SshTarget, SshTunnel, classify_ssh_error
from releasegate.hosts.transport import LocalHost, SshHost, close_ssh_hosts, transport

CHANGED_KEY = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for 10.231.0.2 has changed and you have requested strict checking.
Host key verification failed.
"""


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (CHANGED_KEY, "host key mismatch (not the key pinned for it)"),
        (
            "No ED25519 host key is known for 10.231.0.2 and you have requested strict"
            " checking.\nHost key verification failed.\n",
            "host key mismatch (no key is pinned for it)",
        ),
        (
            "root@10.231.0.2: Permission denied (publickey).\n",
            "wrong credentials (the key was refused)",
        ),
        (
            "ssh: connect to host 10.231.0.2 port 2222: Connection refused\n",
            "unreachable (connection refused)",
        ),
        (
            "ssh: connect to host 10.231.0.9 port 22: Connection timed out\n",
            "unreachable (connection timed out)",
        ),
        (
            "ssh: connect to host 10.9.0.1 port 22: No route to host\n",
            "unreachable (no route to host)",
        ),
        (
            "ssh: Could not resolve hostname deploy.invalid: Name or service not known\n",
            "unreachable (the name does not resolve)",
        ),
    ],
)
def test_ssh_failures_are_classified(stderr: str, reason: str) -> None:
    assert classify_ssh_error(stderr) == reason


def test_an_unknown_failure_gives_ssh_last_line_secrets_masked() -> None:
    stderr = "debug noise\nmux_client_forward: failed for https://ci:hunter2-x@reg.example/v2\n"
    reason = classify_ssh_error(stderr)
    assert reason.startswith("ssh failed: mux_client_forward: failed for https://ci:")
    assert "hunter2-x" not in reason
    assert classify_ssh_error("") == "ssh failed without a message"


@pytest.mark.parametrize(
    ("url", "target", "text"),
    [
        ("ssh://deploy@prod.example", SshTarget("prod.example", "deploy"), "deploy@prod.example"),
        (
            "ssh://deploy@10.0.0.5:2222",
            SshTarget("10.0.0.5", "deploy", 2222),
            "deploy@10.0.0.5:2222",
        ),
        ("ssh://prod.example/", SshTarget("prod.example"), "prod.example"),
    ],
)
def test_docker_host_urls_name_the_ssh_target(url: str, target: SshTarget, text: str) -> None:
    assert SshTarget.parse(url) == target
    assert str(target) == text


@pytest.mark.parametrize(
    "url",
    [
        "ssh://deploy:s3cr3t-pw@prod.example",
        "ssh://deploy@prod.example:notaport",
        "ssh://deploy@prod.example/var/run/docker.sock",
        "ssh://",
        "tcp://prod.example:2376",
    ],
)
def test_bad_docker_host_urls_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        SshTarget.parse(url)
    assert "s3cr3t" not in str(refused.value)
    assert "ssh://USER@HOST[:PORT]" in str(refused.value)


def test_key_file_paths_are_quoted_and_escaped_for_ssh(tmp_path: Path) -> None:
    odd = tmp_path / "a dir" / "100%key"
    assert ssh._ssh_path(odd) == f'"{tmp_path}/a dir/100%%key"'
    with pytest.raises(ConfigError, match="double quote"):
        ssh._ssh_path(tmp_path / 'say"hi')


def test_missing_key_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known_hosts not found"):
        SshTunnel(SshTarget("h"), known_hosts=tmp_path / "missing")
    with pytest.raises(ConfigError, match="identity file not found"):
        SshTunnel(SshTarget("h"), identity_file=tmp_path / "missing")


def settings_for(tmp_path: Path, extra: str = "", **env: str) -> Settings:
    path = tmp_path / "releasegate.toml"
    path.write_text(f'[service]\nname = "svc"\n{extra}')
    return load_config(path, env)


def test_defaults_keep_the_local_engine(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.raw.deploy.remote_docker_socket == "/var/run/docker.sock"
    assert settings.raw.ssh.known_hosts_env == "RELEASEGATE_SSH_KNOWN_HOSTS"
    assert settings.raw.ssh.identity_file_env == "RELEASEGATE_SSH_IDENTITY_FILE"
    assert settings.raw.ssh.connect_timeout == 10.0
    assert isinstance(transport(settings), LocalHost)
    unix = settings_for(tmp_path, DOCKER_HOST="unix:///var/run/docker.sock")
    assert isinstance(transport(unix), LocalHost)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('[deploy]\nremote_docker_socket = "run/docker.sock"\n', "deploy.remote_docker_socket"),
        ('[deploy]\nremote_docker_socket = "/a:b"\n', "deploy.remote_docker_socket"),
        ('[ssh]\nknown_hosts_env = "/root/.ssh/known_hosts"\n', "ssh.known_hosts_env"),
        ('[ssh]\nconnect_timeout = "0s"\n', "ssh.connect_timeout"),
        ('[ssh]\nuser = "root"\n', "unknown key 'ssh.user'"),
    ],
)
def test_bad_transport_settings_are_refused(tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        settings_for(tmp_path, extra)


def test_an_ssh_docker_host_gets_one_tunnel_per_process(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    env = {
        "DOCKER_HOST": "ssh://deploy@10.0.0.5:2222",
        "PINNED": str(known_hosts),
        "RELEASEGATE_DEPLOY__REMOTE_DOCKER_SOCKET": "/run/engine.sock",
    }
    settings = settings_for(tmp_path, '[ssh]\nknown_hosts_env = "PINNED"\n', **env)
    try:
        host = transport(settings)
        assert isinstance(host, SshHost)
        assert host.describe() == "deploy@10.0.0.5:2222 over ssh"
        assert host.remote_docker_socket == "/run/engine.sock"
        assert host.tunnel.known_hosts == known_hosts
        assert host.tunnel.identity_file is None
        # Nothing connects before the first use, and later calls share the tunnel.
        assert not host.tunnel.is_open
        assert transport(settings) is host
    finally:
        close_ssh_hosts()


def test_local_color_urls_and_port_probe(tmp_path: Path) -> None:
    local = LocalHost()
    assert local.color_url(18181) == "http://127.0.0.1:18181"
    assert local.color_url(18181, "0.0.0.0") == "http://127.0.0.1:18181"
    assert local.color_url(18181, "10.1.2.3") == "http://10.1.2.3:18181"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert local.port_in_use("127.0.0.1", port)
    assert not local.port_in_use("127.0.0.1", port)


def test_a_store_via_ssh_needs_an_ssh_docker_host(tmp_path: Path) -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:5432/app"
    settings = settings_for(tmp_path, "[postgres]\nvia_ssh = true\n", DATABASE_URL=url)
    with pytest.raises(ConfigError, match=r"postgres\.via_ssh = true needs DOCKER_HOST=ssh://"):
        settings.postgres_url()
    # Without via_ssh the URL is used as it is.
    assert settings_for(tmp_path, DATABASE_URL=url).postgres_url() == url


@pytest.mark.parametrize(
    ("url", "address", "moved"),
    [
        (
            "postgresql://app:s3cret-pw@127.0.0.1:5433/app?sslmode=disable",
            ("127.0.0.1", 5433),
            "postgresql://app:s3cret-pw@127.0.0.1:40123/app?sslmode=disable",
        ),
        (
            "postgresql://app@db.internal/app",
            ("db.internal", 5432),
            "postgresql://app@127.0.0.1:40123/app",
        ),
        (
            "redis://:s3cret-pw@10.0.0.5/3",
            ("10.0.0.5", 6379),
            "redis://:s3cret-pw@127.0.0.1:40123/3",
        ),
        ("http://qdrant:6333", ("qdrant", 6333), "http://127.0.0.1:40123"),
    ],
)
def test_store_urls_name_the_address_to_forward_to(
    url: str, address: tuple[str, int], moved: str
) -> None:
    assert transport_module._host_and_port(url, "postgres.via_ssh") == address
    # Only the address changes: credentials, database and options stay.
    assert transport_module._with_address(url, "127.0.0.1", 40123) == moved


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret-pw@a:5432,b:5432/app",
        "postgresql://app:s3cret-pw@/app?host=/run/postgresql",
        "postgresql://app:s3cret-pw@db:5432/app?host=elsewhere",
        "unknown://app:s3cret-pw@host/app",
    ],
)
def test_store_urls_that_cannot_be_forwarded_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="must name one host and port") as caught:
        transport_module._host_and_port(url, "postgres.via_ssh")
    assert "s3cret" not in str(caught.value)
