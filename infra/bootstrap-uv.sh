#!/usr/bin/env bash
# Prints the path of a pinned uv, installing it into $MT_HOME/tools on first use, so a fresh
# machine needs only Python 3.11 (uv then installs everything else from the lock file).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
home=${MT_HOME:-$repo/.local}
version=0.13.9
uv=$home/tools/bin/uv
if [[ ! -x $uv ]] || [[ $("$uv" --version 2>/dev/null) != "uv $version"* ]]; then
  echo "bootstrap: installing uv $version into $home/tools" >&2
  python3.11 -m venv "$home/tools" >&2 2>/dev/null || python3 -m venv "$home/tools" >&2
  "$home/tools/bin/pip" install --quiet --disable-pip-version-check "uv==$version" >&2
fi
echo "$uv"
