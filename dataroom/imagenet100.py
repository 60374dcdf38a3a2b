"""ImageNet-100: the 100-class ImageNet subset of CMC (Tian et al. 2020) and solo-learn.

The class list ``dataroom/lists/imagenet100.txt`` is HobbitLong/CMC's ``imagenet100.txt``
(one WordNet id per line, commit bc687a2); solo-learn's
``solo/data/dataset_subset/imagenet100_classes.txt`` holds the same 100 ids in the same
order (space-separated). The dataset is those class folders of an ImageNet-1k root, read in
place (no copy, no symlinks): :func:`dataroom.readers.image_folder` with ``class_list``,
labels = index of the wnid in sorted order.
"""

from __future__ import annotations

from pathlib import Path

from dataroom.readers import FileSet, image_folder, imagenet_root

IMAGENET100_LIST = Path(__file__).resolve().parent / "lists" / "imagenet100.txt"
IMAGENET100_LAYOUT = (
    "ImageNet-100 over an ImageNet-1k folder: <root>/train/<wnid>/*.JPEG and "
    "<root>/val/<wnid>/*.JPEG for the 100 wnids of dataroom/lists/imagenet100.txt (other "
    "class folders are ignored; label = index of the wnid in sorted order)"
)


def imagenet100(root: str | Path = "", split: str = "train",
                class_list: str | Path | None = None, cache: str | None = None) -> FileSet:
    """ImageNet-100 ``train`` or ``val`` from an ImageNet root.

    Args:
        root: The ImageNet-1k folder (or an ImageNet-100 copy in the same layout); ``""`` =
            ``$SSLBENCH_IMAGENET``.
        split: ``"train"`` or ``"val"``.
        class_list: Another list file (default: the shipped CMC / solo-learn list).
        cache: Index cache folder (see ``dataroom.index.index_tree``).

    Raises:
        DatasetError: No such folder, or a listed class has no folder in the split.
    """
    return image_folder(imagenet_root(root), split, "imagenet100", IMAGENET100_LAYOUT,
                        class_list=class_list or IMAGENET100_LIST, cache=cache)
