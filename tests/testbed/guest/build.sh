#!/usr/bin/env bash
# Build the cached Debian bookworm guest images, offline from Debian's packages (README.md).
# Usage: build.sh  — prints the cache directory holding:
#   debian.raw                       2 GiB, MBR: p1 ext4 LABEL=root, p2 64 MiB EFI system
#                                    partition; grub for BIOS and UEFI; login on ttyS0
#   two-disk-1.raw + two-disk-2.raw  same root (fstab also mounts LABEL=osm-data at /srv)
#                                    + 1 GiB data disk with osm-known.txt and SHA256SUMS
#   osm-known.txt                    a copy of the known file, for the tests' checks
# The directory is named by a hash of this recipe: edit the recipe and it is rebuilt.
source "$(dirname "$0")/../lib.sh"
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
RECIPE=("$TESTBED_SRC/guest/build.sh")
hash=$(cat "${RECIPE[@]}" | sha256sum | cut -c1-16)
base="$OSM_TESTBED_CACHE/guest"
out="$base/$hash"
mkdir -p "$base"
[ -f "$out/done" ] && { echo "$out"; exit 0; }
exec 9>"$base/.lock"
flock 9  # one builder at a time; the loser then finds the finished images
[ -f "$out/done" ] && { echo "$out"; exit 0; }

work=$(mktemp -d "$base/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root" srv="$work/srv"
mirror=$(tb_debian_mirror || true)
[ -n "$mirror" ] || tb_die "no Debian archive URL found in the apt sources"
t0=$(date +%s)

# 1. Root tree (shared by both variants). No docs, man pages or locales: less to unpack and copy.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
  'path-exclude=/usr/share/locale/*' >"$root/etc/dpkg/dpkg.cfg.d/01-osm-nodoc"
tb_log "debootstrap from $mirror"
debootstrap --variant=minbase \
  --include=linux-image-amd64,grub-pc,grub-efi-amd64-bin,initramfs-tools,systemd-sysv,udev,kmod,e2fsprogs \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; tb_die "debootstrap failed"; }
grep -qx 'MODULES=most' "$root/etc/initramfs-tools/initramfs.conf" \
  || tb_die "initramfs MODULES is not 'most': virtio/ahci drivers may be missing"
mkdir -p "$root/boot/efi"
echo osm-guest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 osm-guest\n' >"$root/etc/hosts"
echo 'root:osm' | chroot "$root" chpasswd
sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' \
  -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS0,115200n8"/' \
  "$root/etc/default/grub"
printf '%s\n' 'GRUB_TERMINAL="console serial"' 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"' \
  >>"$root/etc/default/grub"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tb_log "root tree ready ($(du -sh "$root" | cut -f1)) in $(( $(date +%s) - t0 ))s"

# 2. Known content of the data disk.
mkdir -p "$srv"
printf 'osm known content: this file must survive the migration unchanged.\n' >"$srv/osm-known.txt"
# 8 MiB of deterministic pseudo-random data (AES-CTR keystream of zeros, fixed key).
head -c 8M /dev/zero | openssl enc -aes-128-ctr -nosalt -K 6f736d2d746573746265642d67756573 \
  -iv 00000000000000000000000000000000 >"$srv/osm-pattern.bin"
(cd "$srv" && sha256sum osm-known.txt osm-pattern.bin >SHA256SUMS)

# 3. Disks: MBR, p1 bootable at 1 MiB = ext4 filled from a tree by mke2fs -d; for root
#    disks p2 = the last ESP_MIB, formatted later in the appliance.
mkdisk() {  # FILE SIZE_MIB LABEL TREE [ESP_MIB]
  local p1=$(( $2 - 1 - ${5:-0} ))
  truncate -s "$2M" "$1"
  { echo "start=2048, size=$(( p1 * 2048 )), type=83, bootable"
    [ -z "${5:-}" ] || echo 'type=ef'; } | sfdisk -q "$1"
  mkfs.ext4 -q -F -L "$3" -d "$4" -E offset=1048576 "$1" "${p1}M"
}
echo 'LABEL=root / ext4 errors=remount-ro 0 1' >"$root/etc/fstab"
mkdisk "$work/debian.raw" 2048 root "$root" 64
# No nofail: a guest booted without its data disk must not reach the login prompt.
echo 'LABEL=osm-data /srv ext4 defaults 0 2' >>"$root/etc/fstab"
mkdisk "$work/two-disk-1.raw" 2048 root "$root" 64
mkdisk "$work/two-disk-2.raw" 1024 osm-data "$srv"
cp "$srv/osm-known.txt" "$work/"
tb_log "disks filled at $(( $(date +%s) - t0 ))s"

# 4. Boot loaders, from inside the guest's own tree (libguestfs appliance, TCG): BIOS grub in
#    the MBR gap, UEFI grub as the removable-media path EFI/BOOT/BOOTX64.EFI (no NVRAM entry).
#    The kernel's disk names inside the appliance follow probe order (the appliance's own
#    disk is sometimes sda): the BIOS target is the disk grub-probe finds /boot/grub on.
guestfish --rw -a "$work/debian.raw" -a "$work/two-disk-1.raw" >"$work/grub.log" 2>&1 <<'EOF' \
  || { tail -n 30 "$work/grub.log" >&2; tb_die "grub installation failed"; }
run
mkfs vfat /dev/sda2
mount /dev/sda1 /
mount /dev/sda2 /boot/efi
sh "grub-install --target=i386-pc $(grub-probe -t disk /boot/grub)"
command "grub-install --target=x86_64-efi --removable --no-nvram /dev/sda"
command "update-grub"
umount-all
mkfs vfat /dev/sdb2
mount /dev/sdb1 /
mount /dev/sdb2 /boot/efi
sh "grub-install --target=i386-pc $(grub-probe -t disk /boot/grub)"
command "grub-install --target=x86_64-efi --removable --no-nvram /dev/sdb"
command "update-grub"
umount-all
EOF
tb_log "grub installed at $(( $(date +%s) - t0 ))s"

rm -rf "$root" "$srv"
chmod 0444 "$work"/*.raw  # cached images are read-only: tests copy them or boot snapshots
echo "built in $(( $(date +%s) - t0 ))s" >"$work/done"
rm -rf "$out"; mv "$work" "$out"
for d in "$base"/*/; do  # drop images of older recipes
  [ "${d%/}" = "$out" ] || rm -rf "$d"
done
tb_log "guest images ready in $out"
echo "$out"
