"""What the import contracts (issue #24, `lint-imports` in make test) moved stays consistent."""

from __future__ import annotations


def test_settings_know_the_uncertainty_measures_by_name():
    from labeler.config import UNCERTAINTY_MEASURES
    from labeler.models.uncertainty import MEASURES

    assert UNCERTAINTY_MEASURES == tuple(MEASURES)


def test_moved_names_are_the_same_objects_where_still_reexported():
    from labeler.config import DEFAULT_MODEL
    from labeler.connection import Connection
    from labeler.dev import demo
    from labeler.media.images import content_key
    from labeler.models import cache, zeroshot
    from labeler.studio import client, tasks

    assert client.Connection is Connection and cache.content_key is content_key
    assert zeroshot.DEFAULT_MODEL == DEFAULT_MODEL and demo.upload_images is tasks.upload_images
