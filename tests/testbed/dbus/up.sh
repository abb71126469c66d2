#!/usr/bin/env bash
# A private system-type D-Bus daemon carrying the project's own policy file.
source "$(dirname "$0")/../lib.sh"
dir="$OSM_TESTBED_STATE/dbus"
if ! tb_running dbus; then
  rm -rf "$dir"; mkdir -p "$dir/system.d"
  sed "s|@DIR@|$dir|g" "$TESTBED_SRC/dbus/system-bus.conf.in" >"$dir/system-bus.conf"
  cp "$REPO_ROOT/systemd/io.github.os_migrate.Agent1.conf" "$dir/system.d/"
  tb_bg dbus dbus-daemon --nofork --nopidfile --config-file="$dir/system-bus.conf"
  for _ in $(seq 1 50); do [ -S "$dir/system_bus_socket" ] && break; sleep 0.1; done
  [ -S "$dir/system_bus_socket" ] || tb_die "dbus-daemon did not listen; see $OSM_TESTBED_STATE/log/dbus.log"
fi
tb_env dbus "OSM_TEST_DBUS_ADDRESS=unix:path=$dir/system_bus_socket"
