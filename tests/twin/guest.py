"""The twin conversion host as a qemu (TCG) guest: boot, QEMU guest agent, shutdown.

Stdlib only. The guest boots root.raw directly (kernel + initrd from the image directory)
through a throw-away snapshot, with a NoCloud seed (vfat labelled CIDATA), one user-mode NIC
(10.0.2.2 = the host's loopback), a QMP socket for the hypervisor double (qmp.py in the
test bed's Nova driver hot-plugs volumes through it) and a guest-agent channel for the test.
"""
import base64
import json
import os
import signal
import socket
import subprocess
import time


def make_seed(path, files):
    """A NoCloud seed: vfat labelled CIDATA holding FILES {name: text}."""
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", path, "2048"], check=True, capture_output=True)
    d = os.path.dirname(path)
    for name, text in files.items():
        src = os.path.join(d, name)
        with open(os.open(src, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        subprocess.run(["mcopy", "-i", path, src, "::" + name], check=True, capture_output=True)
        os.unlink(src)  # secrets: only inside the seed (0600)
    os.chmod(path, 0o600)


class Guest:
    def __init__(self, image_dir, seed, run_dir, memory_mib=2048, cpus=2):
        self.run_dir = run_dir
        self.qmp = os.path.join(run_dir, "qmp.sock")
        self.qga_path = os.path.join(run_dir, "qga.sock")
        self.serial = os.path.join(run_dir, "serial.log")
        argv = [
            "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", "max", "-smp", str(cpus),
            "-m", str(memory_mib), "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", os.path.join(image_dir, "vmlinuz"),
            "-initrd", os.path.join(image_dir, "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0,115200n8 net.ifnames=0",
            "-drive", f"file={image_dir}/root.raw,format=raw,if=none,id=root,snapshot=on,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={seed},format=raw,if=none,id=seed,readonly=on",
            "-device", "virtio-blk-pci,drive=seed",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-qmp", f"unix:{self.qmp},server=on,wait=off",
            "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
            "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.serial}",
        ]
        self.log = open(os.path.join(run_dir, "qemu.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.sock = None
        self.file = None

    # -- guest agent --
    def _connect(self, timeout):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.qga_path)
        self.sock, self.file = s, s.makefile("rwb")

    def _send(self, msg):
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()

    def _reply(self):
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("guest agent channel closed")
            line = line.lstrip(b"\xff").strip()
            if line:
                r = json.loads(line)
                if "error" in r:
                    raise RuntimeError(f"guest agent: {r['error'].get('desc')}")
                return r.get("return")

    def wait_agent(self, timeout):
        """Wait until qemu-guest-agent answers (the guest has booted far enough)."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                if self.sock is None:
                    self._connect(5)
                n += 1
                self._send({"execute": "guest-sync", "arguments": {"id": n}})
                while self._reply() != n:  # drop replies to earlier, timed-out syncs
                    pass
                self.sock.settimeout(120)
                return
            except TimeoutError:
                pass  # the chardev is up but the agent in the guest not yet: ask again
            except (OSError, ValueError):
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                time.sleep(2)
        raise AssertionError(f"the guest agent did not answer within {timeout}s (serial log: {self.serial})")

    def run(self, *argv, timeout=120):
        """Run ARGV in the guest (as root): (exit code, stdout, stderr)."""
        self._send({"execute": "guest-exec",
                    "arguments": {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}})
        pid = self._reply()["pid"]
        deadline = time.monotonic() + timeout
        while True:
            self._send({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            st = self._reply()
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return st.get("exitcode", -1), out, err
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv} did not finish within {timeout}s in the guest")
            time.sleep(0.5)

    def check(self, *argv, timeout=120):
        code, out, err = self.run(*argv, timeout=timeout)
        assert code == 0, f"{' '.join(argv)} exited {code} in the guest: {err or out}"
        return out

    # -- life cycle --
    def assert_running(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"qemu exited with {self.proc.returncode} (log: {self.run_dir}/qemu.log, "
                                 f"serial: {self.serial})")

    def shutdown(self, timeout=120):
        """Power the guest off from inside (systemd stops osm-agent first); kill qemu if it hangs."""
        if self.proc.poll() is None and self.file is not None:
            try:
                self._send({"execute": "guest-shutdown"})
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        self.log.close()
