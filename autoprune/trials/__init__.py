"""The store every search writes to: a run's Optuna study (storage, settings, shared tasks) and candidates as trials."""
