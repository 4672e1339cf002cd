"""Real containers for the state tests: podman with runc and a busybox image made locally (no
pull), its API service on a private socket. See ../shared/TEST-INFRA.md "Real containers".

Needs root, podman, runc and busybox-static; without them the tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.state_support import wait_for
from tests.support import require_binary

RUN = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PASSWD = "root:x:0:0:root:/root:/bin/sh\nweb:x:4242:4242:web server:/srv:/bin/sh\n"
GROUP = "root:x:0:\nweb:x:4242:\n"


class Podman:
    """An image, an API service and containers, removed by ``close``."""

    def __init__(self, scratch: Path) -> None:
        if os.geteuid() != 0:
            pytest.fail("the container tests need root (podman with runc and cgroupfs)")
        self.podman = require_binary("podman")
        require_binary("runc")
        busybox = require_binary("busybox")
        self.tag = uuid.uuid4().hex[:8]
        self.image = f"localhost/lanner-test-busybox:{self.tag}"
        self.containers: list[str] = []
        self._build_image(scratch, busybox)
        self.socket = str(scratch / "podman.sock")
        self.service = subprocess.Popen(
            [self.podman, "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(self.socket), 20, "the podman API socket")

    def _build_image(self, scratch: Path, busybox: str) -> None:
        root = scratch / "rootfs"
        for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "srv"):
            (root / sub).mkdir(parents=True)
        shutil.copy(busybox, root / "bin/busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        (root / "etc/passwd").write_text(PASSWD)
        (root / "etc/group").write_text(GROUP)
        archive = scratch / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        self.run("import", str(archive), self.image)

    def run(self, *args: str) -> str:
        done = subprocess.run([self.podman, *args], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self, *options: str) -> dict[str, object]:
        """A container running sleep; returns its id, name and init pid."""
        name = f"lanner-test-{uuid.uuid4().hex[:8]}"
        cid = self.run(*RUN, "run", "-d", "--name", name, *LIMITS, *options, self.image,
                       "/bin/sleep", "600")
        self.containers.append(cid)
        info = json.loads(self.run("inspect", "--type", "container", cid))[0]
        return {"id": cid, "name": name, "pid": info["State"]["Pid"]}

    def exec(self, cid: str, *command: str) -> str:
        return self.run("exec", cid, *command)

    def close(self) -> None:
        for cid in self.containers:
            subprocess.run([self.podman, "rm", "-f", "-t", "0", cid], capture_output=True,
                           check=False)
        subprocess.run([self.podman, "rmi", "-f", self.image], capture_output=True, check=False)
        self.service.terminate()
        self.service.wait(timeout=20)


def v2_path(pid: int) -> str:
    """The process's cgroup v2 path, from /proc (the "0::" line)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"pid {pid} has no cgroup v2 line")
