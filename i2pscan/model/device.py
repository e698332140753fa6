"""Where the model runs and in what arithmetic: the device, the batch size, and the autocast policy."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from i2pscan.errors import ConfigError, EnvironmentFailure

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device is honoured or refused."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EnvironmentFailure("`device` mps: Apple MPS is not available on this machine", "use `device` cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EnvironmentFailure(f"`device` {spec}: CUDA is not available on this machine", "use `device` cpu or auto")
        if ":" in spec:
            index = spec.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise EnvironmentFailure(f"`device` {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec)
    raise ConfigError(f"`device` {spec}: expected auto, cpu, cuda, cuda:N or mps")


def default_batch_size(device: torch.device) -> int:
    return 128 if device.type == "cuda" else 32


def autocast(device: torch.device, precision: str = "bf16"):
    """bf16 autocast on CUDA unless ``precision`` is ``fp32`` (then autocast is off, even inside a
    caller's); full fp32 elsewhere (CPU results stay bitwise reproducible). ``auto`` is bf16 here:
    a detector resolves it (``Detector.precision``)."""
    if device.type == "cuda":
        if precision == "fp16":  # measured beside the others (bench_precision.py), not offered as a default yet
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cuda", enabled=False) if precision == "fp32" else torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (`precision`), not {precision!r}")
    return precision
