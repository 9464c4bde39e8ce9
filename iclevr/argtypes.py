# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""argparse types that check a number's domain as it is parsed, so a value out of range stops every script with
argparse's one-line error (exit code 2) before any work, never with a traceback from deep inside a run."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path


def _number(kind, text: str, what: str, accept) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value) or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, "a positive integer", lambda v: v > 0)


def non_negative_int(text: str) -> int:
    return _number(int, text, "an integer >= 0", lambda v: v >= 0)


def port(text: str) -> int:
    return _number(int, text, "a port number in 1..65535", lambda v: 0 < v < 65536)


def positive_float(text: str) -> float:
    return _number(float, text, "a finite number > 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    return _number(float, text, "a finite number >= 0", lambda v: v >= 0)


def finite_float(text: str) -> float:
    return _number(float, text, "a finite number", lambda v: True)


def probability(text: str) -> float:
    return _number(float, text, "a probability in [0, 1]", lambda v: 0 <= v <= 1)


def fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a held-out fraction, an Adam beta)."""
    return _number(float, text, "a number in (0, 1)", lambda v: 0 < v < 1)


def check_output_folder(parser: argparse.ArgumentParser, path, flag: str) -> None:
    """Stop with argparse's one-line error when ``path`` (a folder the script will write into) is a file, or cannot be
    created or written; nothing is left behind by the check."""
    if path is None:
        return
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            parser.error(f"{flag} {path} is a file, not a folder: give a folder to write into.")
        ancestor = path
    else:
        ancestor = next(parent for parent in path.parents if parent.exists())
        if not ancestor.is_dir():
            parser.error(f"{flag} {path} cannot be created: {ancestor} is a file.")
    try:  # the one reliable test of "can be created here" (permissions, read-only or virtual filesystems)
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as error:
        parser.error(f"{flag} {path} cannot be created or written: {ancestor}: {error.strerror or error}.")
