#!/usr/bin/env bash
# Run the Llamdex provider and client on two separate hosts over mutual TLS.
#
#   scripts/two_hosts.sh setup OUT PROVIDER_HOST CLIENT_HOST   # once, on a trusted machine: keys, CA, certificates, configs
#   scripts/two_hosts.sh provider OUT/provider                  # on the provider host
#   scripts/two_hosts.sh client OUT/client                      # on the client host: train (DP), upload, customize, evaluate, receipts
#
# `setup` writes two bundles: OUT/provider (its receipt key, TLS certificate, the client's public key, provider.toml)
# and OUT/client (its signing key, TLS certificate, the provider's public key, client.toml). Copy each to its host
# (e.g. scp -r). The CA key stays in OUT/ca; keep it offline. Hosts are names or IP addresses as the other side
# dials them: they go into the certificates' subjectAltName.
#
# Environment: LLAMDEX (command, default `llamdex`), CLIENT_ID (alice), PORT (50051), EPSILON (1), BUDGET (4),
# DATASET (titanic), PRESET (quick | default | tiny), EPOCHS (training epochs, default: the trainer's),
# MAX_QUESTIONS (held-out questions to ask, 0 = all), WAIT (seconds to wait for the provider, 120).
set -euo pipefail

LLAMDEX=${LLAMDEX:-llamdex}
CLIENT_ID=${CLIENT_ID:-alice}
PORT=${PORT:-50051}
DATASET=${DATASET:-titanic}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
run() { echo "+ llamdex $*" >&2; $LLAMDEX "$@"; }

setup() {
  local out=$1 phost=$2 chost=$3
  local preset=${PRESET:-quick}
  mkdir -p "$out/provider/keys" "$out/provider/certs" "$out/client/keys" "$out/client/certs"
  run keygen --name provider --out "$out/provider/keys"
  run keygen --name "$CLIENT_ID" --out "$out/client/keys"
  run certs --out "$out/ca" --party "provider=$phost" --party "$CLIENT_ID=$chost"
  cp "$out/ca/ca.pem" "$out/ca/provider.pem" "$out/ca/provider.key" "$out/provider/certs/"
  cp "$out/ca/ca.pem" "$out/ca/$CLIENT_ID.pem" "$out/ca/$CLIENT_ID.key" "$out/client/certs/"
  cp "$out/client/keys/$CLIENT_ID.pub" "$out/provider/keys/"
  cp "$out/provider/keys/provider.pub" "$out/client/keys/"
  chmod 600 "$out/provider/certs/provider.key" "$out/client/certs/$CLIENT_ID.key"
  if [ "$preset" = tiny ]; then   # a seconds-long connector run, for smoke tests only
    preset='{ name = "tiny", n_synthetic = 300, encoder_questions = 16, decoder_questions = 8, val_questions = 8, encoder_epochs = 1, decoder_epochs = 1, inject_candidates = [24], surrogate_epochs = 1 }'
  else
    preset="\"$preset\""
  fi
  local plisten=$phost
  case "$phost" in *:*) plisten="[$phost]";; esac
  cat > "$out/provider/provider.toml" <<TOML
# Llamdex provider (written by scripts/two_hosts.sh setup)
[provider]
id = "provider"
listen = "0.0.0.0:$PORT"
key = "keys/provider.key"
state = "state"
connectors = "connectors"
preset = $preset

[tls]
ca = "certs/ca.pem"
cert = "certs/provider.pem"
key = "certs/provider.key"

[[clients]]
id = "$CLIENT_ID"
public_key = "keys/$CLIENT_ID.pub"
epsilon_budget = ${BUDGET:-4}
TOML
  cat > "$out/client/client.toml" <<TOML
# Llamdex client (written by scripts/two_hosts.sh setup)
[client]
id = "$CLIENT_ID"
key = "keys/$CLIENT_ID.key"
workspace = "workspace"
max_epsilon = ${BUDGET:-4}
datasets = ["$DATASET"]

[provider]
address = "$plisten:$PORT"
public_key = "keys/provider.pub"

[tls]
ca = "certs/ca.pem"
cert = "certs/$CLIENT_ID.pem"
key = "certs/$CLIENT_ID.key"
TOML
  echo "bundles ready: $out/provider (copy to the provider host) and $out/client (copy to the client host); CA key in $out/ca"
}

provider() {
  local bundle=$1; shift
  exec $LLAMDEX provider serve --config "$bundle/provider.toml" "$@"
}

client() {
  local bundle=$1
  local cfg="$bundle/client.toml" art="$bundle/workspace/artifact-$DATASET-$(date +%Y%m%d%H%M%S)"
  local epochs=()
  [ -n "${EPOCHS:-}" ] && epochs=(--epochs "$EPOCHS")
  run client hello --config "$cfg" --wait "${WAIT:-120}"
  run client train --data "$DATASET" --epsilon "${EPSILON:-1}" "${epochs[@]}" --key "$bundle/keys/$CLIENT_ID.key" --out "$art"
  run client upload --config "$cfg" --artifact "$art" --dataset-id "$DATASET"
  run client customize --config "$cfg"
  run client evaluate --config "$cfg" --max-test "${MAX_QUESTIONS:-0}" --json "$bundle/workspace/scores.json"
  run client receipts --config "$cfg" --sync --export "$bundle/workspace/receipts.json"
}

cmd=${1:-}
[ $# -ge 1 ] && shift
case "$cmd" in
  setup)    [ $# -eq 3 ] || usage; setup "$@" ;;
  provider) [ $# -ge 1 ] || usage; provider "$@" ;;
  client)   [ $# -eq 1 ] || usage; client "$@" ;;
  *) usage ;;
esac
