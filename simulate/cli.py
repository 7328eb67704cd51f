"""Command-line values shared by ``python -m simulate`` and ``python -m figures``: devices,
booleans, waits, and a parser whose usage errors are one line with exit status 2."""

from __future__ import annotations

import argparse
import math
import re

from .config import SpecError, _one_line

_DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]+)?")


def parse_device(text: str, name: str = "device") -> str:
    """``auto | cpu | cuda | cuda:N`` (any case, surrounding spaces ignored), lower-cased.

    Raises:
        SpecError: anything else; the message names ``name`` (``--device`` on the command line).
    """
    value = text.strip().lower() if isinstance(text, str) else None
    if value is None or not _DEVICE.fullmatch(value):
        raise SpecError(f"{name} must be auto, cpu, cuda or cuda:N (N a GPU index), got {text!r}")
    return value


def check_device_here(device: str, name: str = "device") -> str:
    """A parsed device that this machine has (CUDA available, index below the device count)."""
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if count == 0:
            raise SpecError(f"{name} {device}: no CUDA device is available here (use auto or cpu)")
        if index >= count:
            raise SpecError(f"{name} {device}: this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
    return device


def parse_bool(text: str, name: str = "value") -> bool:
    """``true`` or ``false`` (any case) -> bool; anything else is refused."""
    value = text.strip().lower() if isinstance(text, str) else None
    if value not in ("true", "false"):
        raise SpecError(f"{name} must be true or false, got {text!r}")
    return value == "true"


def parse_seconds(text, name: str = "--wait") -> float:
    """A number of seconds >= 0 (text or a number), such as ``--wait``'s: how long to wait for
    another process's lock on an output folder (0: do not wait).

    Raises:
        SpecError: not a finite number >= 0; the message names ``name`` and what it accepts.
    """
    try:
        value = float(text.strip() if isinstance(text, str) else text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise SpecError(f"{name} must be a finite number of seconds >= 0, got {text!r}")
    return value


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: ...``, with exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {_one_line(message)}\n")


def json_value(v):
    """``v`` for strict JSON: NaN as null, infinities as "inf" / "-inf" (containers too)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    return v
