"""Command-line values shared by ``python -m simulate`` and ``python -m figures``: devices,
booleans, and a parser whose usage errors are one line with exit status 2."""

from __future__ import annotations

import argparse
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


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: ...``, with exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {_one_line(message)}\n")
