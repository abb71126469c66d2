"""Plays the hypervisor for the conversion-host server (stdlib only).

Nova's fake virt driver stores no data and makes no device appear on attach. Here a
volume attached to the conversion host becomes a loop device over a sparse file kept per
volume id ($OSM_VOLUME_DIR/<volume id>.img, kept across detach so migrated bytes can be
inspected), and $OSM_BYID_DIR/virtio-<first 20 chars of the volume id> appears after a
short random delay (0.2-2 s), as udev would make it. Detach removes the link and the loop.

Also a CLI for up.sh/down.sh:  python -m osm_testbed_os.hypervisor attach VOL SIZE_GIB
                              | detach VOL | release-all
"""
import logging
import os
import random
import subprocess
import sys
import threading
import time

LOG = logging.getLogger(__name__)
GiB = 1 << 30
_lock = threading.Lock()
_generation = {}  # volume id -> attach generation, so a late link thread of an old attach stays quiet


def byid_dir():
    return os.environ.get("OSM_BYID_DIR") or "/dev/disk/by-id"


def volume_dir():
    d = os.environ.get("OSM_VOLUME_DIR")
    if not d:
        raise RuntimeError("OSM_VOLUME_DIR is not set")
    return d


def link_path(vol_id):
    return os.path.join(byid_dir(), "virtio-" + vol_id[:20])


def backing_file(vol_id):
    return os.path.join(volume_dir(), vol_id + ".img")


def loops_of(path):
    """Loop devices currently backed by PATH."""
    if not os.path.exists(path):
        return []
    out = subprocess.run(["losetup", "--noheadings", "--output", "NAME", "--associated", path],
                         check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _losetup(path):
    last = None
    for _ in range(5):  # --find races with other losetup users on the machine
        r = subprocess.run(["losetup", "--find", "--show", path], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip()
        last = r.stderr.strip()
        time.sleep(0.2)
    raise RuntimeError("losetup %s failed: %s" % (path, last))


def _make_link(vol_id, dev, gen, delay):
    time.sleep(delay)
    with _lock:
        if _generation.get(vol_id) != gen or dev not in loops_of(backing_file(vol_id)):
            return  # detached (or re-attached) meanwhile
        if not os.path.isdir(byid_dir()):
            os.makedirs(byid_dir(), exist_ok=True)
            os.chmod(byid_dir(), 0o755)
        link = link_path(vol_id)
        tmp = "%s.tmp-%d" % (link, os.getpid())
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(dev, tmp)
        os.replace(tmp, link)
        LOG.info("osm testbed: %s -> %s", link, dev)


def ensure_backing_file(vol_id, size_gib):
    """The volume's sparse file, at least SIZE_GIB (grows when the volume was extended)."""
    os.makedirs(volume_dir(), exist_ok=True)
    with open(backing_file(vol_id), "ab") as f:
        if os.fstat(f.fileno()).st_size < int(size_gib) * GiB:
            f.truncate(int(size_gib) * GiB)


def attach(vol_id, size_gib, delay=None, wait=False):
    """Back VOL_ID with its file, losetup it, make the by-id link (in a thread). Returns the loop device."""
    path = backing_file(vol_id)
    with _lock:
        ensure_backing_file(vol_id, size_gib)
        devs = loops_of(path)
        if devs:
            dev = devs[0]
            subprocess.run(["losetup", "--set-capacity", dev], check=False)
        else:
            dev = _losetup(path)
        gen = _generation.get(vol_id, 0) + 1
        _generation[vol_id] = gen
    if delay is None:
        delay = random.uniform(0.2, 2.0)
    t = threading.Thread(target=_make_link, args=(vol_id, dev, gen, delay), daemon=True,
                         name="osm-byid-" + vol_id[:8])
    t.start()
    if wait:
        t.join()
    LOG.info("osm testbed: volume %s attached as %s (%d GiB)", vol_id, dev, int(size_gib))
    return dev


def detach(vol_id):
    """Remove the by-id link and detach the loop device(s); the backing file stays."""
    with _lock:
        _generation[vol_id] = _generation.get(vol_id, 0) + 1
        link = link_path(vol_id)
        if os.path.islink(link):
            os.unlink(link)
        for dev in loops_of(backing_file(vol_id)):
            subprocess.run(["losetup", "--detach", dev], check=False)
    LOG.info("osm testbed: volume %s detached", vol_id)


def release_all():
    """Detach every loop over a file in the volume dir and drop its link (used by down.sh)."""
    d = volume_dir()
    if not os.path.isdir(d):
        return
    for name in sorted(os.listdir(d)):
        if name.endswith(".img"):
            detach(name[:-4])


def main(argv):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(argv) == 3 and argv[0] == "attach":
        print(attach(argv[1], int(argv[2]), delay=0, wait=True))
    elif len(argv) == 2 and argv[0] == "detach":
        detach(argv[1])
    elif argv == ["release-all"]:
        release_all()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
