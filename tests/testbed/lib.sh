# Shared helpers for the test bed's component scripts. Source it; do not run it.
# Layout:
#   $OSM_TESTBED_STATE  runtime: env file, env.d/<component>.env, pids/<name>, log/<name>.log, loops
#   $OSM_TESTBED_CACHE  slow-to-build artefacts kept between runs (guest images, venvs, Go builds)
set -euo pipefail
TESTBED_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TESTBED_SRC/../.." && pwd)
export OSM_TESTBED_STATE=${OSM_TESTBED_STATE:-/var/tmp/osm-testbed}
export OSM_TESTBED_CACHE=${OSM_TESTBED_CACHE:-/var/cache/osm-testbed}
mkdir -p "$OSM_TESTBED_STATE"/{env.d,pids,log} "$OSM_TESTBED_CACHE"
chmod 0700 "$OSM_TESTBED_STATE"

tb_log() { printf '[testbed %s] %s\n' "$(date +%T)" "$*" >&2; }
tb_die() { tb_log "FAILED: $*"; exit 1; }

# tb_bg NAME CMD... : start CMD in its own process group (setsid), stdout+stderr to
# log/NAME.log, and record the group id so `down` stops exactly what `up` started.
tb_bg() {
  local name=$1; shift
  setsid "$@" >"$OSM_TESTBED_STATE/log/$name.log" 2>&1 </dev/null &
  echo $! >"$OSM_TESTBED_STATE/pids/$name"
}

# tb_running NAME : true when the recorded process group of NAME is alive.
tb_running() {
  local f="$OSM_TESTBED_STATE/pids/$1"
  # The leader's pid also covers the moment before setsid() made the group.
  [ -f "$f" ] && { kill -0 -- "-$(cat "$f")" 2>/dev/null || kill -0 "$(cat "$f")" 2>/dev/null; }
}

# tb_stop NAME : TERM the recorded process group, KILL after 10 s, forget it.
tb_stop() {
  local f="$OSM_TESTBED_STATE/pids/$1" pg i
  [ -f "$f" ] || return 0
  pg=$(cat "$f")
  kill -TERM -- "-$pg" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pg" 2>/dev/null || true
  rm -f "$f"
}

# tb_wait_tcp HOST PORT [TRIES] : wait until a TCP port accepts connections (0.2 s steps).
tb_wait_tcp() {
  local i
  for i in $(seq 1 "${3:-300}"); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# tb_env COMPONENT KEY=VALUE... : (re)write the component's env fragment.
tb_env() {
  local comp=$1; shift
  printf 'export %q\n' "$@" >"$OSM_TESTBED_STATE/env.d/$comp.env"
}

# tb_loop_attach FILE : losetup FILE, record it for `down`, print the device.
tb_loop_attach() {
  local dev
  dev=$(losetup --find --show "$1")
  echo "$dev" >>"$OSM_TESTBED_STATE/loops"
  echo "$dev"
}

# tb_debian_mirror : the Debian archive URL from this machine's apt sources (never hard-coded).
tb_debian_mirror() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
  } | awk '$1 == "URIs:" {print $2} $1 == "deb" {print $2}' | grep -v security | head -n1 || true
}
