"""Trained classifiers behind one interface (:class:`Classifier`)."""

from .base import Classifier, Sample, load_classifier
from .cnn import CNNClassifier
from .head import EmbeddingHead

KINDS: dict[str, type[Classifier]] = {"head": EmbeddingHead, "cnn": CNNClassifier}

__all__ = ["KINDS", "Classifier", "Sample", "load_classifier", "CNNClassifier", "EmbeddingHead"]
