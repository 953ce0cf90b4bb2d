"""Every method resumes from the run's study, the one record; trials.csv is rebuilt from it; a damaged
study is one clear line."""

from __future__ import annotations

import pandas as pd
import pytest

from autoprune.search.base import Searcher

RUNS = {
    "random": ["--method", "random", "--evals", "7"],
    "netadapt": ["--method", "netadapt", "--evals", "12", "--netadapt-step", "0.2", "--netadapt-decay", "1"],
    "sensitivity": ["--method", "sensitivity", "--evals", "4", "--ratios", "0.3,0.6"],
    "evolution": ["--method", "evolution", "--evals", "11", "--offspring", "4"],  # interrupted inside a generation
    "evolution-fresh": ["--method", "evolution", "--selection", "fresh", "--evals", "11", "--offspring", "4",
                        "--proxy-images", "200"],
}


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Stop the process (as Ctrl-C would) once a search has recorded ``n`` candidates, as it takes the next."""
    record = Searcher.record
    seen = {"n": 0}

    def interrupted(self, candidate):
        seen["n"] += 1
        if seen["n"] > n:
            raise KeyboardInterrupt
        return record(self, candidate)

    monkeypatch.setattr(Searcher, "record", interrupted)


def _kept(trials: pd.DataFrame) -> list[tuple[int, ...]]:
    columns = [c for c in trials.columns if c.startswith("kept:")]
    return [tuple(row) for row in trials[columns].itertuples(index=False)]


@pytest.mark.parametrize("method", list(RUNS))
def test_killed_run_resumes_to_exactly_the_uninterrupted_record(method, cli, tmp_path, monkeypatch):
    argv = ["search", "--budget", "0.5flops", *RUNS[method], "--quiet"]
    code, _, err = cli(*argv, "--out", "whole")
    assert code == 0, err
    whole = pd.read_csv(tmp_path / "whole" / "trials.csv")

    _interrupt_after(monkeypatch, 3)
    code, _, err = cli(*argv, "--out", "part")
    assert code == 130, err
    monkeypatch.undo()
    code, _, err = cli(*argv, "--out", "part")  # the same command again
    assert code == 0, err
    assert "resuming: 3 candidates recorded" in err or "resuming" not in err  # --quiet may hide the stage line
    resumed = pd.read_csv(tmp_path / "part" / "trials.csv")
    assert len(resumed) == len(whole) and resumed["trial"].tolist() == list(range(len(whole)))
    assert _kept(resumed) == _kept(whole)  # the same candidates in the same order: replayed, then continued
    assert resumed["proxy_acc"].tolist() == pytest.approx(whole["proxy_acc"].tolist(), nan_ok=True)  # (fresh: NaN)
    assert (tmp_path / "part" / "policy.json").read_text().split('"found_by"')[0] == \
        (tmp_path / "whole" / "policy.json").read_text().split('"found_by"')[0]


def test_damaged_export_is_rebuilt_from_the_study(cli, tmp_path, monkeypatch):
    argv = ["search", "--budget", "0.5flops", "--evals", "6", "--out", "run", "--quiet"]
    _interrupt_after(monkeypatch, 4)
    assert cli(*argv)[0] == 130
    monkeypatch.undo()
    trials = tmp_path / "run" / "trials.csv"
    lines = trials.read_text().splitlines(keepends=True)
    trials.write_text("".join(lines[:3]) + lines[3][:10])  # truncated mid-row: 2 whole rows and a torn one
    code, _, err = cli(*argv)
    assert code == 0, err
    rebuilt = pd.read_csv(trials)
    assert len(rebuilt) == 6 and rebuilt["trial"].tolist() == list(range(6)) and rebuilt["proxy_acc"].notna().all()

    trials.write_bytes(b"\x00\xff garbage \x89PNG\r\n")
    code, _, err = cli(*argv)  # a finished run: nothing to evaluate, the export is written again
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(trials), rebuilt)


def test_emptied_or_corrupt_study_is_one_line_naming_it(cli, fails, tmp_path):
    argv = ["search", "--budget", "0.5flops", "--evals", "3", "--out", "run", "--quiet"]
    assert cli(*argv)[0] == 0
    study = tmp_path / "run" / "study.db"
    study.write_bytes(b"")
    message = fails(*argv)
    assert "study.db" in message and "holds no candidate but trials.csv lists 3" in message
    study.write_bytes(b"this is not a database" * 100)
    message = fails(*argv)
    assert "study.db" in message and "cannot be read" in message and "restore it" in message
    assert "cannot be read" in fails("pick", "run", "--budget", "0.4flops")
