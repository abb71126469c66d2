#!/usr/bin/env bash
# Host packages for the guest images and the boot check (idempotent).
# qemu comes from bookworm-backports (the machine's qemu-utils already does), so add that
# suite from the same archive as the existing apt sources when it is missing.
source "$(dirname "$0")/../lib.sh"
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600)
export DEBIAN_FRONTEND=noninteractive
need=(qemu-system-x86 qemu-block-extra qemu-system-common virt-v2v guestfs-tools mtools dosfstools cpio
      libguestfs-tools debootstrap ovmf)
missing=0
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing=1
done
[ "$missing" = 0 ] && { tb_log "guest deps already installed"; exit 0; }

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(tb_debian_mirror || true)  # lib.sh helper exits 2 under pipefail when a sources file is absent
  [ -n "$mirror" ] || tb_die "no Debian archive URL found in the apt sources"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >/etc/apt/sources.list.d/osm-testbed-backports.sources
  tb_log "added bookworm-backports from $mirror"
fi
"${APT[@]}" update
"${APT[@]}" install --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-block-extra qemu-system-common
"${APT[@]}" install virt-v2v guestfs-tools libguestfs-tools debootstrap ovmf mtools dosfstools cpio
