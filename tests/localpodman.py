"""A private rootful podman API service (Docker API on a unix socket) for the tests, the
benchmarks and laptops without a system podman service: runc, cgroupfs, explicit
ulimits (no CAP_SYS_RESOURCE needed), storage under ``base``; images are made with
``podman import`` from a root file system (there is no registry).  Stopped by PID.

    p = Podman(Path("/tmp/pm")).start(); p.build_busybox_image(); print(p.url)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/hops-busybox:latest"
APPLETS = ["sh", "cat", "echo", "sleep", "ls", "find", "wc", "nc", "wget", "tr", "mkdir", "touch", "date", "id",
           "cp", "rm", "grep", "head", "test", "true", "false", "env", "printf", "expr", "seq", "ip", "ping"]


class Podman:
    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"
        self.runroot = base / "runroot"
        self.sock = base / "podman.sock"
        self.conf = base / "containers.conf"
        self.proc: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "tmp").mkdir(exist_ok=True)
        self.conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{base / "tmp"}"\n')

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERS_CONF=str(self.conf))

    def podman(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", f"--root={self.root}", f"--runroot={self.runroot}", *args],
                              env=self.env(), capture_output=True, text=True, **kwargs)

    def start(self) -> "Podman":
        assert shutil.which("podman"), "podman is not installed (deploy/local/install-deps.sh)"
        self.proc = subprocess.Popen(["podman", f"--root={self.root}", f"--runroot={self.runroot}", "system",
                                      "service", "--time=0", self.url], env=self.env(),
                                     stdout=open(self.base / "service.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.base / "service.log").read_text()
            time.sleep(0.05)
        return self

    def build_busybox_image(self, name: str = IMAGE) -> str:
        rootfs = self.base / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc").mkdir(exist_ok=True)
        (rootfs / "tmp").mkdir(exist_ok=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in APPLETS:
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        tar = self.base / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        proc = self.podman("import", "--change", "ENV PATH=/bin", str(tar), name)
        assert proc.returncode == 0, proc.stderr
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["umount", str(self.root / "overlay")], capture_output=True)
