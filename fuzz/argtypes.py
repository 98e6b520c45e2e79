"""Exact command-line arguments: argparse types that refuse what the tool cannot honour
(non-finite or non-positive numbers, empty ranges), and the exit-code text every --help shows.

A bad value is a usage error: argparse reports `argument --max-time: must be a finite number
greater than 0, got 'nan'` on one line and the command exits 2.
"""
from __future__ import annotations

import argparse
import math
from importlib import metadata

EXIT_CODES = """\
exit codes:
  0    nothing outside the known list (replay: every entry shows what it recorded)
  1    a new divergence (replay: an entry shows something else)
  2    usage, input or output error: one line on stderr naming what and where
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM: the summary and report are still written

output files: a regular file or a new name is written atomically (temporary file + rename) with
the umask's mode; a device or FIFO is written through, never replaced; a symbolic link is
refused. Output paths are checked before the run starts."""


def version() -> str:
    try:
        return metadata.version("memslot-fuzz")
    except metadata.PackageNotFoundError:      # running from a source tree without an install
        return "unknown"


def positive_float(text: str) -> float:
    """A finite number greater than 0 (seconds): nan, inf, 0 and negatives are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r}")
    return value


def int_range(lo: int, hi: int | None = None, why: str = ""):
    """An argparse type accepting an integer in [lo, hi] (hi None: no upper bound)."""
    bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
    because = f" ({why})" if why else ""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}{because}, got {text!r}")
        return value

    parse.__name__ = f"integer {bounds}"
    return parse


def seed(text: str) -> int:
    """A random seed: any integer of at most 64 bits (the report stores it as a number)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
    if not -(1 << 63) <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"must fit in 64 bits, got {text[:40]!r}")
    return value
