#!/usr/bin/env bash
# vCenter simulator (vcsim-osm, see README.md) on https://127.0.0.1:${OSM_VC_PORT:-8989}.
# Idempotent: a healthy simulator started with the same binary and settings is left alone.
# Settings: OSM_VC_PORT, OSM_VC_EXTRA_VMS (extra plain VMs), OSM_VC_EXTRA_TOOLS (their tools status), OSM_VC_QCDA_PAGE (bytes),
# OSM_GUEST_IMAGE / OSM_GUEST2_DISK1 / OSM_GUEST2_DISK2 (also read from env.d/guest.env).
source "$(dirname "$0")/../lib.sh"
src="$TESTBED_SRC/vsphere"
dir="$OSM_TESTBED_STATE/vsphere"
cache="$OSM_TESTBED_CACHE/vsphere"
bin="$cache/vcsim-osm"
port=${OSM_VC_PORT:-8989}
user=osm@vsphere.local
page=${OSM_VC_QCDA_PAGE:-268435456}
extra=${OSM_VC_EXTRA_VMS:-0}
extra_tools=${OSM_VC_EXTRA_TOOLS:-notRunning}
mkdir -p "$dir" "$cache"
chmod 0700 "$dir"
# The guest component (run before us) publishes its images in its env fragment.
if [ -z "${OSM_GUEST_IMAGE:-}" ] && [ -f "$OSM_TESTBED_STATE/env.d/guest.env" ]; then
  source "$OSM_TESTBED_STATE/env.d/guest.env"
fi

# 1. Build when the sources (or the toolchain/library) changed.
command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/vmware/govmomi ] || "$src/deps.sh"
hash=$( (cat "$src"/*.go; go version; dpkg-query -W golang-github-vmware-govmomi-dev) | sha256sum | cut -c1-16)
if [ ! -x "$bin" ] || [ "$(cat "$bin.hash" 2>/dev/null)" != "$hash" ]; then
  tb_log "building vcsim-osm ($hash)"
  t0=$(date +%s)
  (cd "$src" && GOPATH="$cache/gopath:/usr/share/gocode" GO111MODULE=off GOCACHE="$cache/go-build" \
     go build -o "$bin.new" .) || tb_die "go build failed"
  mv "$bin.new" "$bin"
  echo "$hash" >"$bin.hash"
  tb_log "built in $(( $(date +%s) - t0 ))s"
fi

# 2. Credentials and TLS: a private CA signing a server certificate for 127.0.0.1.
umask 077
[ -s "$dir/password" ] || openssl rand -hex 16 >"$dir/password"
if [ ! -s "$dir/server.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=osm-testbed vCenter CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  rm -f "$dir/server.csr" "$dir/server.ext"
fi
chmod 0644 "$dir/ca.crt" "$dir/server.crt"
umask 022
fp() { openssl x509 -in "$dir/server.crt" -noout -fingerprint "-$1" | cut -d= -f2; }

# 3. Start unless already running with the same binary and settings. Other settings
# (not a plain restart) start from fresh disks and CBT state.
sig=$(printf '%s\n' "$hash" "$port" "$page" "$extra" "$extra_tools" "${OSM_GUEST_IMAGE:-}" "${OSM_GUEST2_DISK1:-}" "${OSM_GUEST2_DISK2:-}" |
  cat - <(stat -c %Y "${OSM_GUEST_IMAGE:-/nonexistent}" "${OSM_GUEST2_DISK1:-/nonexistent}" "${OSM_GUEST2_DISK2:-/nonexistent}" 2>/dev/null) |
  sha256sum | cut -c1-16)
healthy() {
  python3 - "$port" "$dir/ca.crt" <<'EOF'
import ssl, sys, urllib.request
body = b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent></soapenv:Body></soapenv:Envelope>'
req = urllib.request.Request(f"https://127.0.0.1:{sys.argv[1]}/sdk", body, {"Content-Type": "text/xml", "SOAPAction": "urn:vim25/7.0"})
try:
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=sys.argv[2]), timeout=5) as r:
        sys.exit(0 if b"RetrieveServiceContentResponse" in r.read() else 1)
except Exception:
    sys.exit(1)
EOF
}
if tb_running vsphere && [ "$(cat "$dir/running.sig" 2>/dev/null)" = "$sig" ] && [ -f "$dir/ready" ] && healthy; then
  tb_log "vsphere already running"
else
  tb_stop vsphere
  if [ "$(cat "$dir/running.sig" 2>/dev/null)" != "$sig" ]; then
    rm -rf "$dir/ds" "$dir/ds.prev" "$dir/cbt.json"
  fi
  rm -f "$dir/ready"
  echo "$sig" >"$dir/running.sig"
  t0=$(date +%s)
  tb_bg vsphere "$bin" -listen "127.0.0.1:$port" -cert "$dir/server.crt" -key "$dir/server.key" \
    -user "$user" -password-file "$dir/password" -state "$dir" -extra-vms "$extra" -extra-vms-tools "$extra_tools" -qcda-page "$page" \
    -guest-image "${OSM_GUEST_IMAGE:-}" -guest2-disk1 "${OSM_GUEST2_DISK1:-}" -guest2-disk2 "${OSM_GUEST2_DISK2:-}"
  for _ in $(seq 1 3000); do
    [ -f "$dir/ready" ] && break
    # (pid, not tb_running: the new process group exists only once setsid has run)
    kill -0 "$(cat "$OSM_TESTBED_STATE/pids/vsphere")" 2>/dev/null || tb_die "vcsim-osm exited; see $OSM_TESTBED_STATE/log/vsphere.log"
    sleep 0.2
  done
  [ -f "$dir/ready" ] && tb_wait_tcp 127.0.0.1 "$port" 50 && healthy ||
    tb_die "vcsim-osm did not answer; see $OSM_TESTBED_STATE/log/vsphere.log"
  tb_log "vsphere up in $(( $(date +%s) - t0 ))s"
fi

tb_env vsphere "OSM_VC_URL=https://127.0.0.1:$port/sdk" "OSM_VC_HOST=127.0.0.1:$port" \
  "OSM_VC_USER=$user" "OSM_VC_PASSWORD_FILE=$dir/password" "OSM_VC_CA_FILE=$dir/ca.crt" \
  "OSM_VC_THUMBPRINT_SHA1=$(fp sha1)" "OSM_VC_THUMBPRINT_SHA256=$(fp sha256)" \
  "OSM_VC_DATACENTER=DC0" "OSM_VC_DATASTORE=datastore1" "OSM_VC_DATASTORE_DIR=$dir/ds" \
  "OSM_VC_CTL_URL=https://127.0.0.1:$port/osm-testbed" "OSM_VC_QCDA_PAGE=$page" \
  "OSM_VC_GUEST_WRITE=$src/guest-write"
