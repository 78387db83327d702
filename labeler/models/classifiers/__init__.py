"""Trained classifiers behind one interface (:class:`Classifier`)."""

from labeler.models.classifiers.base import Classifier, Sample, load_classifier
from labeler.models.classifiers.cnn import CNNClassifier
from labeler.models.classifiers.head import EmbeddingHead

KINDS: dict[str, type[Classifier]] = {"head": EmbeddingHead, "cnn": CNNClassifier}

__all__ = ["KINDS", "Classifier", "Sample", "load_classifier", "CNNClassifier", "EmbeddingHead"]
