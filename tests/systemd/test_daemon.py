"""`vllama serve` under a real systemd, with the fake engine (tests/fake_vllm.py) as its child.

The unit is the shipped systemd/vllama.service; tests change only the config file and, where
noted, add a drop-in.  The fake engine runs from the read-only /src bind with PYTHONPATH set
for it alone (through env in vllm_command), so the daemon itself imports the installed wheel.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.systemd.conftest import DROPIN_DIR, VENV, Container, wait_until

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

FAKE_COMMAND = f"/usr/bin/env PYTHONPATH=/src {VENV}/bin/python -m tests.fake_vllm"
START_TIMEOUT = 120.0  # the fake engine is ready after its 3 s delay; the rest is slack


def model_toml(name: str, *args: str) -> str:
    return (f'[[models]]\nname = "{name}"\nsource = "fake/{name}"\n'
            f"vllm_args = {json.dumps(list(args))}\n")


def fake_config(*models: str, extra: str = "") -> str:
    workers = os.environ.get("VLLAMA_TEST_WORKERS", "")  # the same tests with N workers
    return (
        'host = "127.0.0.1"\nport = 11434\nlog_level = "info"\n'
        f'vllm_command = "{FAKE_COMMAND}"\n'
        "restart_backoff_initial = 0.5\nrestart_backoff_max = 2.0\n"
        + (f"workers = {int(workers)}\n" if workers else "")
        + f"{extra}\n" + "".join(models or (model_toml("tiny", "--fake-startup-delay", "3"),))
    )


class Unit:
    """vllama.service in the container, reset to the shipped unit + a fake-engine config."""

    def __init__(self, ct: Container) -> None:
        self.ct = ct
        self.cursor = ""

    def reset(self, config: str, dropin: str = "") -> None:
        ct = self.ct
        ct.exec("systemctl", "stop", "vllama", timeout=120)
        ct.sh(f"rm -rf {DROPIN_DIR}; systemctl reset-failed vllama 2>/dev/null || true")
        ct.write("/etc/vllama/config.toml", config, mode=0o640)
        ct.sh("chgrp vllama /etc/vllama/config.toml")
        if dropin:
            ct.write(f"{DROPIN_DIR}/test.conf", dropin)
        ct.exec("systemctl", "daemon-reload", check=True)
        self.cursor = ct.cursor()

    def start(self) -> None:
        out = self.ct.exec("systemctl", "start", "vllama", timeout=START_TIMEOUT)
        assert out.returncode == 0, f"start failed: {out.stderr}\n{self.journal_text()}"

    def show(self, *props: str) -> dict[str, str]:
        return self.ct.show("vllama", *props)

    def journal(self) -> list[dict[str, Any]]:
        return self.ct.journal("vllama", after=self.cursor)

    def journal_text(self) -> str:
        return "\n".join(str(e.get("MESSAGE", "")) for e in self.journal()[-60:])

    def health(self) -> dict[str, Any]:
        code, body = self.ct.http("/health")
        assert code in (200, 503), f"/health -> {code}: {body}"
        data: dict[str, Any] = json.loads(body)
        return data

    def cgroup_pids(self, cgroup: str) -> list[int]:
        """Every process in the unit's cgroup (v1 name=systemd, unified, or pure v2 layout)."""
        out = self.ct.sh(f"cat /sys/fs/cgroup{cgroup}/cgroup.procs "
                         f"/sys/fs/cgroup/systemd{cgroup}/cgroup.procs "
                         f"/sys/fs/cgroup/unified{cgroup}/cgroup.procs 2>/dev/null || true")
        return sorted({int(p) for p in out.stdout.split()})

    def engine_pids(self) -> list[int]:
        # "[t]ests": the pattern must not match the `timeout` wrapper's own command line
        out = self.ct.exec("pgrep", "-f", "[t]ests.fake_vllm")
        return sorted(int(p) for p in out.stdout.split())


@pytest.fixture
def unit(systemd_container: Container) -> Iterator[Unit]:
    u = Unit(systemd_container)
    u.reset(fake_config())
    try:
        yield u
    finally:
        systemd_container.exec("systemctl", "stop", "vllama", timeout=120)


def test_start_blocks_until_ready(unit: Unit) -> None:
    unit.start()
    # No waiting: `systemctl start` returned, so READY=1 came, so everything must answer now.
    code, body = unit.ct.http("/health")
    assert code == 200, body
    assert json.loads(body)["engines"][0]["state"] == "ready"
    code, body = unit.ct.http("/api/version")
    assert code == 200, body
    assert "version" in json.loads(body)
    props = unit.show("ActiveState", "SubState", "StatusText", "NRestarts", "WatchdogUSec")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert "ready" in props["StatusText"].lower(), props
    assert props["NRestarts"] == "0"
    assert props["WatchdogUSec"] == "30s"  # shown only while running


def test_slow_load_outlasts_start_timeout_through_heartbeats(unit: Unit) -> None:
    # The engine needs 15 s but the unit allows 7 s: only vllama's EXTEND_TIMEOUT_USEC
    # heartbeats while it loads (every 5 s) keep systemd from failing the start.
    unit.reset(fake_config(model_toml("tiny", "--fake-startup-delay", "15")),
               dropin="[Service]\nTimeoutStartSec=7s\n")
    unit.start()
    props = unit.show("ActiveState", "Result", "NRestarts")
    assert props == {"ActiveState": "active", "Result": "success", "NRestarts": "0"}
    assert unit.ct.http("/health")[0] == 200


def test_killed_engine_comes_back_unit_stays_active(unit: Unit) -> None:
    unit.start()
    before = unit.show("MainPID", "NRestarts")
    engine = unit.health()["engines"][0]
    assert engine["restarts"] == 0
    unit.ct.exec("kill", "-9", str(engine["pid"]), check=True)

    def back() -> bool:
        e = unit.health()["engines"][0]
        return bool(e["restarts"] == 1 and e["state"] == "ready" and e["pid"] != engine["pid"])

    wait_until("the engine to be restarted and ready", back, timeout=60)
    after = unit.show("ActiveState", "MainPID", "NRestarts")
    assert after["ActiveState"] == "active"
    assert after["MainPID"] == before["MainPID"]
    assert after["NRestarts"] == before["NRestarts"]
    assert unit.ct.http("/health")[0] == 200
    assert len(unit.engine_pids()) == 1


def test_stalled_loop_is_killed_by_watchdog_and_restarted(unit: Unit) -> None:
    # A short watchdog for the test; TimeoutAbortSec bounds the wait if the abort signal
    # cannot be delivered to the stopped process.
    unit.reset(fake_config(), dropin="[Service]\nWatchdogSec=3s\nTimeoutAbortSec=10s\n")
    unit.start()
    assert unit.show("WatchdogUSec")["WatchdogUSec"] == "3s"
    old_main = unit.show("MainPID")["MainPID"]
    unit.ct.exec("kill", "-STOP", old_main, check=True)
    wait_until("systemd's watchdog timeout",
                lambda: any("Watchdog timeout" in str(e.get("MESSAGE", ""))
                            for e in unit.journal()), timeout=30)
    # Let the pending SIGABRT land now instead of after TimeoutAbortSec.
    unit.ct.exec("kill", "-CONT", old_main)

    def restarted() -> bool:
        p = unit.show("ActiveState", "MainPID")
        return p["ActiveState"] == "active" and p["MainPID"] not in ("0", old_main)

    wait_until("a new main process", restarted, timeout=90)
    assert int(unit.show("NRestarts")["NRestarts"]) >= 1
    assert unit.ct.http("/health")[0] == 200
    assert len(unit.engine_pids()) == 1, "the old engine outlived its watchdog-killed parent"
    assert any("watchdog" in str(e.get("MESSAGE", "")).lower() and "result" in
               str(e.get("MESSAGE", "")).lower() for e in unit.journal())


def test_journal_has_structured_fields_and_engine_lines(unit: Unit) -> None:
    unit.start()
    entries = [e for e in unit.journal() if e.get("_PID") != "1"]  # vllama's, not systemd's
    components = {e["VLLAMA_COMPONENT"] for e in entries if "VLLAMA_COMPONENT" in e}
    assert components, f"no VLLAMA_COMPONENT field in {len(entries)} entries"
    engine = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "vllm"]
    assert engine, "no engine line with SYSLOG_IDENTIFIER=vllm"
    assert all(e.get("_TRANSPORT") == "journal" for e in engine)  # native protocol
    assert all(e.get("VLLAMA_MODEL") == "tiny" for e in engine)
    # the fake prints vLLM's "INFO 11-22 10:00:00 [file.py:12] ..." lines: INFO -> 6
    assert any(e.get("PRIORITY") == "6" for e in engine)


def test_reload_keeps_unchanged_engines_and_starts_new_ones(unit: Unit) -> None:
    unit.start()
    main = unit.show("MainPID")["MainPID"]
    tiny_pid = unit.health()["engines"][0]["pid"]

    # returns once vllama sent READY=1 after RELOADING=1 (or hangs until then)
    out = unit.ct.exec("systemctl", "reload", "vllama", timeout=30)
    assert out.returncode == 0, f"rc {out.returncode}: {out.stderr}\n{unit.journal_text()}"
    wait_until("active after reload",
               lambda: unit.show("ActiveState")["ActiveState"] == "active", timeout=30)
    assert unit.show("MainPID")["MainPID"] == main
    assert unit.health()["engines"][0]["pid"] == tiny_pid  # same config: not restarted

    unit.ct.write("/etc/vllama/config.toml", fake_config(
        model_toml("tiny", "--fake-startup-delay", "3"),
        model_toml("second", "--fake-startup-delay", "1"),
    ), mode=0o640)
    out = unit.ct.exec("systemctl", "reload", "vllama", timeout=30)
    assert out.returncode == 0, out.stderr

    def both_ready() -> bool:
        engines = {e["model"]: e for e in unit.health()["engines"]}
        return set(engines) == {"tiny", "second"} and all(
            e["state"] == "ready" for e in engines.values())

    wait_until("the added model to be ready", both_ready, timeout=60)
    engines = {e["model"]: e for e in unit.health()["engines"]}
    assert engines["tiny"]["pid"] == tiny_pid
    assert unit.show("MainPID", "ActiveState") == {"MainPID": main, "ActiveState": "active"}
    assert any("Reloaded" in str(e.get("MESSAGE", "")) for e in unit.journal())


def test_stop_leaves_no_process(unit: Unit) -> None:
    # --fake-spawn-child: the engine has a grandchild in its process group, like vLLM's
    # EngineCore, which only a group kill reaches.
    unit.reset(fake_config(model_toml("tiny", "--fake-startup-delay", "1",
                                      "--fake-spawn-child")))
    unit.start()
    cgroup = unit.show("ControlGroup")["ControlGroup"]
    assert cgroup
    pids = unit.cgroup_pids(cgroup)
    assert len(pids) >= 3, pids  # vllama, the fake API server, its grandchild

    out = unit.ct.exec("systemctl", "stop", "vllama", timeout=120)
    assert out.returncode == 0, out.stderr
    props = unit.show("ActiveState", "Result", "ControlGroup")
    assert props["ActiveState"] == "inactive"
    assert props["Result"] == "success"  # exited by itself: no stop timeout, no SIGKILL
    assert props["ControlGroup"] == ""
    assert unit.cgroup_pids(cgroup) == []
    alive = unit.ct.exec("ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids)))
    assert alive.stdout.strip() == "", f"survived the stop: {alive.stdout}"
    messages = [str(e.get("MESSAGE", "")) for e in unit.journal()]
    assert not [m for m in messages if "Killing process" in m or "timed out" in m], messages


def test_config_error_exits_78_and_is_not_restarted(unit: Unit) -> None:
    unit.reset(fake_config(extra="no_such_setting = 1"))
    out = unit.ct.exec("systemctl", "start", "vllama", timeout=START_TIMEOUT)
    assert out.returncode != 0

    def settled() -> bool:
        return unit.show("ActiveState")["ActiveState"] != "activating"

    wait_until("the unit to fail", settled, timeout=30)
    props = unit.show("ActiveState", "ExecMainStatus", "NRestarts", "Result")
    # "failed", not "activating (auto-restart)": RestartPreventExitStatus=78 took effect
    assert props == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0",
                     "Result": "exit-code"}
