"""Environment presets (YAML), shipped as the package data ``autoprune.envs``."""
