"""One error model: every failure labeler reports to a person is a :class:`LabelerError`.

Each kind carries the HTTP status the service answers with and the exit code
of the CLI; the message says what went wrong and, where it can, what to do.
The Flask app has one handler for all of them, the CLI one line per error.
"""

from __future__ import annotations


class LabelerError(Exception):
    status: int = 500
    exit_code: int = 1


class SettingsError(LabelerError, ValueError):
    """An environment setting is invalid (raised at start-up)."""
    exit_code = 2


class LabelConfigError(LabelerError, ValueError):
    """The label config cannot be served by an image-classification backend."""
    status = 400


class ImageError(LabelerError):
    """An image could not be fetched or decoded (reported per task, never for the whole request)."""
    status = 422


class DatasetError(LabelerError, ValueError):
    """A labelled folder (``image,label`` CSV) that cannot be read as asked; the message names the row."""
    status = 400


class StudioError(LabelerError):
    """Label Studio could not be reached or refused a request."""
    status = 502


class ClusterError(LabelerError):
    """The Ray cluster's job server could not be reached or refused a job."""
    status = 503


class RegistryError(LabelerError):
    """A model version does not exist."""
    status = 404


class InvalidName(RegistryError):
    """A project id or version name that could point outside MODEL_DIR."""
    status = 400


class RegistryStoreError(RegistryError):
    """The registry's object store (LABELER_REGISTRY_URL) cannot be opened or reached."""
    status = 503


class TrainingError(LabelerError):
    """Training cannot go ahead; the message says why (shown on the job and the admin page)."""
    status = 409


class Busy(LabelerError):
    """The same work already runs (e.g. a pre-annotation of the project)."""
    status = 409


class SetupRefused(LabelerError):
    """A /setup that may not change this backend's Label Studio connection."""
    status = 403


class NoRoomForModel(LabelerError):
    """The disk of the model hub's cache cannot hold a model download (refused before it starts)."""
    status = 507


class DiskFull(LabelerError, OSError):
    """A write ran out of disk space or quota; the message says what was being written and where.
    The write's partial files are removed before this is raised (:func:`labeler.fsutil.disk_full_says`)."""
    status = 507
