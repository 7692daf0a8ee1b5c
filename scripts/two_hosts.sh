#!/usr/bin/env bash
# Thin wrapper over the `llamdex` verbs that run the provider and the client on two hosts (docs/SEPARATE_HOSTS.md).
# A host with only the package installed runs the verbs themselves; this script only keeps older invocations working.
#
#   scripts/two_hosts.sh setup OUT PROVIDER_HOST CLIENT_HOST [FLAGS]  = llamdex hosts bundle --provider-host .. --client-host .. --out OUT
#   scripts/two_hosts.sh provider OUT/provider [FLAGS]                = llamdex provider serve --config OUT/provider/provider.toml
#   scripts/two_hosts.sh client OUT/client [FLAGS]                    = llamdex client round --config OUT/client/client.toml
#
# FLAGS go to the verb (see `llamdex hosts bundle --help`, `llamdex provider serve --help`, `llamdex client round --help`).
# Environment, for older callers (each is a flag of the verb): LLAMDEX (command, default `llamdex`); setup: CLIENT_ID,
# PORT, BUDGET, PRESET; client: DATASET (--data), EPSILON, EPOCHS, MAX_QUESTIONS, WAIT.
set -euo pipefail

LLAMDEX=${LLAMDEX:-llamdex}
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
run() { echo "+ llamdex $*" >&2; $LLAMDEX "$@"; }
opt() { [ -n "${2:-}" ] && printf '%s\n%s\n' "$1" "$2" || true; }   # "--flag value" when the variable is set

cmd=${1:-}
[ $# -ge 1 ] && shift
case "$cmd" in
  setup)
    [ $# -ge 3 ] || usage
    out=$1 phost=$2 chost=$3; shift 3
    mapfile -t env_flags < <(opt --client-id "${CLIENT_ID:-}"; opt --port "${PORT:-}"; opt --budget "${BUDGET:-}"; opt --preset "${PRESET:-}")
    run hosts bundle --provider-host "$phost" --client-host "$chost" --out "$out" "${env_flags[@]}" "$@" ;;
  provider)
    [ $# -ge 1 ] || usage
    bundle=$1; shift
    echo "+ llamdex provider serve --config $bundle/provider.toml $*" >&2
    exec $LLAMDEX provider serve --config "$bundle/provider.toml" "$@" ;;
  client)
    [ $# -ge 1 ] || usage
    bundle=$1; shift
    mapfile -t env_flags < <(opt --data "${DATASET:-}"; opt --epsilon "${EPSILON:-}"; opt --epochs "${EPOCHS:-}"
                             opt --max-test "${MAX_QUESTIONS:-}"; opt --wait "${WAIT:-}")
    run client round --config "$bundle/client.toml" "${env_flags[@]}" "$@" ;;
  *) usage ;;
esac
