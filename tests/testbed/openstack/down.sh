#!/usr/bin/env bash
# Stop the OpenStack part of the test bed (what up.sh started, by recorded process group)
# and release the conversion host's loop devices and by-id links. Data and volume backing
# files stay under $OSM_TESTBED_STATE/openstack; the next up.sh restores attached volumes.
source "$(dirname "$0")/../lib.sh"
HERE="$TESTBED_SRC/openstack"
B="$OSM_TESTBED_STATE/openstack"
# shellcheck disable=SC1091
[ -f "$OSM_TESTBED_STATE/env.d/openstack.env" ] && source "$OSM_TESTBED_STATE/env.d/openstack.env"
export OSM_BYID_DIR=${OSM_BYID_DIR:-/dev/disk/by-id} OSM_VOLUME_DIR=${OSM_VOLUME_DIR:-$B/volumes}

stop_all() { local n; for n in "$@"; do tb_stop "$n" & done; wait; }
# Services first (in parallel), then the message bus and database, then epmd.
stop_all os-metadata os-nova-compute os-nova-conductor os-nova-scheduler os-nova-api \
         os-cinder-volume os-cinder-scheduler os-cinder-api os-neutron os-glance os-placement os-keystone
if [ -d "$OSM_VOLUME_DIR" ]; then
  PYTHONPATH="$HERE/osm_testbed_os" python3 -m osm_testbed_os.hypervisor release-all >/dev/null 2>&1 || true
fi
stop_all os-rabbitmq os-mariadb
stop_all os-epmd
