#!/usr/bin/env bash
# Builds Dendrite (first run only) and matrix-hipaa, writes configs with SQLite
# under .dev/, starts both on loopback, creates an admin and a demo user and
# the admin's management room. `start.sh adduser NAME` adds an account to the
# running stack. Flags: -state DIR -hs-port N -as-port N -metrics-port N
# -homeserver dendrite|synapse (or --homeserver synapse; Synapse needs root).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v go >/dev/null 2>&1; then
  echo "Go is required (https://go.dev/dl); on Debian: apt-get install golang" >&2
  exit 1
fi
if ! command -v gcc >/dev/null 2>&1; then
  echo "A C compiler is required for SQLite (apt-get install gcc)" >&2
  exit 1
fi
exec go run -tags goolm ./deploy/dev "$@"
