# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Reading json with clear errors, and the one way this project writes what must never be seen half-written: into a
``<name>.partial`` folder, moved into place once complete (`replace_folder` for a whole folder, `move_into` for files
joining a folder that holds other things too).

A run killed mid-save leaves only a ``.partial`` folder, which no reader picks (`remove_partial_saves` clears them
at the next start), so a checkpoint, a rendered dataset, an evaluator or a pipeline on disk is always whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL = ".partial"


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a json file, turning a missing file or bad json into an error that says which file and what it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path}:{error.lineno} is not valid JSON: {error.msg}: line {error.lineno}, column "
                         f"{error.colno}.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: it is not UTF-8 text ({error.reason} at byte {error.start}).") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as one line of json (the layout of the label and layout files the renderer writes)."""
    Path(path).write_text(json.dumps(data) + "\n")


def partial_path(final: str | os.PathLike) -> Path:
    """Where ``final`` is written before it is moved into place: ``<final>.partial``."""
    return Path(final).with_name(Path(final).name + PARTIAL)


def partial_folder(final: str | os.PathLike) -> Path:
    """An empty ``<final>.partial`` folder to write into (whatever an interrupted save left there is removed)."""
    partial = partial_path(final)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def replace_folder(partial: Path, final: str | os.PathLike) -> None:
    """Move a complete ``partial`` folder to ``final``. An existing ``final`` is set aside first and deleted only once
    the new one is in place, so a crash in between leaves it as ``<final>.old``, never lost."""
    final = Path(final)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old)
    else:
        os.replace(partial, final)


def move_into(partial: Path, folder: str | os.PathLike, last: str) -> None:
    """Move every entry of a complete ``partial`` folder into ``folder``, replacing entries of the same name. ``last``,
    the file a reader looks for first (``model_index.json``, ``model.safetensors``), is removed before and moved in
    after all the others, so an interrupted move leaves a folder that readers refuse, never a mix of old and new."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / last).unlink(missing_ok=True)
    for entry in sorted(partial.iterdir()):
        target = folder / entry.name
        if entry.name == last:
            continue
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    os.replace(partial / last, folder / last)
    shutil.rmtree(partial)


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Write a folder in one piece: ``with staged_folder(out) as folder: ...`` writes into ``out.partial``, which
    replaces ``out`` when the block ends and is deleted if it raises."""
    partial = partial_folder(final)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_folder(partial, final)


def remove_partial_saves(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.partial`` folders that interrupted saves left in ``folder``; returns them for the log."""
    leftovers = sorted(p for p in Path(folder).glob(f"*{PARTIAL}") if p.is_dir())
    for leftover in leftovers:
        shutil.rmtree(leftover)
    return leftovers


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike, hold: bool = True) -> Iterator[None]:
    """One writer per output folder: an OS lock on ``<folder>.writing.lock`` (beside the folder, which a render
    replaces whole; distinct from the ``<folder>.lock`` a cache holds while it waits for one render) for the block. A second run on the same folder stops at once with one line naming the folder and the
    holder's PID; the OS drops the lock when its process dies, so a SIGKILLed run leaves nothing that blocks the next.
    ``hold=False`` (the other processes of a multi-process run) takes no lock."""
    if not hold:
        yield
        return
    from filelock import FileLock, Timeout

    path = Path(f"{Path(folder).resolve()}.writing.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = path.read_text().strip() if path.is_file() else ""
        raise SystemExit(f"{folder} is being written by another run (PID {holder or 'unknown'}; lock {path}): wait for it "
                         "to end, or give another output folder.") from None
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        lock.release()


def is_main_rank() -> bool:
    """Whether this is the main process of a launch (``RANK`` 0, or no ``RANK``), known before an Accelerator exists."""
    return os.environ.get("RANK", "0") == "0"
