"""Plays the hypervisor for a conversion host that is a real qemu guest (the twin image test,
tests/twin): a volume attached to a server whose metadata has osm_testbed_qmp=<QMP socket>
is hot-plugged into that qemu as a virtio-blk disk over the same backing file as
hypervisor.py's loop devices, with serial = the first 20 characters of the volume id, so the
guest's udev makes /dev/disk/by-id/virtio-<serial> as under libvirt. Detach is device_del,
waited for until the guest lets the disk go, then blockdev-del. Stdlib only.
"""
import json
import logging
import socket
import time

from osm_testbed_os import hypervisor

LOG = logging.getLogger(__name__)
QMP_KEY = "osm_testbed_qmp"
UNPLUG_TIMEOUT = 120  # the guest must release the disk (ACPI hot-unplug) under TCG


def _names(vol_id):
    compact = vol_id.replace("-", "")[:24]
    return "osmv" + compact, "osmd" + compact  # block node name, device id (≤ 31 chars)


class Qmp:
    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def call(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise RuntimeError("QMP %s: %s" % (command, r["error"].get("desc")))
            elif "return" in r:
                return r["return"]

    def wait_event(self, name, device, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["event"] == name and e.get("data", {}).get("device") == device:
                    return
            self.events.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no %s for %s within %ss" % (name, device, timeout))
            self.sock.settimeout(left)
            r = self._read()
            if "event" in r:
                self.events.append(r)

    def close(self):
        self.file.close()
        self.sock.close()


def _devices(q):
    return {d["name"] for d in q.call("qom-list", path="/machine/peripheral")}


def attach(sock_path, vol_id, size_gib):
    path = hypervisor.backing_file(vol_id)
    hypervisor.ensure_backing_file(vol_id, size_gib)
    node, dev = _names(vol_id)
    q = Qmp(sock_path)
    try:
        if dev in _devices(q):
            LOG.info("osm testbed: volume %s already plugged into %s", vol_id, sock_path)
            return
        nodes = {n.get("node-name") for n in q.call("query-named-block-nodes")}
        if node not in nodes:
            q.call("blockdev-add", driver="raw", **{"node-name": node},
                   file={"driver": "file", "filename": path})
        q.call("device_add", driver="virtio-blk-pci", id=dev, drive=node, serial=vol_id[:20])
    finally:
        q.close()
    LOG.info("osm testbed: volume %s hot-plugged into %s as %s", vol_id, sock_path, dev)


def detach(sock_path, vol_id):
    node, dev = _names(vol_id)
    q = Qmp(sock_path)
    try:
        if dev in _devices(q):
            q.call("device_del", id=dev)
            q.wait_event("DEVICE_DELETED", dev, UNPLUG_TIMEOUT)
        nodes = {n.get("node-name") for n in q.call("query-named-block-nodes")}
        if node in nodes:
            q.call("blockdev-del", **{"node-name": node})
    finally:
        q.close()
    LOG.info("osm testbed: volume %s unplugged from %s", vol_id, sock_path)
