"""After ``/predict``: the "Next to label" queue of the project is published in the background
(:class:`labeler.studio.autoqueue.QueuePublisher`, one per backend state), so a project pre-annotated
from Label Studio's "Retrieve predictions" gets the same tabs as one ``labeler preannotate`` filled."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence

from labeler.labelconfig import LabelConfig
from labeler.studio.autoqueue import QueuePublisher

from .state import BackendState

log = logging.getLogger(__name__)
_publishers: weakref.WeakKeyDictionary[BackendState, QueuePublisher] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def publisher(st: BackendState) -> QueuePublisher:
    """The queue publisher of ``st`` (made on first use)."""
    with _lock:
        pub = _publishers.get(st)
        if pub is None:
            pub = _publishers[st] = QueuePublisher(st.predictor, st.studio)
        return pub


def after_predict(st: BackendState, project: str, tasks: Sequence[object], config: LabelConfig,
                  results: Sequence[object]) -> None:
    """Note what ``/predict`` predicted for the queue; only for a project a verified ``/setup`` made
    known, with a Label Studio to write to. Never raises: a prediction never fails for the queue."""
    try:
        if st.studio(project) is None or not st.known(project):
            return
        publisher(st).observe(project, tasks, config, results)
    except Exception as exc:  # noqa: BLE001 - the queue is a convenience, the prediction is the answer
        log.warning("project %s: could not note /predict for the queue: %s", project, exc)
