"""The simulated remote host (scripts/lib/remote-host.sh) for the remote benchmarks.

The host must be running: ``source`` the env file of the instance to use (or none, for
the default one) and start it as docs/remote-host.md says. Its facts come from the env
file the script writes, read by the tests' own helper (``tests/remote_host.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _common import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))

from remote_host import RemoteHost, load_on_remote, read_remote_host, ssh_env

__all__ = ["RemoteHost", "load_on_remote", "namespace_cmd", "remote_host", "ssh_env"]


def remote_host() -> RemoteHost:
    """The running simulated host named by ``RELEASEGATE_REMOTE_STATE_DIR`` (exits if none)."""
    if os.geteuid() != 0:
        sys.exit("the simulated remote host needs root")
    state_dir = Path(
        os.environ.get("RELEASEGATE_REMOTE_STATE_DIR", "/var/lib/releasegate/remote-host")
    )
    if not (state_dir / "remote-host.env").is_file():
        sys.exit(
            f"no simulated remote host in {state_dir}: start it first"
            " (bash -c 'source scripts/lib/remote-host.sh; start_remote_host')"
        )
    host = read_remote_host(state_dir)
    if not Path("/var/run/netns", host.namespace).exists():
        sys.exit(f"the remote host's namespace {host.namespace} is gone: start the host again")
    return host


def namespace_cmd(host: RemoteHost, *cmd: str) -> list[str]:
    """``cmd`` run inside the remote host's network namespace (as a process of that host)."""
    return ["nsenter", f"--net=/var/run/netns/{host.namespace}", *cmd]
