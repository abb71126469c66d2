#!/usr/bin/env bash
# Build the CI-testable twin of the conversion-host image: a Debian 12 guest with the osm-agent
# RPM's files installed as the RPM installs them, the service enabled, cloud-init (NoCloud)
# and the tools the agent runs (README.md).
# Usage: build.sh [RPM]   — prints the directory holding root.raw (ext4, no partition table),
#                            vmlinuz and initrd.img (qemu boots them directly).
# RPM defaults to the newest osm-agent-*.rpm under $OSM_RPM_TOPDIR/RPMS (packaging/build-rpm).
# The Debian tree is cached per recipe hash; the image per recipe + RPM.
source "$(dirname "$0")/../../tests/testbed/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
rpm=${1:-$(ls -t "${OSM_RPM_TOPDIR:-/var/tmp/osm-rpm}"/RPMS/*/osm-agent-[0-9]*.rpm 2>/dev/null | head -n1 || :)}
[ -f "$rpm" ] || tb_die "no osm-agent RPM (run packaging/build-rpm first, or pass its path)"
command -v rpm2cpio >/dev/null || tb_die "rpm2cpio is missing (apt install rpm)"
recipe=$(cat "$here/build.sh" "$here"/files/* | sha256sum | cut -c1-16)
base="$OSM_TESTBED_CACHE/twin/$recipe"
image="$base/image-$(sha256sum "$rpm" | cut -c1-16)"
mkdir -p "$base"
[ -f "$image/done" ] && { echo "$image"; exit 0; }
exec 9>"$base/.lock"
flock 9
[ -f "$image/done" ] && { echo "$image"; exit 0; }
t0=$(date +%s)

# 1. The Debian tree (cached): what the production image gets from CentOS, from Debian.
if [ ! -f "$base/tree.done" ]; then
  mirror=$(tb_debian_mirror || true)
  [ -n "$mirror" ] || tb_die "no Debian archive URL found in the apt sources"
  rm -rf "$base/tree" && mkdir -p "$base/tree/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
    'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
    >"$base/tree/etc/dpkg/dpkg.cfg.d/01-osm-nodoc"
  tb_log "twin: debootstrap from $mirror"
  # The agent's runtime needs (the RPM's Requires, minus virt-v2v: the twin's plans skip
  # conversion, which nested TCG would make far too slow) + cloud-init + the guest agent.
  # python3-cffi-backend: debootstrap does not resolve the virtual packages cryptography needs.
  debootstrap --variant=minbase \
    --include=linux-image-amd64,initramfs-tools,systemd-sysv,udev,kmod,e2fsprogs,dbus,cloud-init,python3-cffi-backend,qemu-guest-agent,nbdkit,libnbd0,libnbd-bin,qemu-utils,socat,ca-certificates,iproute2 \
    bookworm "$base/tree" "$mirror" >"$base/debootstrap.log" 2>&1 \
    || { tail -n 30 "$base/debootstrap.log" >&2; tb_die "twin: debootstrap failed"; }
  rm -rf "$base"/tree/var/cache/apt/archives/*.deb "$base"/tree/var/lib/apt/lists/*
  touch "$base/tree.done"
  tb_log "twin: tree ready ($(du -sh "$base/tree" | cut -f1)) in $(( $(date +%s) - t0 ))s"
fi

# 2. The image: a copy of the tree + the RPM's payload + the twin's boot settings.
work=$(mktemp -d "$base/image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
cp -a "$base/tree" "$root"
rpm2cpio "$rpm" | (cd "$root" && cpio -idm --quiet --no-absolute-filenames)
# What the RPM's %files sets, and its %post (%systemd_post = preset → enabled in the image).
chmod 0700 "$root/etc/osm/plans.d" "$root/var/lib/osm"
install -Dm0644 "$here/files/osm-twin-forward.service" "$root/etc/systemd/system/osm-twin-forward.service"
install -Dm0755 "$here/files/osm-twin-forward" "$root/usr/local/sbin/osm-twin-forward"
install -Dm0644 "$here/files/20-dhcp.network" "$root/etc/systemd/network/20-dhcp.network"
install -Dm0644 "$here/files/99-osm-twin.cfg" "$root/etc/cloud/cloud.cfg.d/99-osm-twin.cfg"
chroot "$root" systemctl enable --quiet osm-agent.service systemd-networkd.service \
  systemd-networkd-wait-online.service osm-twin-forward.service
missing=$(chroot "$root" ldd /usr/libexec/osm-agent /usr/bin/osmctl | grep 'not found' || :)
[ -z "$missing" ] || tb_die "twin: the agent's libraries are missing in the guest: $missing"
echo osm-twin >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 osm-twin\n' >"$root/etc/hosts"
: >"$root/etc/machine-id"  # first boot makes one
echo '/dev/vda / ext4 errors=remount-ro 0 1' >"$root/etc/fstab"
cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
truncate -s 3G "$work/root.raw"
mkfs.ext4 -q -F -L root -d "$root" "$work/root.raw"
rm -rf "$root"
chmod 0444 "$work/root.raw"
echo "built in $(( $(date +%s) - t0 ))s from $(basename "$rpm")" >"$work/done"
rm -rf "$image" && mv "$work" "$image"
trap - EXIT
for d in "$OSM_TESTBED_CACHE"/twin/*/; do  # drop older recipes' trees
  [ "${d%/}" = "$base" ] || rm -rf "$d"
done
for d in "$base"/image-*/; do  # and images of older RPMs
  [ "${d%/}" = "$image" ] || rm -rf "$d"
done
tb_log "twin: image ready in $image"
echo "$image"
