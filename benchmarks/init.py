"""``releasegate init`` wall time on a small and a large repository. Target: < 2 s.

The small repository is a copy of the example service (examples/app); the large one is
the same with a source tree of many folders and files around it, a node_modules folder
and a deep tree, as a monorepo has. Each round runs ``releasegate init --force`` (every
file rendered and written again, as on a first run), alternating with ``python -c pass``.

python benchmarks/init.py [--rounds 10] [--folders 400] [--files-per-folder 25]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BIN, REPO_ROOT, alternate, run, summary

TARGET_S = 2.0


def small_repository(root: Path) -> Path:
    folder = root / "small"
    shutil.copytree(REPO_ROOT / "examples" / "app", folder)
    return folder


def large_repository(root: Path, folders: int, files_per_folder: int) -> tuple[Path, int]:
    """The example service in a big tree; the path and how many files it holds."""
    folder = root / "large"
    shutil.copytree(REPO_ROOT / "examples" / "app", folder / "services" / "notes")
    shutil.copy(REPO_ROOT / "examples" / "app" / "Dockerfile", folder / "Dockerfile")
    count = 0
    for i in range(folders):
        # Four levels deep, then deeper than init looks.
        leaf = folder / "src" / f"pkg{i % 20}" / f"mod{i}" / "deep" / "deeper" / "deepest"
        for part in (leaf.parents[2], leaf):
            part.mkdir(parents=True, exist_ok=True)
            for j in range(files_per_folder):
                (part / f"file{j}.py").write_text("x = 1\n")
                count += 1
    modules = folder / "web" / "node_modules"
    for i in range(folders):
        package = modules / f"package{i}"
        package.mkdir(parents=True)
        for j in range(files_per_folder):
            (package / f"index{j}.js").write_text("module.exports = 1;\n")
            count += 1
    return folder, count


def folders_read(releasegate: str, folder: Path) -> str:
    result = subprocess.run(
        [releasegate, "init", "--dir", str(folder), "--force", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(result.stdout)["detected"]["folders read"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--folders", type=int, default=400)
    parser.add_argument("--files-per-folder", type=int, default=25)
    args = parser.parse_args()
    releasegate = str(BIN / "releasegate")
    with tempfile.TemporaryDirectory(prefix="rg-bench-init-") as scratch:
        small = small_repository(Path(scratch))
        large, files = large_repository(Path(scratch), args.folders, args.files_per_folder)
        variants = {
            "python -c pass": lambda: run([sys.executable, "-c", "pass"]),
            "init, small repository": lambda: run(
                [releasegate, "init", "--dir", str(small), "--force"]
            ),
            "init, large repository": lambda: run(
                [releasegate, "init", "--dir", str(large), "--force"]
            ),
        }
        samples = alternate(args.rounds, variants)
        print(
            f"large repository: {files} files; init read {folders_read(releasegate, large)} folders"
        )
        print(f"small repository: init read {folders_read(releasegate, small)} folders")
    for name, values in samples.items():
        print(summary(name, values))
    slowest = max(statistics.median(samples[name]) for name in list(variants)[1:])
    print(f"releasegate init: {slowest:.3f} s at most (median)")
    print(f"target < {TARGET_S:.3f} s: {'met' if slowest < TARGET_S else 'MISSED'}")


if __name__ == "__main__":
    main()
