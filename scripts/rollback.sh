#!/usr/bin/env bash
# Roll back the last release (or the one named) and verify it: for CI workflows.
#   scripts/rollback.sh              the last release of the configured service, only while
#                                    it is the one serving (never an older good release)
#   scripts/rollback.sh RELEASE_ID   that release
# First finishes an interrupted release (releasegate release --resume) if there is one.
# Exit codes are releasegate's: 0 rolled back and verified, 4 a human is needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RG="${RELEASEGATE:-$ROOT/.venv/bin/releasegate}"
[ -x "$RG" ] || RG="$(command -v releasegate)"

# Only a release row is ever resumed (a restore or migrate row is not a release), whether
# the ledger shows it running or, its runner gone, interrupted.
if "$RG" history --json --kind release --limit 1 | grep -Eq '"outcome": "(running|interrupted)"'; then
  echo "an interrupted release is in the ledger: resuming it" >&2
  exec "$RG" release --resume
fi
if [ $# -gt 0 ]; then
  exec "$RG" rollback --to "$1"
fi
exec "$RG" rollback
