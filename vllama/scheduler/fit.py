"""`vllama fit`: whether a model fits this machine, by the arithmetic the scheduler places
engines with (`vllama.models.memory` for the need, `placement.place` for where it goes).
Pure: a MemoryNeed and the devices in, a verdict out, plus its text.

The devices are read as they are now (NVML's free memory, or the host's available memory),
so memory held by running engines, vllama's included, counts as taken; `fits_when_empty`
says whether the model would fit on the same devices with nothing else on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from vllama.models import memory
from vllama.models.memory import MemoryNeed
from vllama.scheduler.placement import (
    Device,
    NoFit,
    Placement,
    largest_fitting_context,
    place,
)

Verdict = Literal["fits", "fits_tensor_parallel", "does_not_fit"]


class FitDevice(msgspec.Struct, frozen=True):
    """A device as the verdict saw it."""

    index: int  # NVML index; -1: host memory
    name: str
    kind: Literal["gpu", "cpu"]
    free_bytes: int
    total_bytes: int


class FitAt(msgspec.Struct, frozen=True):
    """The verdict at one context length. Byte counts are for the placement chosen (or the
    closest one when it does not fit): `per_device_bytes` on each of `tensor_parallel`
    devices, `total_bytes` over all of them."""

    context: int
    verdict: Verdict
    tensor_parallel: int
    devices: tuple[int, ...]  # the GPUs it would run on; () on the host or when it does not fit
    weights_bytes: int
    kv_cache_bytes: int  # over all devices, for `kv_tokens` tokens
    kv_tokens: int
    overhead_bytes: int  # over all devices
    per_device_bytes: int
    total_bytes: int
    fits_when_empty: bool  # on these devices with nothing else holding memory
    why: str  # the placement's one line, or why it does not fit


class FitReport(msgspec.Struct, frozen=True):
    """Everything `vllama fit --json` prints."""

    model: str
    source: Literal["cache", "directory", "hub", "config"]
    parameters: int
    parameter_source: Literal["headers", "estimate", "none"]
    quantization: str
    max_context: int  # the model's own
    devices: tuple[FitDevice, ...]
    default: FitAt  # at the context it would be served with
    largest_context: int  # the largest that fits now; 0: not even the weights
    at_context: FitAt | None = None  # at --context N
    problems: tuple[str, ...] = ()


def fit_devices(devices: Sequence[Device]) -> tuple[FitDevice, ...]:
    return tuple(FitDevice(d.index, d.name, d.kind, d.free_bytes, d.total_bytes)
                 for d in devices)


def assess(need: MemoryNeed, devices: Sequence[Device]) -> FitAt:
    """Where `need` would run on `devices` as they read now."""
    fit = place(need, devices)
    if isinstance(fit, Placement):
        tp = fit.tensor_parallel
        verdict: Verdict = "fits" if tp == 1 else "fits_tensor_parallel"
        return _at(need, verdict, tp, devices=fit.devices, fits_when_empty=True, why=fit.why)
    tp = max(fit.tensor_parallel, 1)
    return _at(need, "does_not_fit", tp, devices=(), fits_when_empty=fit.fits_when_empty,
               why=_no_fit_text(fit))


def _at(need: MemoryNeed, verdict: Verdict, tp: int, *, devices: tuple[int, ...],
        fits_when_empty: bool, why: str) -> FitAt:
    return FitAt(context=need.context, verdict=verdict, tensor_parallel=tp, devices=devices,
                 weights_bytes=need.weights_bytes, kv_cache_bytes=memory.kv_bytes(need, tp) * tp,
                 kv_tokens=need.kv_tokens, overhead_bytes=need.overhead_bytes * tp,
                 per_device_bytes=memory.device_bytes(need, tp),
                 total_bytes=memory.total_bytes(need, tp), fits_when_empty=fits_when_empty,
                 why=why)


def _no_fit_text(fit: NoFit) -> str:
    return fit.message or "it does not fit"


def largest(need: MemoryNeed, devices: Sequence[Device]) -> int:
    """The largest context that fits now, over every placement (`place`'s own search)."""
    return largest_fitting_context(need, devices)


# ----------------------------------------------------------------------------- text


def verdict_text(at: FitAt) -> str:
    if at.verdict == "fits":
        where = f"GPU {at.devices[0]}" if at.devices else "host memory"
        return f"fits ({where})"
    if at.verdict == "fits_tensor_parallel":
        return f"fits with {at.tensor_parallel} GPUs (tensor parallel)"
    return ("does not fit now (fits on these devices when empty)" if at.fits_when_empty
            else "does not fit")
