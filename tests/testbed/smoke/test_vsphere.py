"""Smoke test of the test bed's vCenter simulator (tests/testbed/vsphere).

Talks SOAP itself (urllib + xml.etree, TLS verified with OSM_VC_CA_FILE). Needs the env
written by `tests/testbed/up` (source $OSM_TESTBED_STATE/env first).
"""
import base64
import http.cookiejar
import json
import os
import random
import ssl
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest

ENV = os.environ
if "OSM_VC_URL" not in ENV:
    pytest.skip("vsphere test-bed component not up (OSM_VC_URL unset)", allow_module_level=True)

CTX = ssl.create_default_context(cafile=ENV["OSM_VC_CA_FILE"])
PASSWORD = open(ENV["OSM_VC_PASSWORD_FILE"]).read().strip()
PAGE = int(ENV.get("OSM_VC_QCDA_PAGE", 256 << 20))
CBT_VM = "osm-cbt-1"


class SoapFault(Exception):
    def __init__(self, kind, msg):
        super().__init__(f"{kind}: {msg}")
        self.kind = kind


def strip_ns(root):
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
    return root


def moref(tag, kind, value):
    return f'<{tag} type="{kind}">{escape(value)}</{tag}>'


class Vim:
    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=CTX), urllib.request.HTTPCookieProcessor(self.jar))
        self.sc = self.call("RetrieveServiceContent", ("ServiceInstance", "ServiceInstance"), "")

    def call(self, method, this, body):
        env = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
               'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
               f'<{method} xmlns="urn:vim25">{moref("_this", *this)}{body}</{method}>'
               '</soapenv:Body></soapenv:Envelope>')
        req = urllib.request.Request(ENV["OSM_VC_URL"], env.encode(), {
            "Content-Type": "text/xml; charset=utf-8", "SOAPAction": "urn:vim25/7.0.3.0"})
        try:
            with self.opener.open(req, timeout=60) as r:
                root = strip_ns(ET.fromstring(r.read()))
        except urllib.error.HTTPError as e:
            root = strip_ns(ET.fromstring(e.read()))
            fault = root.find("Body/Fault")
            detail = fault.find("detail")
            kind = detail[0].tag if detail is not None and len(detail) else "?"
            raise SoapFault(kind, fault.findtext("faultstring")) from None
        return root.find(f"Body/{method}Response/returnval")

    def ref(self, name):
        el = self.sc.find(name)
        return (el.get("type"), el.text)

    def login(self, user=ENV["OSM_VC_USER"], password=PASSWORD):
        return self.call("Login", self.ref("sessionManager"),
                         f"<userName>{escape(user)}</userName><password>{escape(password)}</password>")

    def props(self, obj, *paths):
        """RetrievePropertiesEx for one object -> {path: Element}."""
        spec = (f"<specSet><propSet><type>{obj[0]}</type>"
                + "".join(f"<pathSet>{p}</pathSet>" for p in paths)
                + f"</propSet><objectSet>{moref('obj', *obj)}</objectSet></specSet><options/>")
        ret = self.call("RetrievePropertiesEx", self.ref("propertyCollector"), spec)
        return {p.findtext("name"): p.find("val") for p in ret.iter("propSet")}

    def wait(self, task):
        task = ("Task", task.text)
        for _ in range(600):
            info = self.props(task, "info")["info"]
            state = info.findtext("state")
            if state == "success":
                return info.find("result")
            if state == "error":
                raise AssertionError(ET.tostring(info.find("error")).decode())
        raise AssertionError("task did not finish")

    def find_vm(self, name):
        ret = self.call("FindByInventoryPath", self.ref("searchIndex"),
                        f"<inventoryPath>{escape(ENV['OSM_VC_DATACENTER'] + '/vm/' + name)}</inventoryPath>")
        assert ret is not None, f"VM {name!r} not found"
        return ("VirtualMachine", ret.text)

    def snapshot(self, vm, name):
        task = self.call("CreateSnapshot_Task", vm,
                         f"<name>{name}</name><memory>false</memory><quiesce>false</quiesce>")
        res = self.wait(task)
        return ("VirtualMachineSnapshot", res.text)

    def qcda(self, vm, snap, key, start, change_id):
        snap_xml = moref("snapshot", *snap) if snap else ""
        r = self.call("QueryChangedDiskAreas", vm,
                      f"{snap_xml}<deviceKey>{key}</deviceKey><startOffset>{start}</startOffset>"
                      f"<changeId>{escape(change_id)}</changeId>")
        areas = [(int(a.findtext("start")), int(a.findtext("length"))) for a in r.findall("changedArea")]
        return int(r.findtext("startOffset")), int(r.findtext("length")), areas

    def qcda_all(self, vm, snap, key, capacity, change_id):
        """Loop over pages like a correct client; returns (areas, empty window starts)."""
        start, areas, empty = 0, [], []
        while start < capacity:
            s, length, got = self.qcda(vm, snap, key, start, change_id)
            assert s == start and 0 < length <= PAGE
            for a in got:
                assert s <= a[0] and a[0] + a[1] <= s + length, (a, s, length)
            if not got:
                empty.append(s)
            areas += got
            start = s + length
        assert start == capacity
        return merge(areas), empty


def merge(areas):
    out = []
    for s, l in sorted(areas):
        if out and s <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], s + l - out[-1][0])
        else:
            out.append([s, l])
    return [tuple(a) for a in out]


def ctl(path, payload=None):
    req = urllib.request.Request(ENV["OSM_VC_CTL_URL"] + path,
                                 json.dumps(payload).encode() if payload is not None else None,
                                 {"Content-Type": "application/json"})
    tok = base64.b64encode(f"{ENV['OSM_VC_USER']}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", "Basic " + tok)
    with urllib.request.urlopen(req, context=CTX, timeout=60) as r:
        return json.load(r)


def guest_write(vm, key, off, data):
    return ctl("/guest-write", {"vm": vm, "disk": key, "offset": off,
                                "data": base64.b64encode(data).decode()})


def disk_changeid(devices_val, key):
    for dev in devices_val:
        if dev.findtext("key") == str(key):
            return dev.findtext("backing/changeId")
    raise AssertionError(f"no device {key}")


def seek_data_extents(path, start, end):
    out, pos = [], start
    with open(path, "rb") as f:
        fd = f.fileno()
        while pos < end:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if d >= end:
                break
            h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
            out.append((d, h - d))
            pos = h
    return out


@pytest.fixture(scope="module")
def vim():
    v = Vim()
    v.login()
    return v


@pytest.fixture(scope="module")
def cbt_vm(vim):
    vm = vim.find_vm(CBT_VM)
    task = vim.call("ReconfigVM_Task", vm, "<spec><changeTrackingEnabled>true</changeTrackingEnabled></spec>")
    vim.wait(task)
    return vm


def test_login_and_bad_login():
    v = Vim()
    with pytest.raises(SoapFault) as e:
        v.login(password="wrong")
    assert e.value.kind == "InvalidLoginFault"
    assert v.login().findtext("userName") == ENV["OSM_VC_USER"]


def test_unauthenticated_qcda_is_refused(vim):
    vm = vim.find_vm(CBT_VM)
    with pytest.raises(SoapFault) as e:
        Vim().qcda(vm, None, 2000, 0, "*")
    assert e.value.kind == "NotAuthenticatedFault"


def test_cbt_enabled_visible(vim, cbt_vm):
    assert vim.props(cbt_vm, "config.changeTrackingEnabled")["config.changeTrackingEnabled"].text == "true"


def test_inventory(vim):
    web = vim.find_vm("web [prod] ünïcode 1")
    p = vim.props(web, "config.hardware.device", "guest.toolsRunningStatus", "guest.net")
    assert len([d for d in p["config.hardware.device"] if d.findtext("capacityInBytes")]) == 3
    assert len(p.get("guest.net") or []) == 0
    assert p["guest.toolsRunningStatus"].text == "guestToolsNotRunning"
    linux = vim.props(vim.find_vm("osm-linux-1"), "guest.net", "guest.toolsRunningStatus")
    ips = [ip.text for nic in linux["guest.net"] for ip in nic.findall("ipAddress")]
    assert any(":" in ip for ip in ips) and any("." in ip for ip in ips)
    db = vim.props(vim.find_vm("db-consolidate"), "runtime.consolidationNeeded", "guest.toolsVersionStatus2")
    assert db["runtime.consolidationNeeded"].text == "true"
    assert db["guest.toolsVersionStatus2"].text == "guestToolsNotInstalled"
    tree = vim.props(vim.find_vm("deep-snapshots"), "snapshot.rootSnapshotList")["snapshot.rootSnapshotList"]
    depth, node = 0, tree.find("VirtualMachineSnapshotTree")
    while node is not None:
        depth, node = depth + 1, node.find("childSnapshotList")
    assert depth == 30


def test_disk_capacity_equals_flat_file(vim):
    for d in ctl("/disks"):
        assert os.path.getsize(d["flat"]) == d["capacity"], d
        assert d["flat"].startswith(ENV["OSM_VC_DATASTORE_DIR"] + "/")


def test_changed_areas_between_snapshots(vim, cbt_vm):
    disks = {d["key"]: d for d in ctl("/disks") if d["vm"] == CBT_VM}
    key, other = 2000, 2001
    cap, flat = disks[key]["capacity"], disks[key]["flat"]
    assert cap >= 4 * PAGE, "test needs a disk of at least 4 QCDA windows"
    rng = random.Random(1234)
    guest_write(CBT_VM, key, 0, rng.randbytes(4096))  # before snapshot 1: not reported

    s1 = vim.snapshot(cbt_vm, "cbt-1")
    cid1 = disk_changeid(vim.props(s1, "config.hardware.device")["config.hardware.device"], key)
    assert cid1 and cid1.startswith("52 ") and "/" in cid1

    # 37 extents in windows 0, 2 and 3 (window 1 stays empty), some adjacent or overlapping,
    # one crossing the window 2/3 boundary.
    windows, written, last = [0, 2, 3], [], None
    for i in range(37):
        if i % 6 == 5 and last:  # adjacent to the previous extent
            off = last[0] + last[1]
        elif i % 6 == 3 and last:  # overlapping the previous extent
            off = last[0] + 512 * rng.randrange(1, max(2, last[1] // 512))
        elif i == 20:
            off = 3 * PAGE - 8192
        else:
            off = windows[i % 3] * PAGE + 512 * rng.randrange(0, PAGE // 512 - 2048)
        length = 512 * rng.randrange(1, 128)
        data = rng.randbytes(length)
        res = guest_write(CBT_VM, key, off, data)
        assert res["tracked"] and res["key"] == key
        written.append((off, length))
        last = (off, length, data)
    guest_write(CBT_VM, other, 4096, rng.randbytes(8192))  # other disk: not reported for key

    s2 = vim.snapshot(cbt_vm, "cbt-2")
    guest_write(CBT_VM, key, PAGE + 4096, rng.randbytes(4096))  # after snapshot 2: excluded
    cid2 = disk_changeid(vim.props(s2, "config.hardware.device")["config.hardware.device"], key)
    vm_cid = disk_changeid(vim.props(cbt_vm, "config.hardware.device")["config.hardware.device"], key)
    assert cid2 != cid1 and vm_cid == cid2
    assert disk_changeid(vim.props(s1, "config.hardware.device")["config.hardware.device"], key) == cid1

    areas, empty = vim.qcda_all(cbt_vm, s2, key, cap, cid1)
    assert areas == merge(written)
    assert PAGE in empty, "window 1 must come back empty"

    # Other disk: only its own write.
    o_areas, _ = vim.qcda_all(cbt_vm, s2, other, disks[other]["capacity"],
                              disk_changeid(vim.props(s1, "config.hardware.device")["config.hardware.device"], other))
    assert o_areas == [(4096, 8192)]

    # "*" = allocated areas of the flat file.
    star, _ = vim.qcda_all(cbt_vm, s2, key, cap, "*")
    assert star == merge(seek_data_extents(flat, 0, cap))

    # Bytes of the last extent: flat file and datastore HTTPS read agree with what was written.
    off, length, data = last
    with open(flat, "rb") as f:
        f.seek(off)
        assert f.read(length) == data
    rel = os.path.relpath(flat, ENV["OSM_VC_DATASTORE_DIR"])
    url = (f"https://{ENV['OSM_VC_HOST']}/folder/{urllib.parse.quote(rel)}?"
           + urllib.parse.urlencode({"dcPath": ENV["OSM_VC_DATACENTER"], "dsName": ENV["OSM_VC_DATASTORE"]}))
    req = urllib.request.Request(url, headers={"Range": f"bytes={off}-{off + length - 1}"})
    with vim.opener.open(req, timeout=60) as r:
        assert r.status == 206 and r.read() == data


def test_qcda_faults(vim, cbt_vm):
    s = vim.snapshot(cbt_vm, "cbt-faults")
    with pytest.raises(SoapFault) as e:
        vim.qcda(cbt_vm, s, 2000, 0, "not-a-change-id")
    assert e.value.kind == "InvalidArgumentFault"
    with pytest.raises(SoapFault) as e:  # well-formed but unknown CBT instance
        vim.qcda(cbt_vm, s, 2000, 0, "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1")
    assert e.value.kind == "FileFaultFault"
    with pytest.raises(SoapFault) as e:
        vim.qcda(cbt_vm, s, 4000, 0, "*")  # a NIC, not a disk
    assert e.value.kind == "InvalidArgumentFault"
