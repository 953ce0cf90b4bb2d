"""Shared fixtures: the offline data and weights in ../shared (or AUTOPRUNE_* variables), and a cache dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS_DIR = Path(os.environ.get("AUTOPRUNE_WEIGHTS_DIR", SHARED / "weights" / "cifar10"))
DATA_DIR = Path(os.environ.get("AUTOPRUNE_DATA_DIR", SHARED / "data"))
CIFAR_CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}

needs_weights = pytest.mark.skipif(
    not (WEIGHTS_DIR / CIFAR_CHECKPOINTS["resnet20"]).is_file(),
    reason="shared CIFAR weights not found (set AUTOPRUNE_WEIGHTS_DIR)",
)
needs_cifar = pytest.mark.skipif(
    not ((DATA_DIR / "cifar10-jpeg" / "test").is_dir() and (WEIGHTS_DIR / CIFAR_CHECKPOINTS["resnet20"]).is_file()),
    reason="shared CIFAR-10 data or weights not found (set AUTOPRUNE_DATA_DIR and AUTOPRUNE_WEIGHTS_DIR)",
)


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point autoprune at the shared data and weights, and at a cache shared by the whole session."""
    os.environ.setdefault("AUTOPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("AUTOPRUNE_WEIGHTS_DIR", str(WEIGHTS_DIR))
    os.environ.setdefault("AUTOPRUNE_DATA_DIR", str(DATA_DIR))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Run ``autoprune`` in-process with ``tmp_path`` as working directory; returns (status, stdout, stderr)."""
    from autoprune.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        monkeypatch.chdir(tmp_path)
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse errors exit through SystemExit
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def fails(cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> Callable[..., str]:
    """Run the CLI and check the error contract: status 2, one ``autoprune ...`` line on stderr besides the stage
    lines (``loading env ... ...``) before it, no traceback, nothing written under tmp_path (the working
    directory); returns the error line."""
    from autoprune.console import STATUS_SUFFIX

    def run(*argv: str) -> str:
        before = tree(tmp_path)
        code, out, err = cli(*argv)
        assert code == 2, out + err
        assert "Traceback" not in out + err
        lines = err.splitlines()
        while len(lines) > 1 and lines[0].endswith(STATUS_SUFFIX):
            lines.pop(0)
        assert len(lines) == 1 and lines[0].startswith("autoprune"), err
        assert tree(tmp_path) == before, "files were written"
        return lines[0]

    return run
