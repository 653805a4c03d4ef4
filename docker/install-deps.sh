#!/usr/bin/env bash
# Install what bitpress needs on a Debian bookworm machine, from nothing. Idempotent.
#
#   - PostgreSQL 15 server and its PGXS headers (postgresql-server-dev-15) from Debian
#   - pgvector, built with PGXS from Debian's *source* package (trixie has 0.8.x;
#     bookworm's binary is too old for bit_hamming_ops on bit varying)
#
# Used by .ci/run, by README.md and by docker/Dockerfile. Needs root (apt, make install).
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
BUILD_DIR="${BITPRESS_BUILD_DIR:-/usr/local/src/bitpress-deps}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-deps] %s\n' "$*"; }

apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-venv python3-dev \
    "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" \
    dpkg-dev build-essential ca-certificates >/dev/null
log "postgresql-${PG_MAJOR} and postgresql-server-dev-${PG_MAJOR} installed"

PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
SHAREDIR="$("$PG_CONFIG" --sharedir)"

if [ -f "${SHAREDIR}/extension/vector.control" ] && \
   grep -q "default_version = '0\.[89]\|default_version = '[1-9]" "${SHAREDIR}/extension/vector.control"; then
    log "pgvector already installed: $(grep default_version "${SHAREDIR}/extension/vector.control")"
    exit 0
fi

# A deb-src entry for trixie, on the same mirror the machine already uses for bookworm
# (read from its own sources, so nothing here names a host).
SRC_LIST=/etc/apt/sources.list.d/bitpress-trixie-src.sources
if [ ! -f "$SRC_LIST" ]; then
    MIRROR="$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')"
    if [ -z "$MIRROR" ]; then
        MIRROR="$(grep -h -m1 -E '^deb +[a-z]+://' /etc/apt/sources.list | awk '{print $2}')"
    fi
    [ -n "$MIRROR" ] || { echo "cannot find the Debian mirror in apt sources" >&2; exit 1; }
    cat >"$SRC_LIST" <<SRC
Types: deb-src
URIs: ${MIRROR}
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
fi

mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"
rm -rf pgvector-*/
apt-get source -qq pgvector >/dev/null 2>&1 || apt-get source pgvector
SRC_DIR="$(find . -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
[ -n "$SRC_DIR" ] || { echo "apt-get source pgvector gave no source tree" >&2; exit 1; }
cd "$SRC_DIR"
# OPTFLAGS="": pgvector defaults to -march=native, which makes a binary that can die with
# "Illegal instruction" on another CPU. Its own runtime dispatch still picks AVX-512 popcount.
make -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
make -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" install >/dev/null
log "pgvector $(grep default_version vector.control | cut -d"'" -f2) built from $(basename "$PWD") and installed into ${SHAREDIR}/extension"
