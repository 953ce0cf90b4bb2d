"""File-system helpers: atomic writes, YAML with line numbers, and checked output paths.

Every file autoprune writes goes through :func:`atomic_write` (a temporary sibling, then a rename), so
none is ever half-written. Every ``--out`` is checked by :func:`check_output_dir` or
:func:`check_output_file` before anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    The temporary name (``.<name>.<pid>.tmp<suffix>``) keeps the suffix, for writers that go by it. It is
    created before ``write`` runs, so a folder the operating system refuses raises :class:`OSError` whatever
    the writer would raise; it is removed if ``write`` or the rename fails, and ``path`` keeps its old content.
    An :class:`OSError` (a full disk) names ``path``, not the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        tmp.open("wb").close()
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        if e.errno is None or e.filename not in (None, str(tmp), tmp):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` read from ``source`` (a description such as ``"env preset 'x.yaml'"``).

    Raises:
        ConfigError: for a syntax error, naming ``source`` and the line.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}; correct the file") from None


def output_error(path: str | Path, error: OSError, flag: str = "--out") -> ConfigError:
    """The one-line error for an output path the operating system refused."""
    return ConfigError(f"cannot write {flag} {str(path)!r}: {error.strerror or error}; choose another {flag}")


def _existing_file_above(path: Path, flag: str) -> Path | None:
    """The nearest existing entry of ``path`` and the folders above it if it is not a folder, else None."""
    for p in (path, *path.parents):
        try:
            if p.exists():
                return None if p.is_dir() else p
        except OSError as e:
            raise output_error(path, e, flag) from None
    return None


def check_output_dir(path: str | Path, *, new: bool = True, flag: str = "--out", what: str = "output folder",
                     hint: str = "choose another --out") -> Path:
    """Check that ``path`` can be (or already is) an output folder; writes nothing.

    Args:
        path: the folder.
        new: the command needs a new folder: refuse an existing one that is not empty.
        flag: the option that named it, for messages.
        what: what the folder is, for the "not empty" message.
        hint: what to do about a folder that is not empty.

    Raises:
        ConfigError: if ``path`` or a folder above it is a file, or (``new``) ``path`` is not empty.
    """
    path = Path(path)
    blocker = _existing_file_above(path, flag)
    if blocker == path:
        raise ConfigError(f"{flag} {str(path)!r} is a file, not a folder; give a folder")
    if blocker is not None:
        raise ConfigError(f"{flag} {str(path)!r}: {str(blocker)!r} is a file, not a folder; choose another {flag}")
    if new and path.is_dir():
        try:
            empty = not any(path.iterdir())
        except OSError as e:
            raise output_error(path, e, flag) from None
        if not empty:
            raise ConfigError(f"{what} {str(path)!r} already exists and is not empty; {hint}")
    return path


def prepare_output_dir(path: str | Path, *, new: bool = True, flag: str = "--out", what: str = "output folder",
                       hint: str = "choose another --out") -> Path:
    """Check ``path`` like :func:`check_output_dir`, then create it (with the folders above it).

    Raises:
        ConfigError: for a path :func:`check_output_dir` refuses, or one the operating system cannot create.
    """
    path = check_output_dir(path, new=new, flag=flag, what=what, hint=hint)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e, flag) from None
    return path


def check_output_file(path: str | Path, flag: str = "--out", example: str = "out") -> Path:
    """Check that ``path`` can be written as an output file in an existing folder; writes nothing.

    Args:
        path: the file.
        flag: the option that named it, for messages.
        example: a file name to suggest when ``path`` is a folder.

    Raises:
        ConfigError: if ``path`` is a folder, a folder above it is a file, or its folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file name such as {str(path / example)!r}")
    blocker = _existing_file_above(path.parent, flag)
    if blocker is not None:
        raise ConfigError(f"{flag} {str(path)!r}: {str(blocker)!r} is a file, not a folder; choose another {flag}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first")
    return path
