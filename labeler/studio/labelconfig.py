"""Reading a Label Studio labelling config: which tags to fill, which classes, which prompts.

Prompts live in the config itself, so they change per project without a
restart: ``<Choice value="open" hint="open eye or pupil; eye with visible pupil"/>``
gives the class ``open`` two prompts (``;`` separates them). A choice with
no hint gets ``"a photo of a {value}"``. Label Studio shows ``hint`` as a
tooltip to annotators, which doubles as documentation of what the class means.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from labeler.errors import LabelConfigError  # noqa: F401 - raised here

DEFAULT_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class LabelConfig:
    from_name: str            # the <Choices name=...>
    to_name: str              # the <Image name=...> it points at
    value_key: str            # task data key of the image, from <Image value="$key">
    classes: tuple[str, ...]
    prompts: dict[str, tuple[str, ...]]
    multiple: bool = False    # choice="multiple"

    def image_ref(self, task: object) -> object:
        """The image reference in a task's data (None when the task or its data is not an object)."""
        data = task.get("data") if isinstance(task, dict) else None
        return data.get(self.value_key) if isinstance(data, dict) else None

    def signature(self) -> str:
        """Text that changes whenever classes or prompts change (for model versions)."""
        return "|".join(f"{c}={';'.join(self.prompts[c])}" for c in self.classes)


def parse_label_config(xml: str) -> LabelConfig:
    """Find the ``<Choices>`` + ``<Image>`` pair in ``xml``; raise :class:`LabelConfigError` if none."""
    if not xml or not xml.strip():
        raise LabelConfigError("empty label config")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from exc
    images = {el.get("name"): el for el in root.iter("Image") if el.get("name")}
    if not images:
        raise LabelConfigError("label config has no <Image> tag: labeler classifies images")
    for choices in root.iter("Choices"):
        to_name = choices.get("toName")
        if to_name not in images:
            continue
        value = images[to_name].get("value", "")
        if not value.startswith("$"):
            raise LabelConfigError(f'<Image name="{to_name}"> must take its value from task data ("$key")')
        classes, prompts = [], {}
        for choice in choices.iter("Choice"):
            name = choice.get("value") or choice.get("alias")
            if not name:
                continue
            hint = (choice.get("hint") or "").strip()
            ps = tuple(p.strip() for p in hint.split(";") if p.strip()) if hint else ()
            classes.append(name)
            prompts[name] = ps or (DEFAULT_TEMPLATE.format(name),)
        if len(classes) < 2:
            raise LabelConfigError(f'<Choices name="{choices.get("name")}"> needs at least two <Choice> values')
        return LabelConfig(
            from_name=choices.get("name", "choice"), to_name=to_name, value_key=value[1:],
            classes=tuple(classes), prompts=prompts,
            multiple=choices.get("choice", "single") == "multiple",
        )
    raise LabelConfigError("label config has no <Choices> tag whose toName is an <Image>")
