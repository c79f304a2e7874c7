# shellcheck shell=bash
# Sourced by scripts/ci/*.sh: GitHub Actions workflow commands (::error::, ::add-mask::, ...)
# that no input can break out of. The runner reads a command from any line of a step's
# stdout or stderr that starts with `::`, so an input holding a newline could otherwise
# start a command of its own (`v1` LF `::add-mask::...`, `::stop-commands::...`).

# workflow_command COMMAND MESSAGE [NAME=VALUE ...]
# Prints one line `::COMMAND NAME=VALUE,...::MESSAGE`, escaped as the runner unescapes it:
# in the message % CR LF become %25 %0D %0A; in a property value also : and , (%3A %2C),
# which would end the value. A `::` inside the message needs nothing: the runner ends the
# command at the first `::` after its name and properties, and the rest of the line is data.
workflow_command() {
  local command="$1" message="$2" properties="" pair name value
  shift 2
  if ! [[ "$command" =~ ^[a-z][a-z-]*$ ]]; then
    echo "workflow_command: '$command' is not a command name" >&2
    return 2
  fi
  for pair in "$@"; do
    name="${pair%%=*}" value="${pair#*=}"
    if [[ "$pair" != *=* ]] || ! [[ "$name" =~ ^[A-Za-z]+$ ]]; then
      echo "workflow_command: property '$name' is not NAME=VALUE" >&2
      return 2
    fi
    value="${value//[%]/%25}" value="${value//$'\r'/%0D}" value="${value//$'\n'/%0A}"
    value="${value//:/%3A}" value="${value//,/%2C}"
    properties+="${properties:+,}$name=$value"
  done
  message="${message//[%]/%25}" message="${message//$'\r'/%0D}" message="${message//$'\n'/%0A}"
  printf '::%s%s::%s\n' "$command" "${properties:+ $properties}" "$message"
}

# one_line TEXT: TEXT with its line breaks shown as \r and \n, for a plain log line (an
# `error: ...` line on stderr) that quotes an input and must stay one line.
one_line() {
  local text="${1//$'\r'/\\r}"
  printf '%s' "${text//$'\n'/\\n}"
}

# report_error TITLE MESSAGE: the `error: ...` line on stderr and, under Actions or act,
# the same message as an annotation titled TITLE, both escaped.
report_error() {
  printf 'error: %s\n' "$(one_line "$2")" >&2
  if [ "${GITHUB_ACTIONS:-}" = true ] || [ "${ACT:-}" = true ]; then
    workflow_command error "$2" "title=$1"
  fi
}
