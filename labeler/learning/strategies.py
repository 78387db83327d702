"""Moved to :mod:`labeler.models.strategies` (issue #24: the "Next to label" queue, below learning,
uses it); the names stay importable from here."""

from labeler.models.strategies import (DEFAULT_STRATEGY, FEATURE_DIM, SHORTLIST, STRATEGIES,  # noqa: F401
                                       check_strategy, imagenet_features, k_center_greedy, queue_order, select)
