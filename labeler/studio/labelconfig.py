"""Moved to :mod:`labeler.labelconfig` (issue #24: the predictor, below studio, reads it); the names
stay importable from here."""

from labeler.labelconfig import (CLOUD_SCHEMES, DEFAULT_TEMPLATE, MAX_CLASSES, MAX_PROMPT_CHARS,  # noqa: F401
                                 MAX_PROMPTS_PER_CLASS, LabelConfig, LabelConfigError, parse_label_config,
                                 studio_resolve_path)
