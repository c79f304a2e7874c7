"""A small client for the HAProxy runtime API (the admin ``stats socket``).

Each call opens the unix socket, sends one line and reads the answer until HAProxy
closes the connection. One line may hold several commands separated by ``;``
(:meth:`RuntimeClient.run_batch`): HAProxy runs them back to back, which is how the
router switches traffic in a single round trip. Every answer of HAProxy ends with an
empty line; commands that change state answer nothing else when they succeed.

Reference: https://docs.haproxy.org/2.6/management.html#9.3
"""

from __future__ import annotations

import csv
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from releasegate.errors import InfraError

AdminState = Literal["ready", "drain", "maint"]
Health = Literal["up", "stopping", "down"]

# srv_op_state in ``show servers state`` (enum srv_state in HAProxy's server-t.h).
OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
# srv_admin_state bits (enum srv_admin in HAProxy's server-t.h).
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, fqdn
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited


def admin_state(bits: int) -> AdminState:
    """The administrative state named by ``srv_admin_state`` flags."""
    if bits & _ADMIN_MAINT:
        return "maint"
    if bits & _ADMIN_DRAIN:
        return "drain"
    return "ready"


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state``."""

    backend: str
    name: str
    address: str
    port: int
    op_state: str  # stopped, starting, running or stopping
    admin: AdminState
    weight: int  # the user weight the runtime API sets
    initial_weight: int

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> ServerState:
        try:
            return cls(
                backend=fields["be_name"],
                name=fields["srv_name"],
                address=fields["srv_addr"],
                port=int(fields["srv_port"]),
                op_state=OP_STATES.get(int(fields["srv_op_state"]), "unknown"),
                admin=admin_state(int(fields["srv_admin_state"])),
                weight=int(fields["srv_uweight"]),
                initial_weight=int(fields["srv_iweight"]),
            )
        except (KeyError, ValueError) as exc:
            raise InfraError(f"unexpected 'show servers state' line from HAProxy: {exc}") from None


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse the answer of ``show servers state`` (format version 1)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    if lines[0].strip() != "1":
        raise InfraError(
            f"unsupported 'show servers state' format from HAProxy: {lines[0].strip()[:60]!r}"
        )
    columns: list[str] = []
    servers = []
    for line in lines[1:]:
        if line.startswith("#"):
            columns = line.lstrip("# ").split()
            continue
        if not columns:
            raise InfraError("'show servers state' from HAProxy has no header line")
        servers.append(ServerState.from_fields(dict(zip(columns, line.split(), strict=False))))
    return servers


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Parse the CSV answer of ``show stat``: one dict per proxy or server row."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise InfraError("unexpected 'show stat' answer from HAProxy (no CSV header)")
    header = next(csv.reader([lines[0][2:]]))
    rows = []
    for values in csv.reader(lines[1:]):
        rows.append({key: value for key, value in zip(header, values, strict=False) if key})
    return rows


def parse_info(text: str) -> dict[str, str]:
    """Parse the ``Name: value`` lines of ``show info``."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def split_answers(text: str, count: int) -> list[str]:
    """Split the answer to ``count`` ``;``-separated commands into one answer each.

    Every answer is its body followed by an empty line; a body is empty or ends with a
    newline and holds no empty line itself (true of the commands the router batches).
    """
    answers = []
    rest = text
    for _ in range(count):
        if rest.startswith("\n"):
            answers.append("")
            rest = rest[1:]
            continue
        end = rest.find("\n\n")
        if end < 0:
            answers.append(rest.strip())
            rest = ""
            continue
        answers.append(rest[:end].strip())
        rest = rest[end + 2 :]
    return answers


class RuntimeClient:
    """The runtime API of one HAProxy process, reached through its admin unix socket."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def raw(self, line: str) -> str:
        """Send one line (one or more ``;``-separated commands) and return the answer."""
        if "\n" in line or "\r" in line:
            raise ValueError("a runtime API command is one line")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except TimeoutError:
            raise InfraError(
                f"HAProxy runtime API at {self.socket_path} did not answer within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InfraError(
                f"HAProxy runtime API unreachable at {self.socket_path}: {reason}"
                " (is the router running?)"
            ) from None
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str) -> str:
        """Run a command that prints something and return its output."""
        return self.raw(command)

    def query(self, commands: list[str]) -> list[str]:
        """Run read-only commands in one round trip; one answer per command.

        Only for commands whose answer holds no empty line (``show servers state``,
        ``show stat``, ``show info``, ``get weight``).
        """
        for command in commands:
            if ";" in command:
                raise ValueError(f"a batched command cannot contain ';': {command!r}")
        return split_answers(self.raw("; ".join(commands)), len(commands))

    def run(self, command: str) -> None:
        """Run a command that changes state; :class:`InfraError` if HAProxy objects."""
        self.run_batch([command])

    def run_batch(self, commands: list[str]) -> None:
        """Run state-changing commands in one round trip, in order.

        HAProxy runs each of them even when an earlier one fails; every complaint is
        collected into one :class:`InfraError`.
        """
        if not commands:
            return
        for command in commands:
            if ";" in command:
                raise ValueError(f"a batched command cannot contain ';': {command!r}")
        answers = split_answers(self.raw("; ".join(commands)), len(commands))
        problems = [
            f"'{command}': {' '.join(answer.split())}"
            for command, answer in zip(commands, answers, strict=True)
            if answer
        ]
        if problems:
            raise InfraError("HAProxy refused " + "; ".join(problems))

    # -- reading ----------------------------------------------------------------------

    def show_info(self) -> dict[str, str]:
        """``show info``: process-wide figures (Pid, Version, Uptime_sec, ...)."""
        return parse_info(self.command("show info"))

    def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        """``show servers state [<backend>]``: admin/operational state and weights."""
        return parse_servers_state(
            self.command("show servers state" + (f" {backend}" if backend else ""))
        )

    def show_stat(
        self, proxy: str | None = None, servers_only: bool = False
    ) -> list[dict[str, str]]:
        """``show stat``: the statistics CSV (status, weight, check, sessions, ...)."""
        command = "show stat"
        if proxy is not None:
            command += f" {proxy} {4 if servers_only else -1} -1"
        elif servers_only:
            command += " -1 4 -1"
        return parse_stat_csv(self.command(command))

    def get_weight(self, backend: str, server: str) -> tuple[int, int]:
        """``get weight``: (current, initial) weight of a server."""
        answer = self.command(f"get weight {backend}/{server}").strip()
        current, _, rest = answer.partition(" (initial ")
        try:
            return int(current), int(rest.rstrip(")"))
        except ValueError:
            raise InfraError(
                f"HAProxy refused 'get weight {backend}/{server}': {' '.join(answer.split())}"
            ) from None

    # -- changing ---------------------------------------------------------------------

    def set_state(self, backend: str, server: str, state: AdminState) -> None:
        """``set server <be>/<srv> state ready|drain|maint``."""
        self.run(set_state_command(backend, server, state))

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """``set server <be>/<srv> weight N`` (0 to 256)."""
        self.run(set_weight_command(backend, server, weight))

    def set_health(self, backend: str, server: str, health: Health) -> None:
        """``set server <be>/<srv> health up|stopping|down`` (until the next check)."""
        self.run(f"set server {backend}/{server} health {health}")

    def enable_server(self, backend: str, server: str) -> None:
        """``enable server``: leave maintenance (the same as ``state ready``)."""
        self.run(f"enable server {backend}/{server}")

    def disable_server(self, backend: str, server: str) -> None:
        """``disable server``: enter maintenance (the same as ``state maint``)."""
        self.run(f"disable server {backend}/{server}")


def set_state_command(backend: str, server: str, state: AdminState) -> str:
    return f"set server {backend}/{server} state {state}"


def set_weight_command(backend: str, server: str, weight: int) -> str:
    if not 0 <= weight <= 256:
        raise ValueError(f"an HAProxy weight is between 0 and 256, not {weight}")
    return f"set server {backend}/{server} weight {weight}"
