#!/usr/bin/env bash
# Records the release's outcome as the status of the job's GitHub deployment (the one the
# job's environment created for this commit), with a link to the run. Never under act.
set -euo pipefail
[ "${ACT:-}" = true ] && { echo "act: no deployments API"; exit 0; }
api="${GITHUB_API_URL:-https://api.github.com}/repos/${RG_REPOSITORY:?}"
auth=(-H "Authorization: Bearer ${GH_TOKEN:?}" -H "Accept: application/vnd.github+json")
id="$(curl -fsS "${auth[@]}" "$api/deployments?sha=${RG_SHA:?}&environment=${RG_ENVIRONMENT:?}&per_page=1" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[0]["id"] if d else "")')"
if [ -z "$id" ]; then
  id="$(curl -fsS "${auth[@]}" -X POST "$api/deployments" -d "$(python3 -c 'import json,os; print(json.dumps({"ref": os.environ["RG_SHA"], "environment": os.environ["RG_ENVIRONMENT"], "auto_merge": False, "required_contexts": []}))')" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
fi
case "${RG_OUTCOME:-}" in
  succeeded) state=success ;;
  dry_run) state=inactive ;;
  paused) state=in_progress ;;  # at a canary pause, waiting for the approval
  rolled_back | failed | blocked) state=failure ;;
  *) state=error ;;
esac
body="$(python3 -c 'import json,os,sys; print(json.dumps({"state": sys.argv[1], "log_url": os.environ["RG_RUN_URL"], "environment": os.environ["RG_ENVIRONMENT"], "description": ("releasegate: " + (os.environ.get("RG_OUTCOME") or "no outcome") + " (release " + (os.environ.get("RG_RELEASE_ID") or "?") + ")")[:140]}))' "$state")"
curl -fsS "${auth[@]}" -X POST "$api/deployments/$id/statuses" -d "$body" >/dev/null
echo "deployment $id: $state"
