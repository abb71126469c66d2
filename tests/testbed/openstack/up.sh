#!/usr/bin/env bash
# OpenStack part of the test bed (idempotent): MariaDB, RabbitMQ, Keystone, Glance, Cinder
# (fake volume driver), Neutron (agentless ML2 bind driver), Placement, Nova (fake virt
# driver that plays the hypervisor for the conversion host), a loopback metadata endpoint,
# and the osm project's resources (clouds.yaml, networks, flavors, conversion-host server).
# All on 127.0.0.1, data under $OSM_TESTBED_STATE/openstack. See README.md.
source "$(dirname "$0")/../lib.sh"
HERE="$TESTBED_SRC/openstack"
T0=$(date +%s)
step() { tb_log "openstack +$(( $(date +%s) - T0 ))s: $*"; }

"$HERE/deps.sh"
VENV="$OSM_TESTBED_CACHE/openstack/venv"
B="$OSM_TESTBED_STATE/openstack"
L="$OSM_TESTBED_STATE/log"
export OSM_BYID_DIR=${OSM_BYID_DIR:-/dev/disk/by-id}
export OSM_VOLUME_DIR="$B/volumes"
mkdir -p "$OSM_BYID_DIR"  # 0755 like udev's (before the umask below)
umask 077
mkdir -p "$B"/{etc/{keystone,placement,glance,cinder,neutron,nova},data/{glance-images,glance-staging,glance-tasks,cinder,nova,lock},wsgi,mysql,rabbit,volumes,metadata}

# Ports, all on 127.0.0.1 (MariaDB off its default port so a system one cannot collide).
H=127.0.0.1
P_DB=13306 P_AMQP=5672 P_KS=5000 P_GLANCE=9292 P_CINDER=8776 P_NEUTRON=9696 P_PLACEMENT=8778 P_NOVA=8774 P_META=8775

# ---------- secrets: generated once, kept in a 0600 file ----------
if [ ! -s "$B/secrets" ]; then
  gen() { head -c 18 /dev/urandom | base64 | tr '+/' 'xy'; }
  printf 'ADMIN_PW=%s\nSVC_PW=%s\nDB_PW=%s\nUSER_PW=%s\n' "$(gen)" "$(gen)" "$(gen)" "$(gen)" >"$B/secrets"
fi
chmod 0600 "$B/secrets"
# shellcheck disable=SC1091
source "$B/secrets"
DB="mysql+pymysql://os:$DB_PW@$H:$P_DB"
TURL="rabbit://guest:guest@$H:$P_AMQP/"  # RabbitMQ's built-in guest, reachable on loopback only

# ---------- MariaDB + RabbitMQ ----------
if ! tb_running os-mariadb; then
  [ -d "$B/mysql/data/mysql" ] || mariadb-install-db --no-defaults --datadir="$B/mysql/data" --user=root \
      --skip-test-db --auth-root-authentication-method=socket >"$L/os-mariadb-init.log" 2>&1
  tb_bg os-mariadb mariadbd --no-defaults --datadir="$B/mysql/data" --user=root --bind-address=$H --port=$P_DB \
     --socket="$B/mysql/mysql.sock" --pid-file="$B/mysql/mariadb.pid" --innodb-buffer-pool-size=64M \
     --max-connections=300 --skip-log-bin --innodb-flush-log-at-trx-commit=2 --performance-schema=OFF \
     --skip-name-resolve --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci
fi
export RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_MNESIA_BASE="$B/rabbit/mnesia" RABBITMQ_LOG_BASE="$B/rabbit/log" \
  RABBITMQ_CONFIG_FILE="$B/rabbit/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$B/rabbit/enabled_plugins" \
  RABBITMQ_PID_FILE="$B/rabbit/rabbit.pid" ERL_EPMD_ADDRESS=$H \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +A 4" RABBITMQ_CTL_ERL_ARGS="+S 1:1"
rabbit_home="$B/rabbit"
if ! tb_running os-rabbitmq; then
  echo "[]." >"$B/rabbit/enabled_plugins"
  printf 'loopback_users = none\nlisteners.tcp.default = %s:%s\ndistribution.listener.interface = %s\nvm_memory_high_watermark.absolute = 512MiB\ndisk_free_limit.absolute = 50MB\n' \
    $H $P_AMQP $H >"$B/rabbit/rabbitmq.conf"
  # Our own epmd first (else the Erlang VM daemonizes one outside our process groups);
  # an epmd already serving the port (another user's) is used as it is.
  tb_running os-epmd || rm -f "$OSM_TESTBED_STATE/pids/os-epmd"
  if ! tb_running os-epmd && ! tb_wait_tcp $H 4369 1; then
    tb_bg os-epmd epmd -address $H
    tb_wait_tcp $H 4369 50 || tb_die "epmd did not start"
  fi
  HOME=$rabbit_home tb_bg os-rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
fi
for _ in $(seq 1 150); do mariadb -uroot -S "$B/mysql/mysql.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
mariadb -uroot -S "$B/mysql/mysql.sock" <<SQL || tb_die "mariadb did not start (log/os-mariadb.log)"
CREATE USER IF NOT EXISTS 'os'@'$H' IDENTIFIED BY '$DB_PW';
ALTER USER 'os'@'$H' IDENTIFIED BY '$DB_PW';
GRANT ALL ON *.* TO 'os'@'$H';
$(for d in glance cinder neutron nova_api nova_cell0 nova placement; do echo "CREATE DATABASE IF NOT EXISTS $d CHARACTER SET utf8mb4;"; done)
SQL
step "mariadb up"

# ---------- configs (0600, in a 0700 dir) ----------
authsec() { printf 'auth_url = http://%s:%s\nauth_type = password\nproject_domain_name = Default\nuser_domain_name = Default\nproject_name = service\nusername = %s\npassword = %s\nregion_name = RegionOne\n' $H $P_KS "$1" "$SVC_PW"; }
ktok() { printf '[keystone_authtoken]\nwww_authenticate_uri = http://%s:%s\n' $H $P_KS; authsec "$1"; }
E="$B/etc"; D="$B/data"
cat >"$E/keystone/keystone.conf" <<EOF
[database]
connection = sqlite:///$D/keystone.db
[fernet_tokens]
key_repository = $E/keystone/fernet-keys
[fernet_receipts]
key_repository = $E/keystone/fernet-receipts
[credential]
key_repository = $E/keystone/credential-keys
[token]
expiration = 86400
[identity]
# bcrypt at its cheapest: every password auth pays it, and this is a test bed
password_hash_rounds = 4
EOF
{ printf '[api]\nauth_strategy = keystone\n[placement_database]\nconnection = %s/placement\n' "$DB"; ktok placement; } >"$E/placement/placement.conf"
{ cat <<EOF
[DEFAULT]
enabled_backends = file:file
workers = 1
[database]
connection = $DB/glance
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $D/glance-images/
[os_glance_staging_store]
filesystem_store_datadir = $D/glance-staging/
[os_glance_tasks_store]
filesystem_store_datadir = $D/glance-tasks/
[paste_deploy]
flavor = keystone
config_file = $E/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = $D/lock
EOF
ktok glance; } >"$E/glance/glance-api.conf"
{ cat <<EOF
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = $TURL
dhcp_agent_notification = false
api_paste_config = $E/neutron/api-paste.ini
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
[database]
connection = $DB/neutron
[ml2]
type_drivers = flat,vlan,vxlan,local
tenant_network_types = vxlan
mechanism_drivers = osm_testbed_bind
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
[ml2_type_vxlan]
vni_ranges = 1:1000
[oslo_concurrency]
lock_path = $D/lock
[nova]
EOF
authsec nova; ktok neutron; } >"$E/neutron/neutron.conf"
{ cat <<EOF
[DEFAULT]
state_path = $D/cinder
auth_strategy = keystone
transport_url = $TURL
enabled_backends = fake
api_paste_config = $E/cinder/api-paste.ini
glance_api_servers = http://$H:$P_GLANCE
my_ip = $H
host = osm-testbed
report_interval = 2
periodic_interval = 5
periodic_fuzzy_delay = 0
osapi_volume_workers = 1
[database]
connection = $DB/cinder
[fake]
volume_driver = cinder.tests.fake_driver.FakeLoggingVolumeDriver
volume_backend_name = fake
[oslo_concurrency]
lock_path = $D/lock
[nova]
interface = public
EOF
authsec nova; ktok cinder; } >"$E/cinder/cinder.conf"
{ cat <<EOF
[DEFAULT]
state_path = $D/nova
host = osm-compute
my_ip = $H
compute_driver = osm_testbed.ConversionHostDriver
transport_url = $TURL
vif_plugging_is_fatal = false
vif_plugging_timeout = 0
sync_power_state_interval = -1
heal_instance_info_cache_interval = -1
update_resources_interval = 60
instance_usage_audit = false
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = $E/nova/api-paste.ini
[api_database]
connection = $DB/nova_api
[database]
connection = $DB/nova
[oslo_concurrency]
lock_path = $D/lock
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 2
[glance]
region_name = RegionOne
[oslo_messaging_notifications]
driver = noop
EOF
ktok nova; echo "[placement]"; authsec placement; echo "[neutron]"; authsec neutron
echo "[cinder]"; echo "os_region_name = RegionOne"; authsec cinder
echo "[service_user]"; echo "send_service_user_token = true"; authsec nova; } >"$E/nova/nova.conf"
cp "$VENV/etc/glance/glance-api-paste.ini" "$E/glance/"
for s in neutron cinder nova; do cp "$VENV/etc/$s/api-paste.ini" "$E/$s/"; done
chmod -R go-rwx "$B"

# WSGI shims: oslo.config must not see gunicorn's argv; the config is found through env.
for s in keystone:keystone.wsgi.api:OS_KEYSTONE_CONFIG_DIR placement:placement.wsgi.api:OS_PLACEMENT_CONFIG_DIR \
         glance:glance.wsgi.api:OS_GLANCE_CONFIG_DIR neutron:neutron.wsgi.api:OS_NEUTRON_CONFIG_DIR \
         nova:nova.wsgi.osapi_compute:OS_NOVA_CONFIG_DIR cinder:cinder.wsgi.api:-; do
  IFS=: read -r n m e <<<"$s"
  { echo "import os, sys"; echo "sys.argv = sys.argv[:1]"
    [ "$e" != - ] && echo "os.environ.setdefault('$e', '$E/$n')"
    [ "$n" = keystone ] && echo "os.environ.setdefault('OS_KEYSTONE_CONFIG_FILES', 'keystone.conf')"
    [ "$n" = neutron ] && echo "os.environ.setdefault('OS_NEUTRON_CONFIG_FILES', 'neutron.conf')"
    [ "$n" = nova ] && echo "os.environ.setdefault('OS_NOVA_CONFIG_FILES', 'api-paste.ini;nova.conf')"
    [ "$n" = cinder ] && echo "sys.argv += ['--config-file', '$E/cinder/cinder.conf']"
    echo "from $m import application  # noqa"; } >"$B/wsgi/${n}_app.py"
done
wsgi() { # name port module: one worker, few threads (memory)
  tb_running "os-$1" || tb_bg "os-$1" "$VENV/bin/gunicorn" --chdir "$B/wsgi" -w 1 --threads 4 --timeout 120 \
     --no-control-socket -b "$H:$2" "$3"; }
wait_http() { for _ in $(seq 1 "${2:-600}"); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; tb_die "timeout waiting for $1"; }

# ---------- Keystone ----------
KM=("$VENV/bin/keystone-manage" --config-file "$E/keystone/keystone.conf")
if [ ! -f "$B/.keystone-ready" ]; then
  "${KM[@]}" db_sync >"$L/os-keystone-init.log" 2>&1
  for k in fernet_setup credential_setup; do "${KM[@]}" "$k" --keystone-user root --keystone-group root >>"$L/os-keystone-init.log" 2>&1; done
  OS_BOOTSTRAP_PASSWORD=$ADMIN_PW "${KM[@]}" bootstrap --bootstrap-admin-url http://$H:$P_KS/v3 \
     --bootstrap-public-url http://$H:$P_KS/v3 --bootstrap-internal-url http://$H:$P_KS/v3 \
     --bootstrap-region-id RegionOne >>"$L/os-keystone-init.log" 2>&1
  touch "$B/.keystone-ready"
fi
wsgi keystone $P_KS keystone_app:application

# ---------- schema migrations, once per venv (in parallel) ----------
dbstamp="$B/.db-synced-$(cat "$VENV/.osm-reqs")"
tb_wait_tcp $H $P_DB || tb_die "mariadb not listening"
if [ ! -f "$dbstamp" ]; then
  J=()
  "$VENV/bin/placement-manage" --config-file "$E/placement/placement.conf" db sync >"$L/os-dbsync-placement.log" 2>&1 & J+=($!)
  "$VENV/bin/glance-manage" --config-file "$E/glance/glance-api.conf" db_sync >"$L/os-dbsync-glance.log" 2>&1 & J+=($!)
  "$VENV/bin/neutron-db-manage" --config-file "$E/neutron/neutron.conf" upgrade heads >"$L/os-dbsync-neutron.log" 2>&1 & J+=($!)
  "$VENV/bin/cinder-manage" --config-file "$E/cinder/cinder.conf" db sync >"$L/os-dbsync-cinder.log" 2>&1 & J+=($!)
  NM=("$VENV/bin/nova-manage" --config-file "$E/nova/nova.conf")
  ( "${NM[@]}" api_db sync &&
    { "${NM[@]}" cell_v2 list_cells | grep -q ' cell0 ' || "${NM[@]}" cell_v2 map_cell0 --database_connection "$DB/nova_cell0"; } &&
    { "${NM[@]}" cell_v2 list_cells | grep -q ' cell1 ' || "${NM[@]}" cell_v2 create_cell --name cell1; } &&
    "${NM[@]}" db sync ) >"$L/os-dbsync-nova.log" 2>&1 & J+=($!)
  for j in "${J[@]}"; do wait "$j" || tb_die "a db sync failed (log/os-dbsync-*.log)"; done
  touch "$dbstamp"
  step "db migrations done"
fi

# ---------- identity: service users, catalog, osm project/user/app credential, clouds.yaml ----------
wait_http http://$H:$P_KS/v3
step "keystone up"
export OSM_OS_STATE="$B" OS_CLIENT_CONFIG_FILE="$B/clouds.yaml"
idstamp="$B/.identity-$(cat "$B/secrets" "$HERE/provision.py" | sha256sum | cut -c1-16)"
if [ ! -f "$idstamp" ] || [ ! -s "$B/clouds.yaml" ]; then
  rm -f "$B"/.identity-*
  "$VENV/bin/python" "$HERE/provision.py" identity || tb_die "identity provisioning failed"
  touch "$idstamp"
  step "identity provisioned"
fi

for _ in $(seq 1 150); do HOME=$rabbit_home /usr/lib/rabbitmq/bin/rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 0.4; done
tb_wait_tcp $H $P_AMQP 50 || tb_die "rabbitmq not listening (log/os-rabbitmq.log)"
step "rabbitmq up"

# ---------- services ----------
wsgi placement $P_PLACEMENT placement_app:application
wsgi glance $P_GLANCE glance_app:application
wsgi neutron $P_NEUTRON neutron_app:application
wsgi cinder-api $P_CINDER cinder_app:application
wsgi nova-api $P_NOVA nova_app:application
for s in scheduler volume; do
  tb_running "os-cinder-$s" || tb_bg "os-cinder-$s" "$VENV/bin/cinder-$s" --config-file "$E/cinder/cinder.conf"
done
for s in conductor scheduler; do  # in one process each (see nova_nofork.py)
  tb_running "os-nova-$s" || tb_bg "os-nova-$s" "$VENV/bin/python" "$HERE/nova_nofork.py" "$s" --config-file "$E/nova/nova.conf"
done
tb_running os-nova-compute || tb_bg os-nova-compute "$VENV/bin/nova-compute" --config-file "$E/nova/nova.conf"
tb_running os-metadata || tb_bg os-metadata "$VENV/bin/python" "$HERE/metadata_server.py" \
   --bind $H --port $P_META --file "$B/metadata/meta_data.json"
for p in $P_PLACEMENT $P_GLANCE $P_NEUTRON $P_CINDER $P_NOVA; do wait_http "http://$H:$p/"; done
step "APIs answering"

# ---------- resources: networks, flavors, image, conversion-host server, metadata ----------
"$VENV/bin/python" "$HERE/provision.py" resources || tb_die "resource provisioning failed"
tb_wait_tcp $H $P_META 50 || tb_die "metadata endpoint not listening"
# shellcheck disable=SC1091
source "$B/resources.env"
step "resources provisioned"

tb_env openstack \
  OS_CLIENT_CONFIG_FILE="$B/clouds.yaml" \
  OS_CLOUD=osm-user \
  OSM_OS_ADMIN_CLOUD=osm-admin \
  OSM_OS_APPCRED_CLOUD=osm-appcred \
  OSM_OS_AUTH_URL="http://$H:$P_KS/v3" \
  OSM_OS_PROJECT_ID="$PROJECT_ID" \
  OSM_METADATA_URL="http://$H:$P_META" \
  OSM_CONVERSION_HOST_ID="$CONVERSION_HOST_ID" \
  OSM_CONVERSION_HOST_NAME="$CONVERSION_HOST_NAME" \
  OSM_BYID_DIR="$OSM_BYID_DIR" \
  OSM_VOLUME_DIR="$OSM_VOLUME_DIR" \
  OSM_OPENSTACK_CLI="$VENV/bin/openstack" \
  OSM_OS_NETWORK="$NETWORK" \
  OSM_OS_NETWORK2="$NETWORK2"
step "ready"
