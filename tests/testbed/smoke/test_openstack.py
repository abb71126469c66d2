"""Smoke test of the test bed's OpenStack (tests/testbed/openstack).

Needs the bed up and its env in os.environ (`source $OSM_TESTBED_STATE/env`); stdlib +
pytest only, talks to the clouds through $OSM_OPENSTACK_CLI. Root is needed to write to the
loop devices that stand for the conversion host's attached volumes.
"""
import json
import os
import random
import stat
import subprocess
import time
import urllib.request
import uuid

import pytest

CLI = os.environ.get("OSM_OPENSTACK_CLI")
pytestmark = pytest.mark.skipif(
    not CLI or not os.environ.get("OSM_CONVERSION_HOST_ID"),
    reason="OpenStack test bed not up (tests/testbed/up; source $OSM_TESTBED_STATE/env)")

GiB = 1 << 30
CH = os.environ.get("OSM_CONVERSION_HOST_ID", "")
ADMIN = os.environ.get("OSM_OS_ADMIN_CLOUD", "osm-admin")


def osc(*args, cloud=None, parse=True, timeout=300):
    cmd = [CLI]
    if cloud:
        cmd += ["--os-cloud", cloud]
    cmd += [str(a) for a in args]
    if parse:
        cmd += ["-f", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(cmd[1:]), r.returncode, r.stderr[-2000:]))
    return json.loads(r.stdout) if parse and r.stdout.strip() else r.stdout


def poll(what, fn, timeout=60.0, step=0.2):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timeout (%ss) waiting for %s" % (timeout, what))
        time.sleep(step)


def volume_status(vol_id):
    return osc("volume", "show", vol_id)["status"]


def wait_volume(vol_id, status, timeout=120):
    poll("volume %s %s" % (vol_id, status), lambda: volume_status(vol_id) == status, timeout, 1.0)


def byid_link(vol_id):
    return os.path.join(os.environ["OSM_BYID_DIR"], "virtio-" + vol_id[:20])


def backing_file(vol_id):
    return os.path.join(os.environ["OSM_VOLUME_DIR"], vol_id + ".img")


def loops_of(path):
    out = subprocess.run(["losetup", "--noheadings", "--output", "NAME", "--associated", path],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def dev_size(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# Known bytes at the start, in the middle and in the last block of the 1 GiB volume.
PATTERN = {0: b"osm-head-" + uuid.uuid4().bytes, GiB // 2 + 12345: b"osm-middle",
           GiB - 4096: b"osm-tail-block" * 10}


def write_pattern(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        for off, data in PATTERN.items():
            assert os.pwrite(fd, data, off) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pattern(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return {off: os.pread(fd, len(data), off) for off, data in PATTERN.items()}
    finally:
        os.close(fd)


@pytest.mark.parametrize("cloud", ["osm-admin", "osm-user", "osm-appcred"])
def test_token_issue(cloud):
    tok = osc("token", "issue", cloud=cloud)
    assert tok["id"] and tok["expires"]
    if cloud != "osm-admin":
        assert tok["project_id"] == os.environ["OSM_OS_PROJECT_ID"]


def test_clouds_yaml_is_private():
    mode = stat.S_IMODE(os.stat(os.environ["OS_CLIENT_CONFIG_FILE"]).st_mode)
    assert mode == 0o600, oct(mode)


def test_metadata_endpoint_describes_the_conversion_host():
    url = os.environ["OSM_METADATA_URL"].rstrip("/") + "/openstack/latest/meta_data.json"
    with urllib.request.urlopen(url, timeout=10) as r:
        md = json.load(r)
    assert md["uuid"] == CH
    srv = osc("server", "show", CH)
    assert srv["status"] == "ACTIVE"
    assert md["name"] == srv["name"] == os.environ["OSM_CONVERSION_HOST_NAME"]
    assert md["availability_zone"] == srv["OS-EXT-AZ:availability_zone"]
    assert md["project_id"] == os.environ["OSM_OS_PROJECT_ID"]


def test_attached_volume_is_a_block_device_keeping_its_bytes():
    name = "smoke-vol-%s" % uuid.uuid4().hex[:8]
    vol = osc("volume", "create", "--size", 1, name)["id"]
    link, backing = byid_link(vol), backing_file(vol)
    attached = False
    try:
        wait_volume(vol, "available")
        osc("server", "add", "volume", CH, vol)
        attached = True
        wait_volume(vol, "in-use")
        poll("by-id link " + link, lambda: os.path.islink(link), timeout=30)
        dev = os.path.realpath(link)
        assert stat.S_ISBLK(os.stat(dev).st_mode), dev
        assert dev_size(link) == GiB
        write_pattern(link)
        assert read_pattern(link) == PATTERN

        osc("server", "remove", "volume", CH, vol, parse=False)
        attached = False
        wait_volume(vol, "available")
        poll("by-id link gone", lambda: not os.path.lexists(link), timeout=30)
        assert loops_of(backing) == [], "loop device still attached"
        assert os.path.getsize(backing) == GiB
        assert read_pattern(backing) == PATTERN  # the file kept the bytes

        osc("server", "add", "volume", CH, vol)
        attached = True
        wait_volume(vol, "in-use")
        poll("by-id link after re-attach", lambda: os.path.islink(link), timeout=30)
        assert read_pattern(link) == PATTERN
    finally:
        if attached:
            osc("server", "remove", "volume", CH, vol, parse=False)
            wait_volume(vol, "available")
            poll("by-id link gone", lambda: not os.path.lexists(link), timeout=30)
        osc("volume", "delete", vol, parse=False)
        if os.path.exists(backing) and not loops_of(backing):
            os.unlink(backing)


def test_port_with_fixed_mac():
    mac = "fa:16:3e:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))
    port = osc("port", "create", "--network", os.environ["OSM_OS_NETWORK"], "--mac-address", mac,
               "smoke-port-%s" % uuid.uuid4().hex[:8])
    try:
        assert port["mac_address"] == mac
        assert len(port["fixed_ips"]) >= 1
    finally:
        osc("port", "delete", port["id"], parse=False)


def test_boot_from_volume_server_goes_active():
    """A migrated VM: boots from its volume; it (and a data volume attached to it) gets no
    device on the conversion host."""
    tag = uuid.uuid4().hex[:8]
    vol = osc("volume", "create", "--size", 1, "smoke-boot-%s" % tag)["id"]
    data = osc("volume", "create", "--size", 1, "smoke-data-%s" % tag)["id"]
    srv = None
    try:
        wait_volume(vol, "available")
        osc("volume", "set", "--bootable", vol, parse=False)
        srv = osc("server", "create", "--flavor", "osm.small", "--network", os.environ["OSM_OS_NETWORK"],
                  "--block-device", "uuid=%s,source_type=volume,destination_type=volume,boot_index=0" % vol,
                  "--wait", "smoke-bfv-%s" % tag)["id"]
        assert osc("server", "show", srv)["status"] == "ACTIVE"
        wait_volume(vol, "in-use")
        wait_volume(data, "available")
        osc("server", "add", "volume", srv, data)
        wait_volume(data, "in-use")
        time.sleep(2.5)  # longer than the by-id delay the conversion host would see
        for v in (vol, data):
            assert not os.path.lexists(byid_link(v)), "only the conversion host gets devices"
            assert not os.path.exists(backing_file(v))
    finally:
        if srv:
            osc("server", "delete", "--wait", srv, parse=False)
        for v in (vol, data):
            wait_volume(v, "available")
            osc("volume", "delete", v, parse=False)
