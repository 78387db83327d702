"""Trained classifiers behind one interface (:class:`Classifier`)."""

from labeler.models.classifiers.base import Classifier, Sample, load_classifier
from labeler.models.classifiers.cnn import CNNClassifier
from labeler.models.classifiers.ensemble import Ensemble
from labeler.models.classifiers.head import EmbeddingHead
from labeler.models.classifiers.multilabel import MultiLabelCNN, MultiLabelHead

# What LABELER_CLASSIFIER chooses from; a multi-label project trains the multi-label kind of the same name.
KINDS: dict[str, type[Classifier]] = {"head": EmbeddingHead, "cnn": CNNClassifier}
MULTILABEL_KINDS: dict[str, type[Classifier]] = {"head": MultiLabelHead, "cnn": MultiLabelCNN}
# Every kind a saved model may be (its classifier.json names it).
ALL_KINDS: dict[str, type[Classifier]] = {k.kind: k for k in (*KINDS.values(), *MULTILABEL_KINDS.values())}
ALL_KINDS[Ensemble.kind] = Ensemble

__all__ = ["KINDS", "MULTILABEL_KINDS", "ALL_KINDS", "Classifier", "Sample", "load_classifier", "CNNClassifier", "Ensemble",
           "EmbeddingHead", "MultiLabelCNN", "MultiLabelHead"]
