"""Search-space presets (YAML), shipped as the package data ``autoprune.search_spaces``."""
