"""Which torch device a name means: the one check behind every ``--device`` and a
suite's ``device`` (``l2obench run``, ``meta-train``, ``evaluate``, ``bench``); and what
CPU this is, for figures and build caches that must name it."""
from __future__ import annotations

import re

from .errors import ConfigError

#: The device names l2obench accepts: the batched kernels are written for these two.
NAMES = "cpu, cuda or cuda:N"
_NAME_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(name: str, where: str = "--device"):
    """The :class:`torch.device` for ``name``; refused in one line that starts with
    ``where`` (the flag or the file and key) when the name is unknown, names a CUDA
    device this machine does not have, or is ``mps`` (not supported)."""
    import torch

    text = str(name).strip()
    if text == "mps" or text.startswith("mps:"):
        raise ConfigError(f"{where} {text!r}: Apple's mps is not supported; use cpu (or cuda on a machine "
                          f"with an NVIDIA GPU)")
    if not _NAME_RE.match(text):
        raise ConfigError(f"{where} {text!r}: expected {NAMES}")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} {text}: torch sees no CUDA device on this machine; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{where} {text}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    return device


def _cpuinfo(cpuinfo: str | None = None) -> dict[str, str]:
    """Each field of ``/proc/cpuinfo`` (or of the text ``cpuinfo``) as its first processor
    gives it (its first occurrence); empty where there is no such file."""
    from pathlib import Path

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``'s, else the platform's)."""
    name = _cpuinfo().get("model name")
    if name is not None:
        return name
    import platform

    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str | None = None) -> str:
    """This CPU's family and model numbers (``/proc/cpuinfo``'s, or those of the text
    ``cpuinfo``, as ``"family 23, model 1"``), which tell apart CPUs that a virtual machine
    names alike (``AMD EPYC`` of the Zen 1 generation is family 23, model 1, and of the Zen 3
    generation family 25, model 1); empty where there are none (ARM, other systems)."""
    fields = _cpuinfo(cpuinfo)
    if "cpu family" not in fields:
        return ""
    return f"family {fields['cpu family']}" + (f", model {fields['model']}" if "model" in fields else "")
