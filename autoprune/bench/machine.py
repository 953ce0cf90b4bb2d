"""The header every benchmark report starts with (machine, library versions, the exact command), and writing it."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

LIBRARIES = ("autoprune", "torch", "torchvision", "torch-pruning", "fvcore", "numpy", "pandas", "optuna", "stable-baselines3")


def machine_description() -> str:
    """This machine in one line: architecture, CPU cores, torch threads, GPU and operating system."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU cores, torch threads "
            f"{torch.get_num_threads()}, GPU: {gpu}; {platform.system()} {platform.release()}")


@functools.cache
def source_revision() -> str | None:
    """The git commit autoprune runs from (``+`` appended when its code, the package or ``pyproject.toml``, differs
    from it; results written into the checkout do not count), or None when it does not run from a git checkout
    (an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "autoprune", "pyproject.toml"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if changed else "") if head else None


def library_versions() -> str:
    """Python and the installed versions of the libraries a measurement depends on (autoprune's with its git
    commit when it runs from a checkout), in one line."""
    versions = []
    for name in LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        revision = source_revision() if name == "autoprune" else None
        versions.append(f"{name} {version}" + (f" (git {revision})" if revision else ""))
    return f"python {sys.version.split()[0]}; {', '.join(versions)}"


def machine_header(command: list[str]) -> list[str]:
    """Markdown lines naming the date, machine, threads, library versions and the command."""
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine_description()}",
        f"- {library_versions()}",
        f"- command: `{shlex.join(command)}`",
    ]


def write_markdown(folder: str | Path, name: str, lines: list[str], echo: bool = True) -> Path:
    """Write a report's lines to ``folder/name`` (creating the folder); print them and the path when ``echo``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text("\n".join(lines))
    if echo:
        print("\n".join(lines))
    print(f"wrote {path}")
    return path
