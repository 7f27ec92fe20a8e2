#!/usr/bin/env bash
# Installs the third-party servers the local stack runs: Redis and etcd from Debian,
# Kafka and Zipkin as jars from Maven Central (under $MT_HOME/opt).
# Idempotent: when everything is present it touches no network and takes ~0.1 s.
set -euo pipefail

INFRA=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$INFRA/versions.env"
MT_HOME=${MT_HOME:-$(dirname "$INFRA")/.local}
export DEBIAN_FRONTEND=noninteractive

say() { printf 'infra: %s\n' "$*"; }
SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)
# Maven 3.8 prints stray colour codes even with -B -q, and logs errors to stdout:
# keep its output only for when it fails.
mvn_quiet() {
  local out
  out=$(mvn -B -q "$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

POLICY=/usr/sbin/policy-rc.d
MADE_POLICY=""
# Remove policy-rc.d only if we created it: someone else's (e.g. a container image's) stays.
drop_policy() {
  [[ -z $MADE_POLICY ]] || "${SUDO[@]}" rm -f "$POLICY"
  MADE_POLICY=""
}

# Debian's postinst would start redis/etcd as system services on 6379/2379, the ports our
# own foreground processes need: block that with a policy-rc.d for the install, and stop
# and disable any that got running anyway.
apt_packages() {
  local missing=() p
  for p in redis-server redis-tools etcd-server etcd-client postgresql-15 prometheus chromium; do
    installed "$p" || missing+=("$p")
  done
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if ((${#missing[@]})); then
    say "apt: installing ${missing[*]}"
    if [[ ! -e $POLICY ]]; then
      printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
      "${SUDO[@]}" chmod 755 "$POLICY"
      MADE_POLICY=1
      trap drop_policy EXIT # even if apt fails
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    drop_policy
    disable_system_services
  fi
  stop_system_services
  say "apt: redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-)," \
    "etcd $(etcd --version 2>/dev/null | awk '/etcd Version/{print $3}')," \
    "prometheus $(prometheus --version 2>&1 | awk 'NR==1{print $3}'), $(chromium --version) ... ok"
}

disable_system_services() {
  local s
  for s in redis-server etcd prometheus; do
    if [[ -d /run/systemd/system ]]; then
      "${SUDO[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/$s ]]; then
      "${SUDO[@]}" update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
  done
}

# Cheap check on every run: a service started by someone else (or a reboot) steals our ports.
stop_system_services() {
  local s
  for s in redis-server etcd prometheus; do
    if [[ -d /run/systemd/system ]]; then
      if systemctl is-active --quiet "$s" 2>/dev/null; then
        say "stopping system service $s"
        "${SUDO[@]}" systemctl stop "$s"
      fi
    elif [[ -x /etc/init.d/$s ]] && /etc/init.d/"$s" status >/dev/null 2>&1; then
      say "stopping system service $s"
      "${SUDO[@]}" /etc/init.d/"$s" stop >/dev/null
    fi
  done
}

# The stamp records the version and the pom's hash, so editing the pom re-resolves lib/.
kafka() {
  local dir=$MT_HOME/opt/kafka-$KAFKA_VERSION
  local stamp
  stamp="$KAFKA_VERSION $(sha256sum "$INFRA/kafka/pom.xml" | cut -c1-16)"
  if [[ -f $dir/.installed && $(<"$dir/.installed") == "$stamp" ]]; then
    say "kafka $KAFKA_VERSION ... ok"
    return
  fi
  say "kafka $KAFKA_VERSION: fetching jars from Maven Central"
  rm -rf "${dir:?}/lib" "$dir/lib.tmp"
  mkdir -p "$dir"
  mvn_quiet -f "$INFRA/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir/lib.tmp"
  mv "$dir/lib.tmp" "$dir/lib"
  echo "$stamp" >"$dir/.installed"
  say "kafka $KAFKA_VERSION ... ok"
}

zipkin() {
  local dir=$MT_HOME/opt/zipkin
  local jar=$dir/zipkin-server-$ZIPKIN_VERSION-exec.jar
  if [[ ! -f $jar ]]; then
    say "zipkin $ZIPKIN_VERSION: fetching exec jar from Maven Central"
    mkdir -p "$dir"
    # Copied into a temporary dir first so an interrupted download never looks installed.
    # -f: a known pom, so whatever pom.xml sits in the caller's cwd is never evaluated.
    mvn_quiet -f "$INFRA/kafka/pom.xml" \
      "org.apache.maven.plugins:maven-dependency-plugin:$MVN_DEP_PLUGIN:copy" \
      -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
      -DoutputDirectory="$dir/tmp" -Dmdep.overWriteReleases=true
    mv "$dir/tmp/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$jar"
    rmdir "$dir/tmp"
  fi
  say "zipkin $ZIPKIN_VERSION ... ok"
}

# Two sessions installing at once would interleave apt and clobber each other's lib.tmp.
mkdir -p "$MT_HOME"
exec 9>"$MT_HOME/.install.lock"
flock 9

apt_packages
kafka
zipkin
