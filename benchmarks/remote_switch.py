"""Blue/green switches through a router on the simulated remote host, driven over ssh.

The router is HAProxy in a container on the remote host's engine (``router.mode =
"container"``, ``DOCKER_HOST=ssh://``), bound to the host's own address; its runtime API
is the admin socket in the router's volume, forwarded to this machine over the one ssh
connection of :mod:`releasegate.hosts`. The two backends are the minimal ASGI app of
``router_switch.py``, run inside the host's network namespace on its loopback, where the
router's health checks and traffic reach them.

The measurements are those of ``router_switch.py``, over that path:

1. **Capacity** through the router at the host's address (``wrk`` on this machine).
2. **Zero-downtime switch:** ``--cycles`` promote/rollback cycles under ``wrk`` paced at
   ``--fraction`` of that capacity (target: 0 failed requests).
3. **Switch latency:** ``promote()`` called here (its tunnel already open, as within a
   release) -> every new request on green, seen by pollers that open fresh connections
   to the host's address; p50 and max, idle and under load (target: p50 < 100 ms).
4. **Where the time goes:** the parts of one promote over ssh (finding the admin socket,
   reading the state, the switch itself, reading it back), and ``releasegate router
   promote`` as a command of its own (a new process, so a new ssh connection), in both
   cases against the same router on this machine's loopback for comparison.

Traffic goes only to 127.0.0.1 and the remote host's address; every run is bounded.
The router, its volume and the backends are removed at the end.

python benchmarks/remote_switch.py [--cycles 20] [--fraction 0.8] [--commands 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import BIN, REPO_ROOT, checkout_env, free_port
from _remote import RemoteHost, load_on_remote, namespace_cmd, remote_host, ssh_env
from router_switch import COLOR_ENV, add_arguments, describe, measure_switches

SERVICE = "rgswitch"


@contextmanager
def namespace_backends(host: RemoteHost, ports: dict[str, int]) -> Iterator[None]:
    """The two colors, on the remote host's loopback (its namespace) at ``ports``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for color, port in ports.items():
            cmd = [sys.executable, "-m", "uvicorn", "router_switch:app"]
            cmd += ["--app-dir", str(Path(__file__).parent), "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--lifespan", "off", "--no-access-log"]
            cmd += ["--log-level", "warning"]
            env = {**os.environ, COLOR_ENV: color}
            procs.append(subprocess.Popen(namespace_cmd(host, *cmd), env=env))
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def router_settings(
    folder: Path, env: dict[str, str], bind: str, ports: dict[str, int], image: str | None = None
) -> Any:
    """A router of its own in ``folder``: in a container of ``image`` if given, else host mode."""
    from releasegate.config import load_config

    mode = f'mode = "container"\nimage = "{image}"\n' if image else ""
    config = folder / "releasegate.toml"
    config.write_text(
        f'[service]\nname = "{SERVICE}"\n\n[deploy]\nblue_port = {ports["blue"]}\n'
        f'green_port = {ports["green"]}\n\n[router]\nbind = "{bind}"\n{mode}'
        'runtime_dir = "rt"\ncheck_interval = "1s"\nstop_timeout = "5s"\n'
    )
    return load_config(config, env=env)


def promote_parts(settings: Any, rounds: int) -> dict[str, list[float]]:
    """The parts of promote() timed one by one (blue live before each round, at the end)."""
    from releasegate.router.config import router_config
    from releasegate.router.process import runner_for
    from releasegate.router.runtime import RuntimeClient
    from releasegate.router.state import read_state
    from releasegate.router.switching import promote, rollback, switch_commands

    config = router_config(settings)
    names = ("find the admin socket", "read the state", "switch (one batch)", "read back")
    parts: dict[str, list[float]] = {name: [] for name in (*names, "promote() whole")}
    to_green = switch_commands(config.backend, {"green": 100, "blue": 0}, {"blue"})
    to_blue = switch_commands(config.backend, {"blue": 100, "green": 0}, {"green"})
    for _ in range(rounds):
        laps = [time.perf_counter()]
        client = RuntimeClient(runner_for(settings, config).admin_socket())
        laps.append(time.perf_counter())
        read_state(client, config.backend, with_info=False)
        laps.append(time.perf_counter())
        client.run_batch(to_green)
        laps.append(time.perf_counter())
        read_state(client, config.backend)
        laps.append(time.perf_counter())
        for name, begin, end in zip(names, laps[:-1], laps[1:], strict=True):
            parts[name].append(end - begin)
        client.run_batch(to_blue)
        parts["promote() whole"].append(promote(settings, "green").duration_s)
        rollback(settings)
    return parts


def command_promotes(config: Path, env: dict[str, str], rounds: int) -> list[float]:
    """Wall time of ``releasegate router promote green`` (a new process each time)."""
    samples = []
    for _ in range(rounds):
        for color in ("green", "blue"):
            cmd = [str(BIN / "releasegate"), "--config", str(config), "router", "promote", color]
            started = time.perf_counter()
            done = subprocess.run(
                cmd, env=checkout_env(env), capture_output=True, text=True, timeout=120
            )
            if color == "green":
                samples.append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"router promote {color} failed: {done.stderr.strip()[-500:]}")
    return samples


def print_parts(label: str, parts: dict[str, list[float]]) -> None:
    print(f"  {label}")
    for name, samples in parts.items():
        print(f"    {name:<24} {describe(samples)}")


@contextmanager
def running_router(settings: Any, host: RemoteHost | None = None) -> Iterator[None]:
    """The router of ``settings`` up with both colors healthy; down at the end, and its
    volume on ``host`` removed (``router down`` keeps it)."""
    from releasegate.router.manager import router_down, router_up
    from releasegate.router.state import wait_healthy

    router_up(settings)
    try:
        wait_healthy(settings, ["blue", "green"], timeout=30)
        yield
    finally:
        router_down(settings, forget=True)
        if host is not None:
            host.docker("volume", "rm", "--force", f"releasegate-router-{SERVICE}")


def compare_with_loopback(
    args: argparse.Namespace, folder: Path
) -> tuple[dict[str, list[float]], list[float]]:
    """The same parts and command against a host-mode router on this machine's loopback."""
    from router_switch import backends

    with backends() as ports:
        settings = router_settings(folder / "local", {}, f"127.0.0.1:{free_port()}", ports)
        with running_router(settings):
            parts = promote_parts(settings, args.commands * 2)
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("RELEASEGATE_", "DOCKER_"))
            }
            commands = command_promotes(settings.path, env, args.commands)
    return parts, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    # ssh, sshd and the pollers take more CPU from wrk here than on the loopback path.
    parser.set_defaults(pace_margin=1.3)
    parser.add_argument("--commands", type=int, default=5, help="`router promote` commands timed")
    parser.add_argument("--port-base", type=int, default=19280, help="router; colors +1, +2")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from conftest import local_haproxy_image

    host = remote_host()
    router_image = local_haproxy_image()
    load_on_remote(host, router_image)
    ports = {"blue": args.port_base + 1, "green": args.port_base + 2}
    env = ssh_env(host)
    bind = f"{host.address}:{args.port_base}"
    with tempfile.TemporaryDirectory(prefix="rgbench-remote-") as tmp:
        folder = Path(tmp)
        (folder / "remote").mkdir()
        (folder / "local").mkdir()
        settings = router_settings(folder / "remote", env, bind, ports, router_image)
        with namespace_backends(host, ports), running_router(settings, host):
            print(
                f"router {bind} (container on {host.docker_host}) -> blue :{ports['blue']},"
                f" green :{ports['green']} on the host's loopback"
            )
            idle, loaded = measure_switches(settings, host.address, args.port_base, folder, args)
            remote_parts = promote_parts(settings, args.commands * 2)
            remote_commands = command_promotes(settings.path, env, args.commands)
        local_parts, local_commands = compare_with_loopback(args, folder)

    p50 = statistics.median(s.to_target for s in idle + loaded)
    print(f"  target p50 < 100 ms: {'met' if p50 < 0.1 else 'MISSED'} (p50 {p50 * 1000:.1f} ms)")
    print()
    print("where the time of a promote goes (tunnel open, blue live before each)")
    print_parts(f"over ssh ({host.docker_host})", remote_parts)
    print_parts("host-mode router on this machine's loopback", local_parts)
    print()
    print("`releasegate router promote green` as a command (new process, new connection)")
    print(f"  over ssh             {describe(remote_commands)}")
    print(f"  loopback             {describe(local_commands)}")
    ratio = statistics.median(remote_commands) / statistics.median(local_commands)
    print(f"  ratio (p50)          {ratio:.2f}x")


if __name__ == "__main__":
    main()
