"""Reading a Label Studio labelling config: which tags to fill, which classes, which prompts.

Prompts live in the config itself, so they change per project without a
restart: ``<Choice value="open" hint="open eye or pupil; eye with visible pupil"/>``
gives the class ``open`` two prompts (``;`` separates them). A choice with
no hint gets ``"a photo of a {value}"``. Label Studio shows ``hint`` as a
tooltip to annotators, which doubles as documentation of what the class means.
"""

from __future__ import annotations

import base64
import functools
import logging
from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

from labeler.errors import LabelConfigError  # noqa: F401 - raised here

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}"
# Bounds on what an (untrusted) label config makes the model score: each prompt is a Q-Former pass per image.
MAX_CLASSES = 1000
MAX_PROMPTS_PER_CLASS = 16
MAX_PROMPT_CHARS = 1000  # longer is cut: the text encoder reads a few hundred tokens at most
MAX_CONFIG_CHARS = 2_000_000  # XML parses at about 1 s a MB and comes with every /predict
# URI schemes of Label Studio's cloud storages (S3, GCS, Azure Blob; "azure-spi": service principal).
CLOUD_SCHEMES = frozenset({"s3", "gs", "gcs", "azure-blob", "azure-spi"})


def studio_resolve_path(task_id: int, uri: str) -> str:
    """Label Studio's ``/tasks/<id>/resolve/?fileuri=<urlsafe base64>`` for a cloud URI of that task."""
    return f"/tasks/{task_id}/resolve/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"


@dataclass(frozen=True)
class LabelConfig:
    from_name: str            # the <Choices name=...>
    to_name: str              # the <Image name=...> it points at
    value_key: str            # task data key of the image, from <Image value="$key">
    classes: tuple[str, ...]
    prompts: dict[str, tuple[str, ...]]
    multiple: bool = False    # choice="multiple"

    def image_ref(self, task: object) -> object:
        """The image reference in a task's data (None when the task or its data is not an object).

        A cloud-storage URI (``s3://``, ``gs://``, ``azure-blob://``...) becomes Label Studio's
        resolve endpoint for the task, which answers with the file or a presigned URL: the
        backend needs no cloud credentials.
        """
        data = task.get("data") if isinstance(task, dict) else None
        ref = data.get(self.value_key) if isinstance(data, dict) else None
        task_id = task.get("id") if isinstance(task, dict) else None
        if isinstance(ref, str) and isinstance(task_id, int) and ref.split("://", 1)[0].lower() in CLOUD_SCHEMES:
            return studio_resolve_path(task_id, ref)
        return ref

    def signature(self) -> str:
        """Text that changes whenever classes or prompts change (for model versions)."""
        return "|".join(f"{c}={';'.join(self.prompts[c])}" for c in self.classes)


def parse_label_config(xml: str) -> LabelConfig:
    """The ``<Choices>`` that classifies an ``<Image>`` in ``xml``; :class:`LabelConfigError` if none.

    Read with the SDK's ``LabelInterface``, Label Studio's own parser, so a
    ``<Choice alias=...>`` is the class name annotations carry, as in the UI. Every ``/predict`` carries
    its project's config, so the last few parses are kept (a :class:`LabelConfig` is immutable).
    """
    if not isinstance(xml, str):
        raise LabelConfigError(f"the label config must be XML text, got {type(xml).__name__}")
    if not xml.strip():
        raise LabelConfigError("empty label config")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config of {len(xml):,} characters refused (at most {MAX_CONFIG_CHARS:,})")
    return _parse(xml)


@functools.lru_cache(maxsize=32)
def _parse(xml: str) -> LabelConfig:
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own XML and config errors
        raise LabelConfigError(f"label config is not valid XML for Label Studio: {str(exc)[:300]}") from exc
    if not any(o.tag == "Image" for o in interface.objects):
        raise LabelConfigError("label config has no <Image> tag: labeler classifies images")
    for control in interface.controls:
        image = next((o for o in control.objects if o.tag == "Image"), None) if control.tag == "Choices" else None
        if image is None:
            continue
        if not str(image.value or "").startswith("$"):
            raise LabelConfigError(f'<Image name="{image.name}"> must take its value from task data ("$key")')
        classes = tuple(control.labels)
        if len(classes) > MAX_CLASSES:
            raise LabelConfigError(f'<Choices name="{control.name}"> has {len(classes)} classes (at most {MAX_CLASSES})')
        if len(classes) < 2:
            raise LabelConfigError(f'<Choices name="{control.name}"> needs at least two <Choice> values')
        return LabelConfig(
            from_name=control.name, to_name=image.name, value_key=image.value[1:], classes=classes,
            prompts={c: _prompts(c, control.labels_attrs[c].attr.get("hint")) for c in classes},
            multiple=control.attr.get("choice", "single") == "multiple",
        )
    raise LabelConfigError("label config has no <Choices> tag whose toName is an <Image>")


def _prompts(name: str, hint: str | None) -> tuple[str, ...]:
    """The hint's ``;``-separated prompts, or the default template on the class name."""
    prompts = tuple(p.strip()[:MAX_PROMPT_CHARS] for p in (hint or "").split(";") if p.strip())
    if len(prompts) > MAX_PROMPTS_PER_CLASS:
        log.warning("class %r has %d prompts in its hint; the first %d are used", name[:80], len(prompts),
                    MAX_PROMPTS_PER_CLASS)
        prompts = prompts[:MAX_PROMPTS_PER_CLASS]
    return prompts or (DEFAULT_TEMPLATE.format(name),)
