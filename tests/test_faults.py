"""The fault campaign (autoprune/bench/studies/reliability.py): each fault ends in one clear line, a non-zero exit
where the run cannot go on, and no recorded candidate lost. (A killed worker: tests/test_postgres.py.)"""

from __future__ import annotations

import signal

import pytest

from autoprune.bench.studies import reliability as r


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder holding a finished 4-candidate search (``run``), copied by each test that damages one."""
    folder = tmp_path_factory.mktemp("finished")
    r.finished_run(folder)
    return folder


def test_disk_full_while_recording_stops_cleanly_and_the_rerun_resumes(work):
    o = r.disk_full_record(work)
    assert o.code == 1 and o.message.startswith("autoprune: error: no space left on the device;")
    assert "run the same command again" in o.message
    assert o.details["recorded"] == 4  # the study records before the export: the 4th candidate is kept
    assert o.details["rerun_code"] == 0, o.details["rerun_err"]
    assert o.details["rows"] == 8


def test_disk_full_while_writing_the_policy_names_it_and_leaves_no_half_file(work):
    o = r.disk_full_output(work)
    assert o.code == 1 and "no space left on the device while writing" in o.message and "policy.json'" in o.message
    assert o.details["recorded"] == 5 and o.details["leftovers"] == []
    assert o.details["rerun_code"] == 0 and o.details["policy"], o.details["rerun_err"]


@pytest.mark.parametrize("how", [r.TRUNCATED, r.GARBLED])
def test_damaged_trials_csv_or_policy_json_is_rewritten_from_the_study(work, finished, how):
    for name in ("trials.csv", "policy.json"):
        folder = work / f"{name}-{how}"
        folder.mkdir()
        o = r.damaged_file(folder, name, how, finished)
        assert o.code == 0, o.details["err"]
        assert o.details["rows"] == 4 and o.details["untouched"]  # the study and config.yaml as they were
        if name == "policy.json":
            assert o.details["policy_ok"]


@pytest.mark.parametrize("how", [r.TRUNCATED, r.GARBLED])
@pytest.mark.parametrize("name", ["study.db", "config.yaml"])
def test_damaged_study_or_config_is_one_line_naming_it_and_nothing_is_overwritten(work, finished, name, how):
    o = r.damaged_file(work, name, how, finished)
    assert o.code == 2 and o.message.startswith("autoprune: error:") and len(o.details["err"].splitlines()) == 1
    assert name in o.message and ("restore" in o.message or "correct the file" in o.message)
    assert o.details["untouched"] and o.details["damaged_kept"]


def test_garbled_policy_given_to_export_names_the_file(work, finished):
    o = r.damaged_policy_used(work, finished)
    assert o.code == 2 and "policy.json" in o.message and "not valid JSON" in o.message
    assert not o.details["written"]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "method"), [(signal.SIGTERM, "optuna"), (signal.SIGINT, "random")])
def test_signal_mid_search_writes_the_outputs_and_the_rerun_resumes(work, signum, method):
    o = r.signalled(work, signum, method)
    name = signal.Signals(signum).name
    assert o.code == 128 + signum, o.message
    assert o.message.startswith(f"autoprune: stopped by {name} after ") and "rerun the same command to resume" in o.message
    assert o.details["outputs"] and o.details["rows_before"] == o.details["recorded"] >= 5
    assert o.details["rerun_code"] == 0, o.details["rerun_err"]
    assert o.details["rows_after"] == 30 and o.details["same_start"]  # resumed: the recorded candidates kept as they were


@pytest.mark.slow
def test_a_second_command_on_the_same_run_directory_is_refused(work):
    o = r.two_commands(work)
    assert o.code == 2 and "is in use by another autoprune command" in o.message
    assert o.details["first_code"] == 0 and o.details["rows"] == o.details["recorded"] == 30


def test_a_crafted_unit_name_cannot_write_outside_out(work, finished):
    o = r.crafted_unit_name(work, finished)
    assert o.code == 2 and "are not in digits-cnn's search space" in o.message
    assert o.details["unchanged"]


def test_a_crafted_env_name_cannot_place_a_run_outside_results(work):
    o = r.crafted_env_name(work)
    assert o.code == 0 and o.details["inside"] and o.details["new"], o.details


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_a_network_that_outputs_nan_or_raises_is_a_failed_candidate_and_the_search_goes_on(work, mode):
    o = r.failing_network(work, mode)
    assert o.code == 0 and o.details["rows"] == 12
    assert o.details["failed"] >= 1
    assert all(reason.startswith("NonFiniteOutput" if mode == "nan" else "TypeError") for reason in o.details["reasons"])
    assert o.details["first_kept"] >= 16  # never picked
