#!/usr/bin/env bash
# Installs releasegate from its own checkout (this script's repository, RG_TOOL in the
# workflows) into a virtualenv of its own, .releasegate/venv in the service's workspace,
# and puts it on the job's PATH. The dev extras come only with seed: example (the example's
# seed script needs them). Under act the runner image sets PIP_NO_INDEX and PIP_FIND_LINKS
# to its wheelhouse, so nothing is downloaded.
set -euo pipefail
tool="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${RG_VENV:-$PWD/.releasegate/venv}"
extras=""
[ "${RG_SEED:-none}" = example ] && extras="[dev]"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install --quiet "$tool$extras"
if [ -n "${GITHUB_PATH:-}" ]; then echo "$venv/bin" >>"$GITHUB_PATH"; fi
"$venv/bin/releasegate" --version
