#!/usr/bin/env bash
# Guest images for the test bed: install host packages, build (or reuse) the cached images.
source "$(dirname "$0")/../lib.sh"
"$TESTBED_SRC/guest/deps.sh"
dir=$("$TESTBED_SRC/guest/build.sh")
[ -f "$dir/done" ] || tb_die "guest build left no images in '$dir'"
tb_env guest \
  "OSM_GUEST_IMAGE=$dir/debian.raw" \
  "OSM_GUEST2_DISK1=$dir/two-disk-1.raw" \
  "OSM_GUEST2_DISK2=$dir/two-disk-2.raw" \
  "OSM_GUEST_KNOWN_FILE=/srv/osm-known.txt" \
  "OSM_GUEST_KNOWN_SHA256=$(sha256sum <"$dir/osm-known.txt" | cut -d' ' -f1)" \
  "OSM_GUEST_ROOT_PASSWORD=osm" \
  "OSM_BOOTCHECK=$TESTBED_SRC/bootcheck"
