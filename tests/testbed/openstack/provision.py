"""Idempotent provisioning of the test bed's OpenStack (run by up.sh with the venv's python).

  provision.py identity   service users + catalog, project/user osm, application
                          credential, clouds.yaml (0600) with osm-admin, osm-user, osm-appcred
  provision.py resources  flavors, image, networks/subnets, security group, the server that
                          stands for the conversion host, meta_data.json and resources.env

Reads $OSM_OS_STATE/secrets (0600, written by up.sh); writes into $OSM_OS_STATE.
"""
import io
import json
import os
import sys
import time

import openstack
import yaml

# A caller's OS_CLOUD/OS_* (e.g. from a sourced test-bed env) would be merged into every
# connection made here: keep only the clouds.yaml path.
for _k in [k for k in os.environ if k.startswith("OS_") and k != "OS_CLIENT_CONFIG_FILE"]:
    del os.environ[_k]

H = "127.0.0.1"
AUTH_URL = "http://%s:5000/v3" % H
REGION = "RegionOne"
STATE = os.environ["OSM_OS_STATE"]
CLOUDS = os.path.join(STATE, "clouds.yaml")
PROJECT = "osm"
USER = "osm"
APPCRED = "osm-agent"
CH_NAME = "osm-conversion-host"
CH_ROLE = {"osm_testbed_role": "conversion-host"}
NETWORK, NETWORK2 = "osm-net", "osm-net2"

SERVICES = [  # (service name, type, endpoint URL, service user)
    ("keystone", "identity", "http://%s:5000/v3" % H, None),
    ("glance", "image", "http://%s:9292" % H, "glance"),
    ("cinderv3", "volumev3", "http://%s:8776/v3" % H, "cinder"),
    ("cinder", "block-storage", "http://%s:8776/v3" % H, None),
    ("neutron", "network", "http://%s:9696" % H, "neutron"),
    ("nova", "compute", "http://%s:8774/v2.1" % H, "nova"),
    ("placement", "placement", "http://%s:8778" % H, "placement"),
]
FLAVORS = [("osm.small", 1, 1024, 10), ("osm.medium", 2, 4096, 20), ("osm.large", 4, 8192, 40)]


def secrets():
    out = {}
    with open(os.path.join(STATE, "secrets")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = v
    return out


def log(msg):
    print("[provision] %s" % msg, file=sys.stderr, flush=True)


def write_private(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def pw_cloud(username, password, project):
    return {"auth": {"auth_url": AUTH_URL, "username": username, "password": password,
                     "project_name": project, "user_domain_name": "Default",
                     "project_domain_name": "Default"},
            "region_name": REGION, "identity_api_version": 3, "interface": "public"}


def connect(**cloud):
    auth = cloud.pop("auth")
    return openstack.connect(auth_type=cloud.pop("auth_type", "password"), **auth, **cloud)


# ---------------------------------------------------------------- identity
def identity():
    s = secrets()
    admin = connect(**pw_cloud("admin", s["ADMIN_PW"], "admin"))
    idn = admin.identity

    def role(name):
        return idn.find_role(name) or idn.create_role(name=name)

    def project(name, desc):
        return idn.find_project(name, domain_id="default") or \
            idn.create_project(name=name, domain_id="default", description=desc)

    def user(name, password, proj):
        u = idn.find_user(name, domain_id="default")
        if u is None:
            return idn.create_user(name=name, password=password, domain_id="default",
                                   default_project_id=proj.id)
        return idn.update_user(u, password=password)  # follow the secrets file

    r_admin, r_service, r_member = role("admin"), role("service"), role("member")
    svc = project("service", "OpenStack service users")
    for name, stype, url, suser in SERVICES:
        if suser:
            u = user(suser, s["SVC_PW"], svc)
            idn.assign_project_role_to_user(svc, u, r_admin)
            idn.assign_project_role_to_user(svc, u, r_service)
        found = [x for x in idn.services() if x.type == stype]
        sv = found[0] if found else idn.create_service(name=name, type=stype, is_enabled=True)
        have = {e.interface: e for e in idn.endpoints(service_id=sv.id)}
        for iface in ("public", "internal", "admin"):
            if iface not in have:
                idn.create_endpoint(service_id=sv.id, interface=iface, url=url, region_id=REGION)
            elif have[iface].url != url:
                idn.update_endpoint(have[iface], url=url)

    osm = project(PROJECT, "osm: the project the conversion host lives in")
    u = user(USER, s["USER_PW"], osm)
    idn.assign_project_role_to_user(osm, u, r_member)

    clouds = {"osm-admin": pw_cloud("admin", s["ADMIN_PW"], "admin"),
              "osm-user": pw_cloud(USER, s["USER_PW"], PROJECT)}
    # The application credential's secret is shown only once: keep the one in clouds.yaml
    # while it still authenticates, else make a new one.
    old = {}
    if os.path.exists(CLOUDS):
        with open(CLOUDS) as f:
            old = (yaml.safe_load(f) or {}).get("clouds", {}).get("osm-appcred") or {}
    appcred = None
    if old:
        try:
            c = dict(old, auth=dict(old["auth"]))
            connect(**c).authorize()
            appcred = old
        except Exception as e:  # noqa: BLE001 - any failure means: make a new one
            log("application credential no longer valid (%s): recreating" % type(e).__name__)
    if appcred is None:
        user_conn = connect(**pw_cloud(USER, s["USER_PW"], PROJECT))
        uid = user_conn.current_user_id
        for ac in user_conn.identity.application_credentials(user=uid):
            if ac.name == APPCRED:
                user_conn.identity.delete_application_credential(uid, ac.id)
        ac = user_conn.identity.create_application_credential(
            user=uid, name=APPCRED, description="osm agent in the test bed")
        appcred = {"auth_type": "v3applicationcredential",
                   "auth": {"auth_url": AUTH_URL, "application_credential_id": ac.id,
                            "application_credential_secret": ac.secret},
                   "region_name": REGION, "identity_api_version": 3, "interface": "public"}
    clouds["osm-appcred"] = appcred
    write_private(CLOUDS, yaml.safe_dump({"clouds": clouds}, default_flow_style=False))
    log("identity ready: project %s user %s app credential %s"
        % (osm.id, USER, appcred["auth"]["application_credential_id"]))


# ---------------------------------------------------------------- resources
def wait_for(what, fn, timeout=300, step=1.0):
    end = time.time() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - services still starting
            last = e
        else:
            last = None
        if time.time() > end:
            raise SystemExit("timeout waiting for %s (%s)" % (what, last))
        time.sleep(step)


def resources():
    admin = openstack.connect(cloud="osm-admin")
    user = openstack.connect(cloud="osm-user")
    project_id = user.current_project_id

    for name, vcpus, ram, disk in FLAVORS:
        if not admin.compute.find_flavor(name, ignore_missing=True):
            admin.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)

    img = admin.image.find_image("osm-testbed-image")
    if img is None or img.status != "active":
        if img is not None:
            admin.image.delete_image(img)
        img = admin.image.create_image(
            name="osm-testbed-image", disk_format="raw", container_format="bare",
            data=io.BytesIO(b"\0" * (1 << 20)), visibility="public", wait=True, timeout=120)

    net = user.network
    nets = {}
    for name, cidr4, cidr6 in ((NETWORK, "10.77.0.0/24", "fd00:77::/64"), (NETWORK2, "10.78.0.0/24", None)):
        n = net.find_network(name, project_id=project_id) or net.create_network(name=name)
        subs = {s.name for s in net.subnets(network_id=n.id)}
        if name + "-v4" not in subs:
            net.create_subnet(name=name + "-v4", network_id=n.id, ip_version=4, cidr=cidr4)
        if cidr6 and name + "-v6" not in subs:
            net.create_subnet(name=name + "-v6", network_id=n.id, ip_version=6, cidr=cidr6,
                              ipv6_address_mode="dhcpv6-stateful", ipv6_ra_mode="dhcpv6-stateful")
        nets[name] = n
    sg = net.find_security_group("osm-sg", project_id=project_id)
    if sg is None:
        sg = net.create_security_group(name="osm-sg", description="osm test bed: ssh + icmp in")
        for rule in ({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "ethertype": "IPv4"},
                     {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "ethertype": "IPv6"},
                     {"protocol": "icmp", "ethertype": "IPv4"}):
            net.create_security_group_rule(security_group_id=sg.id, direction="ingress", **rule)

    # nova-compute registered and mapped into the cell, cinder-volume reporting
    wait_for("nova-compute up", lambda: any(
        s.binary == "nova-compute" and s.state == "up" for s in admin.compute.services()))
    wait_for("hypervisor in placement", lambda: any(
        h.name == "osm-compute" for h in admin.compute.hypervisors()))
    wait_for("cinder-volume up", lambda: any(
        s.binary == "cinder-volume" and s.state == "up" for s in admin.block_storage.services()))

    srv = user.compute.find_server(CH_NAME, ignore_missing=True)
    if srv is not None:
        srv = user.compute.get_server(srv.id)
        if srv.status == "ERROR":
            log("conversion host in ERROR: recreating")
            user.compute.delete_server(srv)
            user.compute.wait_for_delete(srv, wait=120)
            srv = None
    if srv is None:
        srv = user.compute.create_server(
            name=CH_NAME, image_id=img.id, flavor_id=user.compute.find_flavor("osm.medium").id,
            networks=[{"uuid": nets[NETWORK].id}], security_groups=[{"name": "osm-sg"}],
            metadata=CH_ROLE)
    srv = user.compute.wait_for_server(srv, status="ACTIVE", wait=300)

    meta = {"uuid": srv.id, "name": srv.name, "hostname": srv.name,
            "availability_zone": srv.availability_zone or "nova", "project_id": srv.project_id,
            "launch_index": 0, "meta": dict(srv.metadata or {}), "public_keys": {}, "keys": [],
            "devices": [], "dedicated_cpus": []}
    write_private(os.path.join(STATE, "metadata", "meta_data.json"), json.dumps(meta))
    with open(os.path.join(STATE, "resources.env"), "w") as f:
        f.write("CONVERSION_HOST_ID=%s\nCONVERSION_HOST_NAME=%s\nNETWORK=%s\nNETWORK2=%s\nPROJECT_ID=%s\n"
                % (srv.id, srv.name, NETWORK, NETWORK2, project_id))
    log("conversion host %s ACTIVE in %s" % (srv.id, srv.availability_zone))


if __name__ == "__main__":
    {"identity": identity, "resources": resources}[sys.argv[1]]()
