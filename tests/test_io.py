"""autoprune.io: atomic writes, YAML errors with line numbers, a run's config.yaml, and checked ``--out`` paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autoprune.cli import main
from autoprune.errors import ConfigError
from autoprune.io import atomic_write, atomic_write_text
from autoprune.run.directory import read_run_config

BUDGET = ("--budget", "0.5flops")
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """policy.json of the uniform 0.5flops policy on digits-demo."""
    run = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", *BUDGET, "--method", "uniform", "--quiet", "--out", str(run)]) == 0
    return run / "policy.json"


# atomic writes


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_write_gives_the_writer_a_sibling_with_the_same_suffix(tmp_path: Path) -> None:
    seen: list[Path] = []
    atomic_write(tmp_path / "pruned.pt2", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"\x00\x01")))
    assert seen[0].parent == tmp_path and seen[0].suffix == ".pt2" and seen[0].name != "pruned.pt2"
    assert (tmp_path / "pruned.pt2").read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt2"]


def test_atomic_write_keeps_the_old_content_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text("old\n")

    def half_write(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_write)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_atomic_write_of_a_new_file_that_fails_leaves_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("no space left")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "new.csv", fail)
    assert list(tmp_path.iterdir()) == []


@needs_proc
def test_atomic_write_into_a_refused_folder_raises_oserror_before_the_writer_runs() -> None:
    calls: list[Path] = []
    with pytest.raises(OSError):
        atomic_write("/proc/autoprune-test.pt", calls.append)
    assert calls == []


# a run's config.yaml


def test_read_run_config_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a search run directory \\(no config.yaml\\)"):
        read_run_config(tmp_path)
    with pytest.raises(ConfigError, match="^--resume '.*' is not a search run directory"):
        read_run_config(tmp_path, "--resume")


def test_read_run_config_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("command: search\nsettings:\n  budget: 0.5flops\n  method: a: b\n")
    with pytest.raises(ConfigError) as error:
        read_run_config(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "config.yaml") in message and "line 4" in message and "\n" not in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""], ids=["list", "scalar", "empty"])
def test_read_run_config_not_a_mapping(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="not a mapping"):
        read_run_config(tmp_path)


def test_resume_with_broken_config_is_one_line_with_the_line_number(fails: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("command: search\nsettings:\n  budget: 0.5flops\n  method: a: b\n")
    message = fails("search", "--resume", "run")
    assert "config.yaml" in message and "line 4" in message


def test_resume_with_settings_of_another_version_cannot_read(fails: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("command: search\nsettings: {bogus: 1}\n")
    assert "cannot read" in fails("search", "--resume", "run")


# preset YAML files


@pytest.mark.parametrize(
    "option, text, line",
    [
        pytest.param("--env", "model: digits-cnn\nweights: builtin\ndataset: [digits\ninput_shape: [1, 1, 8, 8]\n", 4,
                     id="env-unclosed-list"),
        pytest.param("--env", "model: digits-cnn\n\tweights: builtin\n", 2, id="env-tab"),
        pytest.param("--space", "default_max_ratio: 0.8\nunits: a: b\n", 2, id="space-mapping-value"),
    ],
)
def test_preset_yaml_syntax_error_names_file_and_line(
    fails: Callable[..., str], tmp_path: Path, option: str, text: str, line: int
) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    message = fails("search", option, "bad.yaml", *BUDGET, "--quiet")
    assert "'bad.yaml'" in message and "not valid YAML" in message and f"line {line}" in message


# --out paths


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file in the working directory, to put --out under."""
    (tmp_path / "notes.txt").write_text("keep me\n")
    return tmp_path / "notes.txt"


def _commands(policy: Path, out: str) -> dict[str, list[str]]:
    return {
        "search": ["search", *BUDGET, "--evals", "2", "--quiet", "--out", out],
        "sensitivity": ["sensitivity", "--ratios", "0.5", "--quiet", "--out", out],
        "finetune": ["finetune", str(policy), "--epochs", "0", "--quiet", "--out", out],
        "pick": ["pick", str(policy.parent), "--budget", "0.6flops", "--out", out],
        "bench": ["bench", "--quick", "--quiet", "--out", out],
    }


@pytest.mark.parametrize("command", ["search", "sensitivity", "finetune", "pick", "bench"])
def test_out_folder_under_a_file(fails: Callable[..., str], policy: Path, blocker: Path, command: str) -> None:
    message = fails(*_commands(policy, "notes.txt/out")[command])
    assert "'notes.txt' is a file, not a folder" in message
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("argv", [
    ["apply", "{policy}", "--out", "notes.txt/pruned.pt"],
    ["export", "{policy}", "--format", "nni", "--out", "notes.txt/deeper/nni.json"],
], ids=["apply", "export"])
def test_out_file_under_a_file(fails: Callable[..., str], policy: Path, blocker: Path, argv: list[str]) -> None:
    message = fails(*(a.format(policy=policy) for a in argv))
    assert "'notes.txt' is a file, not a folder" in message
    assert blocker.read_text() == "keep me\n"


@needs_proc
@pytest.mark.parametrize("command", ["search", "sensitivity", "finetune", "pick"])
def test_out_folder_that_cannot_be_created(fails: Callable[..., str], policy: Path, command: str) -> None:
    message = fails(*_commands(policy, "/proc/autoprune-test/out")[command])
    assert "cannot write --out '/proc/autoprune-test/out'" in message
    assert not Path("/proc/autoprune-test").exists()


@needs_proc
@pytest.mark.parametrize("argv", [
    ["apply", "{policy}", "--out", "/proc/autoprune-test.pt"],
    ["export", "{policy}", "--format", "csv", "--out", "/proc/autoprune-test.csv"],
], ids=["apply", "export"])
def test_out_file_that_cannot_be_written(fails: Callable[..., str], policy: Path, argv: list[str]) -> None:
    message = fails(*(a.format(policy=policy) for a in argv))
    assert "cannot write --out '/proc/autoprune-test." in message


@pytest.mark.parametrize("command", ["search", "sensitivity", "finetune", "pick"])
def test_out_folder_naming_an_empty_file(fails: Callable[..., str], tmp_path: Path, policy: Path, command: str) -> None:
    (tmp_path / "out").touch()
    message = fails(*_commands(policy, "out")[command])
    assert "'out' is a file, not a folder" in message and "not empty" not in message
    assert (tmp_path / "out").read_bytes() == b""


@pytest.mark.parametrize("command", ["search", "sensitivity", "finetune", "pick"])
def test_out_folder_not_empty_keeps_its_wording(fails: Callable[..., str], tmp_path: Path, policy: Path,
                                                command: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me\n")
    assert "already exists and is not empty" in fails(*_commands(policy, "out")[command])
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me\n"
