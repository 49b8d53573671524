"""Zero-shot prompt templates and class-name sets, by name or from a file.

A template is a function `classname -> prompt`, the form open_clip's
`zero_shot_metadata` uses, so its sets are used as they are (not copied). Templates
from files are lines with a `{c}` (or `{}`) placeholder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from flip.data.synth import ZEROSHOT_TEMPLATES
from flip.errors import DataError
from flip.eval.datasets import read_lines

Template = Callable[[str], str]


def from_strings(lines: Sequence[str], source: str = "templates") -> list[Template]:
    """`{c}`/`{}` format strings -> templates; a line without a placeholder is an error."""
    templates = []
    for n, line in enumerate(lines, start=1):
        if "{c}" not in line and "{}" not in line:
            raise DataError(f"{source} line {n} has no {{c}} or {{}} placeholder: {line!r}")
        # One placeholder per line, replaced in one pass: a class name holding "{}" stays as it is.
        mark = "{c}" if "{c}" in line else "{}"
        templates.append(lambda c, t=line, mark=mark: t.replace(mark, c))
    return templates


TEMPLATE_SETS: dict[str, tuple[str, Sequence[Template]]] = {
    "simple": ("the 7 ImageNet templates the FLIP paper used (open_clip SIMPLE_IMAGENET_TEMPLATES)",
               SIMPLE_IMAGENET_TEMPLATES),
    "openai": ("CLIP's 80 ImageNet templates (open_clip OPENAI_IMAGENET_TEMPLATES)", OPENAI_IMAGENET_TEMPLATES),
    "builtin": ("the built-in zero-shot set's own templates", from_strings(ZEROSHOT_TEMPLATES, "built-in")),
}
CLASSNAME_SETS: dict[str, Sequence[str]] = {"imagenet": IMAGENET_CLASSNAMES}


def resolve_templates(spec: str | None, dataset_templates: Sequence[str] | None) -> tuple[str, list[Template]]:
    """(name, templates) for `--templates`: a set name, `dataset`, or a file.

    Default: the templates shipped with the data, else the paper's 7 simple ones.
    """
    if spec is None:
        spec = "dataset" if dataset_templates else "simple"
    if spec == "dataset":
        if not dataset_templates:
            raise DataError("--templates dataset: the data ships no templates file "
                            "(zeroshot_classification_templates.txt or templates.txt)")
        return "dataset", from_strings(dataset_templates, "the data's templates file")
    if spec in TEMPLATE_SETS:
        return spec, list(TEMPLATE_SETS[spec][1])
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--templates {spec!r} is neither a file nor one of: "
                        f"{', '.join([*TEMPLATE_SETS, 'dataset'])}")
    return str(path), from_strings(read_lines(path, "templates file"), str(path))


def resolve_classnames(spec: str) -> list[str]:
    """Class names for `--classnames`: a set name (`imagenet`) or a file with one name per line."""
    if spec in CLASSNAME_SETS:
        return list(CLASSNAME_SETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--classnames {spec!r} is neither a file nor one of: {', '.join(CLASSNAME_SETS)}")
    return read_lines(path, "class names file")


def as_text(templates: Sequence[Template]) -> list[str]:
    """Templates written with a `{c}` placeholder, for reports."""
    return [t("{c}") for t in templates]
