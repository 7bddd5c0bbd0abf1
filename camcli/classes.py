"""Class names and the mapping from folder names (ImageFolder labels) to class indices."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["ClassIndex", "imagenet_classes", "normalise_class_name"]


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
