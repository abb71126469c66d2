"""The twin conversion-host image booted under qemu (TCG) with a NoCloud seed carrying a plan.

Under real systemd in the guest: osm-agent (installed from the RPM) reaches `active`, answers
on the system bus and to `osmctl status`, and runs the plan from user-data unattended against
the test bed: vCenter simulator and OpenStack APIs through qemu's alias of the host loopback,
volumes hot-plugged into the guest by the bed's Nova driver. The migrated bytes are compared
with the source disks, the status is read from the twin's own Nova metadata, and
`osmctl cleanup` from inside the guest must refuse to remove a migrated server's volumes.

Needs the test bed's env (source $OSM_TESTBED_STATE/env) and an RPM from packaging/build-rpm.
About 6-10 min on 2 cores, most of it the guest's boot and cloud-init under TCG.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed", "smoke"))
from test_vsphere import SoapFault, Vim, ctl  # noqa: E402  (the bed's SOAP helpers)

from guest import Guest, make_seed  # noqa: E402

ENV = os.environ
VM = "osm-twin-1"
HOST_NAME = "osm-twin-host"
for key in ("OSM_VC_URL", "OSM_OPENSTACK_CLI", "OSM_VOLUME_DIR"):
    if key not in ENV:
        pytest.fail(f"{key} is not set: run tests/testbed/up and source $OSM_TESTBED_STATE/env",
                    pytrace=False)


def openstack(*args, cloud=None):
    argv = [ENV["OSM_OPENSTACK_CLI"], *args]
    if cloud:
        argv[1:1] = ["--os-cloud", cloud]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"openstack {' '.join(args)}: {r.stderr.strip()}"
    return json.loads(r.stdout) if "-f" in args and "json" in args else r.stdout


def find(kind, *filters):
    return openstack(kind, "list", *filters, "-f", "json")


def sha256_prefix(path, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            b = f.read(min(left, 1 << 20))
            assert b, f"{path} is shorter than {length}"
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def remove_leftovers(vim):
    """The twin server, the migrated server, its ports and volumes; the source powered on again."""
    for name in (HOST_NAME, VM):
        for s in find("server", "--name", f"^{name}$"):
            openstack("server", "delete", "--wait", s["ID"])
    for p in find("port", "--long"):
        if VM in (p.get("Name") or ""):
            openstack("port", "delete", p["ID"])
    for v in find("volume", "--long"):
        if (v.get("Properties") or {}).get("osm_vm_name") == VM or VM in (v.get("Name") or ""):
            openstack("volume", "delete", "--force", v["ID"], cloud=ENV["OSM_OS_ADMIN_CLOUD"])
            backing = os.path.join(ENV["OSM_VOLUME_DIR"], v["ID"] + ".img")  # the bed keeps it
            if os.path.exists(backing):
                os.unlink(backing)
    vm = vim.find_vm(VM)
    if vim.props(vm, "runtime.powerState")["runtime.powerState"].text != "poweredOn":
        vim.wait(vim.call("PowerOnVM_Task", vm, ""))


def user_data(host_id, vc, password, ca, clouds):
    """#cloud-config as an operator writes it (image-builder/user-data.example.yaml), for the bed."""
    ports = sorted({vc.port, *(urllib.parse.urlsplit(u).port for u in catalog_urls())})
    plan = f'''vms = ["{VM}"]
mode = "cold"
skip_conversion = true

[source]
vcenter = "{vc.hostname}:{vc.port}"
user = "{ENV['OSM_VC_USER']}"
password = {{ file = "/etc/osm/vcenter.password" }}
ca_file = "/etc/osm/vcenter-ca.pem"
datacenter = "{ENV['OSM_VC_DATACENTER']}"
transport = "https"

[destination]
cloud = "osm-appcred"
clouds_yaml = "/etc/openstack/clouds.yaml"

[network]
default_network = "{ENV['OSM_OS_NETWORK']}"
'''
    files = [
        ("/etc/osm-twin/forward-ports", "0644", "\n".join(map(str, ports)) + "\n"),
        ("/etc/osm/vcenter.password", "0600", password + "\n"),
        ("/etc/osm/vcenter-ca.pem", "0644", ca),
        ("/etc/openstack/clouds.yaml", "0600", clouds),
        ("/etc/osm/config.d/50-cloud.toml", "0644",
         f'[openstack]\ncloud = "osm-appcred"\nclouds_file = "/etc/openstack/clouds.yaml"\n'
         f'instance_id = "{host_id}"\n'),
        ("/etc/osm/plans.d/20-broken.toml", "0600", 'vms = "not a list"\n'),
    ]
    out = ["#cloud-config", "write_files:"]
    for path, mode, content in files:
        out += [f"  - path: {path}", "    owner: root:root", f'    permissions: "{mode}"', "    content: |"]
        out += ["      " + line for line in content.splitlines()]
    # The valid plan in the user-data's own `osm:` section (docs/unattended.md).
    out += ["osm:", "  plans:", "    10-twin.toml: |"] + ["      " + line for line in plan.splitlines()]
    return "\n".join(out) + "\n"


def catalog_urls():
    cat = openstack("catalog", "list", "-f", "json")
    return [e["url"] for svc in cat for e in svc["Endpoints"] if e.get("interface") == "public"] \
        + [ENV["OSM_OS_AUTH_URL"]]


@pytest.fixture(scope="module")
def image():
    r = subprocess.run([os.path.join(ROOT, "image-builder", "twin", "build.sh")],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"image-builder/twin/build.sh failed:\n{r.stderr[-3000:]}"
    return r.stdout.strip().splitlines()[-1]


def test_twin_boots_and_migrates_unattended(image):
    vim = Vim()
    vim.login()
    remove_leftovers(vim)
    run_dir = tempfile.mkdtemp(prefix="osm-twin.", dir=os.environ.get("OSM_TEST_SCRATCH", "/var/tmp"))
    os.chmod(run_dir, 0o700)
    qmp = os.path.join(run_dir, "qmp.sock")

    # Source: fresh random bytes on both disks, so only this run's copy can match.
    disks = sorted((d for d in ctl("/disks") if d["vm"] == VM), key=lambda d: d["index"])
    assert len(disks) == 2, disks
    seed = int(time.time())
    for d in disks:
        ctl("/guest-write", {"vm": VM, "disk": d["key"], "offset": 3 << 20, "length": 1 << 20, "seed": seed})

    host = openstack("server", "create", "--flavor", "osm.medium", "--image", "osm-testbed-image",
                     "--network", ENV["OSM_OS_NETWORK"], "--property", "osm_testbed_role=conversion-host",
                     "--property", f"osm_testbed_qmp={qmp}", "--wait", HOST_NAME, "-f", "json")
    vc = urllib.parse.urlsplit(ENV["OSM_VC_URL"])
    ud = user_data(host["id"], vc, open(ENV["OSM_VC_PASSWORD_FILE"]).read().strip(),
                   open(ENV["OSM_VC_CA_FILE"]).read(), open(ENV["OS_CLIENT_CONFIG_FILE"]).read())
    seed_img = os.path.join(run_dir, "seed.img")
    make_seed(seed_img, {"user-data": ud, "meta-data": f"instance-id: {host['id']}\nlocal-hostname: osm-twin\n"})

    guest = Guest(image, seed_img, run_dir)
    passed = False
    try:
        t0 = time.monotonic()
        guest.wait_agent(600)
        print(f"twin: guest agent up after {time.monotonic() - t0:.0f}s")
        # The unit under real systemd (PID 1), from the RPM's files.
        deadline = time.monotonic() + 300
        while guest.run("systemctl", "is-active", "--quiet", "osm-agent")[0] != 0:
            state = guest.run("systemctl", "is-active", "osm-agent")[1].strip()
            assert state != "failed" and time.monotonic() < deadline, \
                f"osm-agent is {state}: " + guest.run("journalctl", "-u", "osm-agent", "-n", "30", "--no-pager")[1]
            time.sleep(2)
        print(f"twin: osm-agent active after {time.monotonic() - t0:.0f}s")
        assert guest.check("systemctl", "show", "-P", "Type", "osm-agent").strip() == "notify"
        intro = guest.check("busctl", "--system", "introspect", "io.github.os_migrate.Agent1",
                            "/io/github/os_migrate/Agent1")
        assert "io.github.os_migrate.Agent1.Manager" in intro and ".Migrate" in intro, intro
        assert guest.check("stat", "-c", "%a %U", "/var/lib/osm").split() == ["700", "root"]
        assert "osm:" in guest.check("getent", "group", "osm")  # sysusers.d from the RPM

        # The plan from user-data runs; the broken one is reported, never a crash loop.
        deadline = time.monotonic() + 900
        while True:
            out = guest.check("osmctl", "status")
            line = next((ln for ln in out.splitlines() if VM in ln), "")
            if any(w in line for w in ("succeeded", "failed", "cancelled")) or time.monotonic() > deadline:
                break
            time.sleep(5)
        print(f"twin: osmctl status after {time.monotonic() - t0:.0f}s:\n{out}")
        assert "succeeded" in line, f"{VM} did not finish: {line!r}\n" + guest.run(
            "journalctl", "-u", "osm-agent", "-n", "60", "--no-pager")[1]
        assert guest.check("systemctl", "show", "-P", "NRestarts", "osm-agent").strip() == "0"
        journal = guest.check("journalctl", "-u", "osm-agent", "--no-pager", "-o", "cat")
        assert "20-broken.toml" in journal, journal[-3000:]
        assert "plan user-data:osm.plans.10-twin.toml started: jobs [1]" in journal, journal[-3000:]
        assert ENV["OSM_VC_USER"] not in guest.check("ps", "-eo", "args")  # nothing secret in argv
        password = open(ENV["OSM_VC_PASSWORD_FILE"]).read().strip()
        assert password not in journal

        # The agent publishes a few seconds after the last change (debounced): wait for it.
        deadline = time.monotonic() + 120
        while True:
            meta = openstack("server", "show", host["id"], "-f", "json")["properties"]
            if meta.get(f"osm_vm_{VM}", "").startswith("succeeded") or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert meta.get(f"osm_vm_{VM}", "").startswith("succeeded"), meta
        assert any("20-broken.toml" in v for k, v in meta.items() if k.startswith("osm_plan_error_")), meta
        assert meta.get("osm_status", "").startswith("1 done; 1 plan error"), meta

        # Byte for byte: each volume (its backing file on the host) equals its source disk.
        server = find("server", "--name", f"^{VM}$")
        assert len(server) == 1 and server[0]["Status"] == "ACTIVE", server
        vols = {v["ID"]: v for v in find("volume", "--long") if (v.get("Properties") or {}).get("osm_vm_name") == VM}
        assert len(vols) == 2, vols
        by_key = {int(v["Properties"]["osm_disk_key"]): vid for vid, v in vols.items()}
        for d in disks:
            vid = by_key[d["key"]]
            assert sha256_prefix(os.path.join(ENV["OSM_VOLUME_DIR"], vid + ".img"), d["capacity"]) \
                == sha256_prefix(d["flat"], d["capacity"]), f"disk {d['key']} differs from volume {vid}"
        lsblk = guest.check("lsblk", "-dno", "NAME")
        assert lsblk.split() == ["vda", "vdb"], f"volumes still plugged into the twin: {lsblk}"

        # A migrated VM's resources are the server's now: cleanup refuses to remove them.
        code, _, err = guest.run("osmctl", "cleanup", VM)
        assert code == 1 and "belong to the migrated server" in err, (code, err)
        assert guest.shutdown() == 0, "the guest did not power off cleanly"
        print(f"twin: powered off after {time.monotonic() - t0:.0f}s")
        passed = True
    finally:
        guest.kill()
        os.unlink(seed_img)  # it carries the password and the credentials
        try:
            remove_leftovers(vim)
        except (AssertionError, SoapFault) as e:
            print(f"twin: clean-up: {e}")
    if passed:  # else the serial and qemu logs stay for the post-mortem
        shutil.rmtree(run_dir)
