"""The supervisor: one `vllm serve` child per served model (see engine.py for the decisions)."""

from vllama.supervisor.argv import HardwareInfo, build_argv, build_env, check_extra_args
from vllama.supervisor.backoff import Backoff, BackoffPolicy
from vllama.supervisor.classify import Classification, ExitClass, classify_exit
from vllama.supervisor.engine import Engine, GpuFreed, Listener, Liveness, PortPicker, Probe
from vllama.supervisor.hardware import hardware_info, read_mem_available
from vllama.supervisor.probe import HttpLiveness, health_probe
from vllama.supervisor.state import (
    EngineSettings,
    EngineSpec,
    EngineState,
    EngineStatus,
    ExitInfo,
)
from vllama.supervisor.supervisor import EngineFactory, Supervisor

__all__ = [
    "Backoff",
    "BackoffPolicy",
    "Classification",
    "Engine",
    "EngineFactory",
    "EngineSettings",
    "EngineSpec",
    "EngineState",
    "EngineStatus",
    "ExitClass",
    "ExitInfo",
    "GpuFreed",
    "HardwareInfo",
    "HttpLiveness",
    "Listener",
    "Liveness",
    "PortPicker",
    "Probe",
    "Supervisor",
    "build_argv",
    "build_env",
    "check_extra_args",
    "classify_exit",
    "hardware_info",
    "health_probe",
    "read_mem_available",
]
