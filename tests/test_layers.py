"""What the import contracts (issue #24, `lint-imports` in make test) moved stays consistent."""

from __future__ import annotations


def test_settings_know_the_uncertainty_measures_by_name():
    from labeler.config import UNCERTAINTY_MEASURES
    from labeler.models.uncertainty import MEASURES

    assert UNCERTAINTY_MEASURES == tuple(MEASURES)


def test_old_import_paths_name_the_moved_objects():
    import labeler.learning.registry as old_registry
    import labeler.learning.strategies as old_strategies
    import labeler.learning.uncertainty as old_uncertainty
    import labeler.studio.labelconfig as old_labelconfig
    from labeler import ids, labelconfig
    from labeler.connection import Connection
    from labeler.learning.objectregistry import ObjectRegistry
    from labeler.media.images import content_key
    from labeler.models import cache, objectregistry, openregistry, registry, strategies, uncertainty, zeroshot
    from labeler.config import DEFAULT_MODEL
    from labeler.dev import demo
    from labeler.studio import client, tasks

    assert old_registry.Registry is registry.Registry and old_registry.registry_for is openregistry.registry_for
    assert old_registry.PROJECT_RE is ids.PROJECT_RE and old_registry.check_version is ids.check_version
    assert ObjectRegistry is objectregistry.ObjectRegistry
    assert old_uncertainty.confidence is uncertainty.confidence and old_strategies.queue_order is strategies.queue_order
    assert old_labelconfig.parse_label_config is labelconfig.parse_label_config
    assert client.Connection is Connection and cache.content_key is content_key
    assert zeroshot.DEFAULT_MODEL == DEFAULT_MODEL and demo.upload_images is tasks.upload_images
