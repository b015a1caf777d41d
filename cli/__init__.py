"""The ``qtrain`` command line: one typer sub-app per noun, joined in ``main``."""
