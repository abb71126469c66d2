#!/usr/bin/env bash
# Build the osm conversion-host image (CentOS Stream 10, qcow2) with image-builder.
#
#   image-builder/build.sh --vddk VMware-vix-disklib-8.0.3-NNN.x86_64.tar.gz \
#       [--rpms DIR] [--virtio-win-repo URL] [--out DIR]
#
# Runs on a CentOS Stream 10 / RHEL 10 / Fedora host with image-builder, rpm-build and
# createrepo_c installed, as root (image-builder needs it). Steps:
#   1. wrap the VDDK tarball into vmware-vix-disklib-local (private, never published);
#   2. a local repository with it and the osm-agent RPM (--rpms: a folder of RPMs built by
#      `rpmbuild --rebuild osm-*.src.rpm` on EL; default: packaging/build-rpm's output);
#   3. the one command:
#        image-builder build qcow2 --distro centos-10 --blueprint osm.toml \
#            --extra-repo file://REPO [--extra-repo VIRTIO_WIN_REPO] --output-dir OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vddk="" rpms=${OSM_RPM_TOPDIR:-/var/tmp/osm-rpm}/RPMS virtio="" out="$PWD/osm-image"
while [ $# -gt 0 ]; do
  case "$1" in
    --vddk) vddk=$2; shift 2 ;;
    --rpms) rpms=$2; shift 2 ;;
    --virtio-win-repo) virtio=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
[ -f "$vddk" ] || { echo "build.sh: --vddk TARBALL is required (VMware-vix-disklib-*.x86_64.tar.gz)" >&2; exit 2; }
for tool in image-builder rpmbuild createrepo_c; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (dnf install image-builder rpm-build createrepo_c)" >&2; exit 1; }
done
vddk_version=$(basename "$vddk" | sed -n 's/^VMware-vix-disklib-\([0-9.]*\)-.*/\1/p')
[ -n "$vddk_version" ] || { echo "build.sh: cannot read the VDDK version from $(basename "$vddk")" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo="$work/repo"
mkdir -p "$repo" "$out"
rpmbuild -bb --quiet --define "_topdir $work/vddk" --define "_rpmdir $repo" \
  --define "vddk_tarball $(realpath "$vddk")" --define "vddk_version $vddk_version" \
  "$here/vmware-vix-disklib-local.spec"
find "$rpms" -name 'osm-agent-[0-9]*.rpm' -exec cp -t "$repo" {} +
ls "$repo"/*/osm-agent-* "$repo"/osm-agent-* >/dev/null 2>&1 \
  || { echo "build.sh: no osm-agent RPM under $rpms (--rpms)" >&2; exit 1; }
createrepo_c --quiet "$repo"

extra=(--extra-repo "file://$repo")
[ -n "$virtio" ] && extra+=(--extra-repo "$virtio")
image-builder build qcow2 --distro centos-10 --blueprint "$here/osm.toml" "${extra[@]}" --output-dir "$out"
echo "build.sh: image in $out"
