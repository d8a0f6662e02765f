"""Entrypoints: the `phi4ray` CLI, the stage registry, one `python jobs/<stage>.py` per stage for `ray job submit`."""
