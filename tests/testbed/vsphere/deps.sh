#!/usr/bin/env bash
# Host packages for the vCenter simulator (idempotent). Other components run apt
# concurrently, hence the lock timeout.
source "$(dirname "$0")/../lib.sh"
need=(golang-go golang-github-vmware-govmomi-dev openssl python3)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && { tb_log "vsphere deps already installed"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
