"""A run directory from a shared study: after a search on many machines, any machine writes the outputs.

Every search records its settings on its study (:func:`~autoprune.trials.study.bind_settings`), so the study
alone says how to rebuild the experiment; ``autoprune report`` then writes ``config.yaml``, ``trials.csv``,
``policy.json``, ``summary.md`` and the plots exactly as the search command does (:func:`finish`).
"""

from __future__ import annotations

from pathlib import Path

from autoprune.console import status
from autoprune.core.policy import PolicyRecord
from autoprune.errors import ConfigError
from autoprune.io import check_output_dir
from autoprune.run.directory import new_run_dir, write_config
from autoprune.run.search import SearchSettings, finish
from autoprune.trials.record import export_trials, trials_frame
from autoprune.trials.study import load_study, open_storage, study_settings


def report(storage_url: str, study_name: str, out: str | None, data_dir: str | None = None,
           device: str | None = None) -> tuple[Path, PolicyRecord]:
    """Write the run directory of study ``study_name`` in the storage at ``storage_url``; returns it and the policy.

    Args:
        storage_url: the Optuna storage the workers shared.
        study_name: the study's name (``--study-name`` of the search).
        out: the new run directory (default ``results/runs/<time>-<env>-report``).
        data_dir: this machine's data folder, when it differs from the one the study recorded.
        device: evaluate the best policy on this device instead of the recorded one.

    Raises:
        ConfigError: if the storage, the study or its settings cannot be read, the study holds no candidate, or
            ``out`` is not a new folder; nothing is written then.
    """
    if out is not None:
        check_output_dir(out, what="run directory")
    storage = open_storage(storage_url)
    study = load_study(storage, study_name, storage_url)
    machine = {"storage": storage_url, "study_name": study_name, "workers": 1}
    machine.update({k: v for k, v in (("data_dir", data_dir), ("device", device)) if v is not None})
    try:
        settings = SearchSettings(**{**study_settings(study), **machine})
    except TypeError:
        raise ConfigError(f"study {study_name!r} records settings this autoprune cannot read; make the report with "
                          f"the autoprune version that searched") from None
    exp = settings.experiment()
    trials_frame(study, exp.space.names)  # a study without candidates stops here, before anything is written
    run_dir = new_run_dir(out, settings.env["name"], "report")
    status(f"writing the run directory of study {study_name!r} to {run_dir}")
    write_config(run_dir, {"command": "report", "settings": settings.to_dict()})
    record = finish(run_dir, exp, settings, export_trials(study, exp.space.names, run_dir), seconds=0.0)
    return run_dir, record
