#!/usr/bin/env bash
# Host packages and the pinned Python venv for the OpenStack part of the test bed (idempotent).
#   Debian: mariadb-server rabbitmq-server (services are started by up.sh, not by init scripts)
#   venv:   $OSM_TESTBED_CACHE/openstack/venv from requirements.txt + constraints.txt and the
#           repo's own plug-ins (osm_testbed_os/); rebuilt only when one of those changes.
# OSM_OS_PYTHON picks the interpreter (default python3; 3.10-3.13 work for these releases).
source "$(dirname "$0")/../lib.sh"
HERE="$TESTBED_SRC/openstack"
export DEBIAN_FRONTEND=noninteractive

need=(mariadb-server mariadb-client rabbitmq-server python3-venv)  # python3-venv: when OSM_OS_PYTHON is Debian's
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  tb_log "apt: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null &&
      apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
    tb_die "apt-get install ${missing[*]}"
fi

PY=${OSM_OS_PYTHON:-python3}
VENV="$OSM_TESTBED_CACHE/openstack/venv"
stamp=$( { "$PY" -c 'import sys; print(sys.version)'; cat "$HERE/requirements.txt" "$HERE/constraints.txt";
           cat "$HERE/deps.sh"; cd "$HERE/osm_testbed_os" && find . -name '*.py' -o -name '*.toml' | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16)
if [ -f "$VENV/.osm-stamp" ] && [ "$(cat "$VENV/.osm-stamp")" = "$stamp" ] && [ -x "$VENV/bin/nova-compute" ]; then
  tb_log "openstack venv up to date ($stamp)"
  exit 0
fi
mkdir -p "$OSM_TESTBED_CACHE/openstack"
reqs=$(cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -c1-16)
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
if [ -x "$VENV/bin/nova-compute" ] && [ "$(cat "$VENV/.osm-reqs" 2>/dev/null)" = "$reqs" ]; then
  tb_log "openstack venv: reinstalling the plug-ins only"
else
  # Built in place (venvs are not relocatable); .osm-stamp is written last, so an
  # interrupted build is redone.
  tb_log "building openstack venv in $VENV (about 2 min the first time)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "${PIP[@]}" -c "$HERE/constraints.txt" pip setuptools wheel
  "${PIP[@]}" -c "$HERE/constraints.txt" -r "$HERE/requirements.txt"
  echo "$reqs" >"$VENV/.osm-reqs"
fi
# Non-editable from a copy: the venv outlives this checkout, and the build leaves no
# files in the repo.
src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
cp -r "$HERE/osm_testbed_os/." "$src/"
"${PIP[@]}" --no-deps --no-build-isolation --force-reinstall "$src"
# Nova 34 loads compute_driver only from the nova.virt namespace: a one-line alias there.
site=$("$VENV/bin/python" -c 'import nova.virt, os; print(os.path.dirname(nova.virt.__file__))')
echo "from osm_testbed_os.virt import ConversionHostDriver  # noqa: F401 (osm test bed)" >"$site/osm_testbed.py"
echo "$stamp" >"$VENV/.osm-stamp"
tb_log "openstack venv ready"
