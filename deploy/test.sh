#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: installs what the
# tests need (Debian packages; sudo when not root), makes sure PostgreSQL runs
# on 127.0.0.1:5432 with a database named test, then runs every test (the
# end-to-end tests on Dendrite), and the end-to-end tests again on Synapse.
# Extra arguments go to go test (say -run TestX). README.md and .ci/run call
# this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
# apt-get and PostgreSQL's cluster tools need root: sudo when not root.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
# The second, independent E2EE client of the e2e tests: matrix-nio with libolm.
/usr/bin/python3 -c 'import nio, olm' >/dev/null 2>&1 || need_apt+=(python3 python3-matrix-nio python3-olm)
# The real syslog server the audit exporter is tested against (TLS via GnuTLS).
[ -x /usr/sbin/rsyslogd ] && [ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || need_apt+=(rsyslog rsyslog-gnutls)
# systemd's analyzers check the units; promtool (below) the alert rules and metrics.
command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-sysusers >/dev/null 2>&1 || need_apt+=(systemd)
# ...and a container booted with systemd-nspawn runs them.
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
# The third E2EE client, Element's crypto stack, is matrix-js-sdk on Node (20 or later).
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# Synapse runs from a Debian sid root file system made once with debootstrap.
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
# The pager bridges' peers: xmllint validates WCTP documents against the DTD;
# Net::SNPP::Server and HylaFAX's hfaxd are two independent SNPP servers.
command -v xmllint >/dev/null 2>&1 || need_apt+=(libxml2-utils)
[ -e /usr/share/perl5/Net/SNPP/Server.pm ] || need_apt+=(libnet-snpp-perl)
# The archive's HTML transcripts are checked in headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# Only promtool is wanted from Prometheus: not its recommended node exporter.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (for promtool)"
  [ ${#need_apt[@]} -gt 0 ] || as_root apt-get update -qq
  # Debian's policy-rc.d hook keeps the package from starting its server.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null && as_root chmod 0755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  [ -z "$made_policy" ] || as_root rm -f /usr/sbin/policy-rc.d
fi
# hfaxd and faxq, without the system daemons the package would start.
if [ ! -x /usr/sbin/hfaxd ] || [ ! -x /usr/sbin/faxq ]; then
  log "installing hylafax-server (hfaxd, faxq; its daemons are not started)"
  as_root apt-get update -qq
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null && as_root chmod 0755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hylafax-server
  [ -z "$made_policy" ] || as_root rm -f /usr/sbin/policy-rc.d
fi
export PATH="$PATH:/usr/local/go/bin"

# PostgreSQL on 127.0.0.1:5432 with trust auth and a database named test.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test"
fi

# matrix-js-sdk and its Rust crypto (WebAssembly), exactly as the lock file pins them.
log "installing the matrix-js-sdk test client (npm ci)"
(cd appservice/e2e/testdata/jsclient && npm ci --no-audit --no-fund --loglevel=error)

go version
# Built once and cached under ~/.cache/matrix-hipaa; built here, not inside the
# test binaries, so that how long each took is in the log.
for hs in dendrite synapse; do
  log "the test homeserver: $hs"
  started=$(date +%s)
  go run -tags goolm ./deploy/dev -homeserver "$hs" build
  echo "($hs ready after $(( $(date +%s) - started )) s)"
done
log "running the test suite (end-to-end tests on Dendrite)"
go test -tags goolm -count=1 -timeout 45m ./... "$@"
log "running the end-to-end tests on Synapse"
MATRIX_HIPAA_TEST_HOMESERVER=synapse go test -tags goolm -count=1 -timeout 45m ./appservice/e2e "$@"
