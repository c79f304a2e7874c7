"""Backup destinations: upload and download throughput of a 1 GB backup set, against the
plain tools.

One backup set (a 1 GB dump of incompressible bytes and its manifest) goes to each
destination and comes back, through the destination classes that ``backup create``,
``verify`` and ``restore`` use, built from a config as the CLI builds them:

- S3 (:class:`S3Bucket`): moto's S3 server (the stand-in the tests use) on a free port of
  127.0.0.1, against a plain boto3 ``upload_file`` / ``download_file`` of the same file;
- SFTP (:class:`SftpFolder`): the simulated remote host's sshd (scripts/lib/remote-host.sh,
  started when it is not running; its ``RELEASEGATE_REMOTE_*`` variables pick the
  instance), against ``scp`` of the same file with the same pinned host key and key.

The variants alternate, round after round, so that the load of a shared machine hits them
alike, and each pair (releasegate, the plain tool) swaps its order every other round, so
that neither always meets the colder cache or the emptier server; each figure is the
median. The ratio is releasegate's time over the plain tool's:
the target is at most 1.3x.

    python benchmarks/backup_destinations.py [--size-mb 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
from _common import REPO_ROOT, free_port

sys.path.insert(0, str(REPO_ROOT / "tests"))
from remote_host import read_remote_host

from releasegate.backup.destinations import Destination, destination_for
from releasegate.backup.manifest import MANIFEST_NAME
from releasegate.config import load_config

SET_ID = "20260101T000000.000Z"
DUMP = "postgres.dump"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "rg-bench-key",
    "AWS_SECRET_ACCESS_KEY": "rg-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TARGET_RATIO = 1.3


def make_set(folder: Path, size_mb: int) -> Path:
    """A set folder: ``size_mb`` MiB of random bytes (nothing to compress) and a manifest."""
    set_dir = folder / SET_ID
    set_dir.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with (set_dir / DUMP).open("wb") as out:
        for i in range(size_mb):
            # A different chunk each MiB, cheaply: no two blocks alike.
            out.write(i.to_bytes(8, "big") + chunk[8:])
    (set_dir / MANIFEST_NAME).write_text(json.dumps({"set_id": SET_ID}) + "\n")
    return set_dir


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def destination(folder: Path, url: str, env: dict[str, str], extra: str = "") -> Destination:
    """The destination the CLI builds from ``[backup] destination = url``."""
    config = folder / "releasegate.toml"
    config.write_text(
        f'[service]\nname = "bench"\n\n[backup]\ndir = "backups"\ndestination = "{url}"\n{extra}'
    )
    return destination_for(load_config(config, env))


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    port = free_port()
    with (log_dir / "moto.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("moto server did not start")
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def s3_variants(work: Path, set_dir: Path, endpoint: str) -> dict[str, Callable[[], float]]:
    plain: Any = boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=endpoint)
    plain.create_bucket(Bucket="bench")
    bucket = destination(
        work,
        "s3://bench/sets",
        {**CREDENTIALS, "BENCH_S3": endpoint},
        'endpoint_url_env = "BENCH_S3"\n',
    )
    downloads = work / "s3-downloads"
    file = str(set_dir / DUMP)

    def ours_up() -> float:
        return timed(lambda: bucket.put_set(set_dir, SET_ID))

    def ours_down() -> float:
        into = fresh(downloads)
        took = timed(lambda: bucket.get_set(SET_ID, into))
        shutil.rmtree(into)
        bucket.delete_set(SET_ID)  # the next round uploads again
        return took

    def plain_up() -> float:
        return timed(lambda: plain.upload_file(file, "bench", "plain/" + DUMP))

    def plain_down() -> float:
        target = fresh(downloads) / DUMP
        took = timed(lambda: plain.download_file("bench", "plain/" + DUMP, str(target)))
        shutil.rmtree(downloads)
        plain.delete_object(Bucket="bench", Key="plain/" + DUMP)
        return took

    return {
        "s3 upload: releasegate": ours_up,
        "s3 upload: boto3 upload_file": plain_up,
        "s3 download: releasegate": ours_down,
        "s3 download: boto3 download_file": plain_down,
    }


def remote_host() -> Any:
    """The simulated remote host the environment selects, started if it is not running."""
    started = subprocess.run(
        ["bash", "-c", f'source "{REPO_ROOT}/scripts/lib/remote-host.sh"; start_remote_host'],
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        sys.exit(f"start_remote_host failed:\n{started.stderr[-2000:]}")
    state = Path(os.environ.get("RELEASEGATE_REMOTE_STATE_DIR", "/var/lib/releasegate/remote-host"))
    return read_remote_host(state)


def sftp_variants(work: Path, set_dir: Path, host: Any) -> dict[str, Callable[[], float]]:
    # The namespace shares this machine's file systems: a folder here is one there.
    remote = fresh(work / "backup-host")
    folder = destination(
        work,
        f"sftp://{host.ssh_user}@{host.address}{remote}",
        {
            "RELEASEGATE_SSH_KNOWN_HOSTS": str(host.known_hosts),
            "RELEASEGATE_SSH_IDENTITY_FILE": str(host.ssh_key),
        },
    )
    scp = [
        "scp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"IdentityFile={host.ssh_key}", "-o", "IdentitiesOnly=yes",
    ]  # fmt: skip
    downloads = work / "sftp-downloads"
    at_host = f"{host.ssh_user}@{host.address}:{remote}/plain-{DUMP}"

    def ours_up() -> float:
        return timed(lambda: folder.put_set(set_dir, SET_ID))

    def ours_down() -> float:
        into = fresh(downloads)
        took = timed(lambda: folder.get_set(SET_ID, into))
        shutil.rmtree(into)
        folder.delete_set(SET_ID)
        return took

    def plain_up() -> float:
        return timed(lambda: subprocess.run([*scp, str(set_dir / DUMP), at_host], check=True))

    def plain_down() -> float:
        target = fresh(downloads) / DUMP
        took = timed(lambda: subprocess.run([*scp, at_host, str(target)], check=True))
        shutil.rmtree(downloads)
        (remote / f"plain-{DUMP}").unlink()
        return took

    return {
        "sftp upload: releasegate": ours_up,
        "sftp upload: scp": plain_up,
        "sftp download: releasegate": ours_down,
        "sftp download: scp": plain_down,
    }


def swapping_rounds(
    rounds: int, variants: dict[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """Each variant once a round, in the given order on even rounds and with each pair
    (an upload or download by releasegate, then by the plain tool) swapped on odd ones;
    every time is printed as it ends (a round of 1 GB transfers takes minutes)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    pairs = [names[i : i + 2] for i in range(0, len(names), 2)]
    for number in range(rounds):
        print(f"round {number + 1}", flush=True)
        for pair in pairs:
            for name in reversed(pair) if number % 2 else pair:
                took = variants[name]()
                print(f"  {name}: {took:.2f} s", flush=True)
                samples[name].append(took)
    return samples


def report(samples: dict[str, list[float]], size_mb: int) -> None:
    medians = {name: statistics.median(times) for name, times in samples.items()}
    print(f"\n{'variant':<36}{'median s':>10}{'MB/s':>10}{'min s':>9}{'max s':>9}")
    for name, times in samples.items():
        rate = size_mb * 1.048576 / medians[name]
        print(f"{name:<36}{medians[name]:>10.2f}{rate:>10.1f}{min(times):>9.2f}{max(times):>9.2f}")
    print()
    names = list(samples)
    for ours, plain in zip(names[::2], names[1::2], strict=True):
        ratio = medians[ours] / medians[plain]
        verdict = "ok" if ratio <= TARGET_RATIO else f"above the {TARGET_RATIO}x target"
        print(f"{ours} / {plain.split(': ')[1]}: {ratio:.2f}x ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the set's dump")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=("s3", "sftp"), help="one destination only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rg-bench-dest-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        print(f"a backup set of {args.size_mb} MiB, {args.rounds} round(s)", flush=True)
        set_dir = make_set(work / "set", args.size_mb)
        variants: dict[str, Callable[[], float]] = {}
        with moto_server(work) as endpoint:
            if args.only != "sftp":
                variants |= s3_variants(work, set_dir, endpoint)
            if args.only != "s3":
                variants |= sftp_variants(work, set_dir, remote_host())
            samples = swapping_rounds(args.rounds, variants)
        report(samples, args.size_mb)


if __name__ == "__main__":
    main()
