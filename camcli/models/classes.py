"""Class names and the mapping from folder names (ImageFolder labels) to class indices."""

from __future__ import annotations

import ast
import csv
import difflib
import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = [
    "ClassFileError",
    "ClassIndex",
    "TargetSpec",
    "imagenet_classes",
    "normalise_class_name",
    "parse_target",
    "parse_targets",
    "read_class_file",
]


def normalise_class_name(text: str) -> str:
    """Return the comparable form of a class name: lower case, ``_``/``-`` as spaces, one space.

    Args:
        text: a class name or a folder name.

    Returns:
        The normalised name; ``"Tiger_Cat"`` and ``"tiger cat"`` give the same string.

    """
    return re.sub(r"\s+", " ", text.replace("_", " ").replace("-", " ")).strip().lower()


@dataclass(frozen=True)
class ClassIndex:
    """The classes a model predicts, with every name a folder may use for them.

    Attributes:
        names: display name per class index (e.g. ``"tiger cat"``).
        wordnet_ids: WordNet id per class index (``"n02123159"``), empty when unknown.
        aliases: extra names per class index (WordNet lemmas such as ``"tabby cat"``).

    """

    names: Sequence[str]
    wordnet_ids: Sequence[str] = ()
    aliases: Sequence[Sequence[str]] = ()
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup: dict[str, int] = {}
        # Later entries must not override earlier, more specific ones: display names first,
        # then WordNet ids, then lemma aliases.
        for index, name in enumerate(self.names):
            lookup.setdefault(normalise_class_name(name), index)
        for index, wnid in enumerate(self.wordnet_ids):
            lookup.setdefault(wnid.lower(), index)
        for index, names in enumerate(self.aliases):
            for alias in names:
                lookup.setdefault(normalise_class_name(alias), index)
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        return len(self.names)

    def resolve(self, text: str) -> int | None:
        """Find the class a label names: an index, a WordNet id or a (case-insensitive) name.

        Args:
            text: a folder name or a user-given class, e.g. ``"281"``, ``"n02123045"``,
                ``"Egyptian_cat"``.

        Returns:
            The class index, or ``None`` when the text names no class.

        """
        stripped = text.strip()
        if stripped.isdigit():
            index = int(stripped)
            return index if 0 <= index < len(self.names) else None
        return self._lookup.get(normalise_class_name(stripped)) if stripped else None

    def name(self, index: int) -> str:
        """Return the display name of a class index."""
        return self.names[index]

    @classmethod
    def numbered(cls, count: int) -> ClassIndex:
        """Classes without names (a fine-tuned head): ``class_0`` ... ``class_{count-1}``."""
        return cls(names=[f"class_{i}" for i in range(count)])


@lru_cache(maxsize=1)
def imagenet_classes() -> ClassIndex:
    """The 1000 ImageNet-1k classes, with WordNet ids and lemma aliases, loaded offline.

    Display names come from torchvision's weight metadata (``_IMAGENET_CATEGORIES`` in
    ``torchvision/models/_meta.py``), WordNet ids and lemmas from the tables that ship inside
    timm (``timm/data/_info``, what ``timm.data.ImageNetInfo`` reads); both are in the standard
    index order. The files are read where the packages are installed, without importing them
    (and torch), so that a ``--target`` typo is refused before anything heavy loads.

    Raises:
        LookupError: when torchvision's or timm's files are not where they should be.
    """
    meta = _package_file("torchvision", "models", "_meta.py").read_text(encoding="utf-8")
    start = meta.index("_IMAGENET_CATEGORIES = [")
    end = meta.index("]", start)
    names = ast.literal_eval(meta[start + len("_IMAGENET_CATEGORIES = ") : end + 1])
    info = _package_file("timm", "data", "_info")
    wnids = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
    lines = (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
    lemmas = dict(csv.reader(lines, delimiter="\t"))
    if len(names) != 1000 or len(wnids) != 1000:
        raise LookupError(f"ImageNet tables of {len(names)} names and {len(wnids)} WordNet ids")
    aliases = [[part.strip() for part in lemmas[wnid].split(",") if part.strip()] for wnid in wnids]
    return ClassIndex(names=names, wordnet_ids=wnids, aliases=aliases)


def _package_file(package: str, *parts: str) -> Path:
    """A file or folder inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"{package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise LookupError(f"{path} is missing")
    return path


@dataclass(frozen=True)
class TargetSpec:
    """Which class to explain: the top-1 prediction, the folder label, or a fixed class."""

    mode: Literal["pred", "label", "class"]
    index: int | None = None


def parse_target(text: str, classes: ClassIndex) -> TargetSpec:
    """Read ``--target``: ``pred``, ``label``, a class index or a class name.

    Raises:
        ValueError: when the text names no class of the model.

    """
    value = text.strip()
    if value.lower() in ("pred", "label"):
        return TargetSpec(value.lower())  # type: ignore[arg-type]
    if value.lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < len(classes):
            raise ValueError(f"class index {index} is out of range 0-{len(classes) - 1}")
        return TargetSpec("class", index)
    index_or_none = classes.resolve(value)
    if index_or_none is None:
        close = difflib.get_close_matches(value, list(classes.names), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"{value!r} is not 'pred', 'label', a class index or a class name of this model{hint}"
        )
    return TargetSpec("class", index_or_none)


def parse_targets(
    text: str, parse: Callable[[str], TargetSpec]
) -> tuple[TargetSpec, tuple[TargetSpec, ...]]:
    """Read ``--target``: one target, or several separated by commas (``pred,label``).

    The whole text is tried as one target first, so a class name holding a comma still
    works. Repeats are dropped.

    Returns:
        The first target and the further ones.

    Raises:
        ValueError: naming the part that is no target.

    """
    try:
        return parse(text), ()
    except ValueError:
        if "," not in text:
            raise
    specs = list(dict.fromkeys(parse(part) for part in text.split(",") if part.strip()))
    if not specs:
        raise ValueError(f"{text!r} names no target")
    return specs[0], tuple(specs[1:])


class ClassFileError(ValueError):
    """A ``--classes`` file that cannot be read as class names."""


def read_class_file(path: Path) -> list[str]:
    """Read class names: one per line, a JSON list, or a JSON object of index -> name.

    Blank lines and lines starting with ``#`` are ignored in the text form. A JSON object
    (``{"0": "cat", "1": "dog"}``, as ``idx_to_class`` dumps) must cover every index from 0.

    Args:
        path: the file.

    Returns:
        The names in index order.

    Raises:
        ClassFileError: when the file cannot be read, is empty, or its indices have gaps.

    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassFileError(f"cannot read {path}: {exc}") from None
    stripped = text.strip()
    names: list[str]
    if stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ClassFileError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, list):
            names = [str(name) for name in data]
        elif isinstance(data, dict):
            try:
                by_index = {int(key): str(value) for key, value in data.items()}
            except ValueError:
                raise ClassFileError(
                    f'{path} maps keys that are not class indices (want {{"0": "name"}})'
                ) from None
            missing = [i for i in range(len(by_index)) if i not in by_index]
            if missing:
                raise ClassFileError(f"{path} has no name for class index {missing[0]}")
            names = [by_index[i] for i in range(len(by_index))]
        else:
            raise ClassFileError(f"{path} holds JSON that is neither a list nor an object")
    else:
        names = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    if not names:
        raise ClassFileError(f"{path} names no classes")
    return names
