#!/usr/bin/env bash
# Builds compose-check into $MT_HOME/bin (MT_HOME defaults to <repo>/.local) and
# prints the binary's path on stdout. Idempotent: rebuilds only when the sources
# (*.go, go.mod, go.sum) or the Go toolchain changed; otherwise takes ~10 ms.
# Usage: "$(infra/compose-check/build.sh)" [-f docker-compose.yml]
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MT_HOME=${MT_HOME:-$(dirname "$(dirname "$SRC")")/.local}
BIN=$MT_HOME/bin/compose-check
STAMP=$BIN.stamp

# Fingerprint of everything that affects the binary.
want=$( { go env GOVERSION; cat "$SRC"/*.go "$SRC"/go.mod "$SRC"/go.sum; } | sha256sum | cut -d' ' -f1)

if [[ ! -x $BIN || ! -f $STAMP || $(<"$STAMP") != "$want" ]]; then
  mkdir -p "$MT_HOME/bin"
  # Build to a temp name then rename, so a concurrent caller never runs a half-written file.
  go -C "$SRC" build -trimpath -o "$BIN.tmp.$$" . >&2
  mv -f "$BIN.tmp.$$" "$BIN"
  printf '%s\n' "$want" >"$STAMP"
fi
printf '%s\n' "$BIN"
