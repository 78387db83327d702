"""Labelling configs; shipped inside the wheel as ``labeler.templates`` (see pyproject.toml)."""
