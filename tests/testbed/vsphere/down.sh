#!/usr/bin/env bash
# Stop the simulator and forget its runtime state (disks, CBT bookkeeping, credentials);
# the built binary and Go build cache in $OSM_TESTBED_CACHE/vsphere stay.
source "$(dirname "$0")/../lib.sh"
tb_stop vsphere
rm -rf "$OSM_TESTBED_STATE/vsphere"
