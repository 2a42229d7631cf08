"""Image constants and makers for tests."""

from __future__ import annotations

#: ImageNet class indices of domestic cats (tabby, tiger cat, Persian,
#: Siamese, Egyptian cat).
CAT_CLASSES = frozenset(range(281, 286))
