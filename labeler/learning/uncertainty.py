"""Moved to :mod:`labeler.models.uncertainty` (issue #24: the predictor and the queue, below learning,
use it); the names stay importable from here."""

from labeler.models.uncertainty import (MEASURES, centred, confidence, entropy, least_confidence, margin,  # noqa: F401
                                        multilabel_uncertainty, rank, uncertainty)
