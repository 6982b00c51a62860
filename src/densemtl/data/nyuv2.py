"""NYUv2 in MTAN's preprocessed layout (SPEC 1.1): 13 classes, depth in metres, surface normals.

``ROOT/{train,val}/{image,label,depth,normal}/{i}.npy``; images HxWx3 in [0,1], labels HxW with
-1 = unlabelled, depth HxWx1 with 0 = invalid, normals HxWx3 (unit, all-zero = invalid).
Normals are in the camera frame x right, y down, z forward, pointing towards the camera (a floor
seen from above has normal about (0, -1, 0)).
"""

from __future__ import annotations

from . import DatasetInfo, register_dataset
from .layout import NpyLayoutDataset

NYUV2_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
    "tv", "wall", "window",
)
NYUV2_TASKS = ("semantic", "depth", "normal")


@register_dataset("nyuv2", description="NYUv2, MTAN's 13-class 288x384 layout (795 train / 654 val)")
class NYUv2Dataset(NpyLayoutDataset):
    @classmethod
    def info_for(cls) -> DatasetInfo:
        return DatasetInfo(variant="nyuv2", tasks=NYUV2_TASKS, num_classes=len(NYUV2_CLASSES),
                           class_names=NYUV2_CLASSES, size=(288, 384), derived_tasks=("edge",))
