"""Class names and the mapping from folder names (ImageFolder labels) to class indices."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = [
    "ClassFileError",
    "ClassIndex",
    "imagenet_classes",
    "normalise_class_name",
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

    Display names come from torchvision's weight metadata, WordNet ids and lemmas from the
    tables that ship inside timm; both are in the standard index order.
    """
    from timm.data import ImageNetInfo
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(len(names))]
    aliases = [
        [part.strip() for part in info.index_to_description(i).split(",") if part.strip()]
        for i in range(len(names))
    ]
    return ClassIndex(names=names, wordnet_ids=wnids, aliases=aliases)


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
