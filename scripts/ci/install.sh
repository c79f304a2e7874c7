#!/usr/bin/env bash
# Installs releasegate from the checkout into .venv (with dev extras: the example's seed
# script needs them). Under act the runner image sets PIP_NO_INDEX and PIP_FIND_LINKS to
# its wheelhouse, so nothing is downloaded.
set -euo pipefail
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$PWD/.venv/bin" >>"$GITHUB_PATH"
.venv/bin/releasegate --version 2>/dev/null || true
