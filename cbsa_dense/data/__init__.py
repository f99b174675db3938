"""LightningDataModules: ADE20K, COCO, your folders, and the generated demo sets. Every datamodule declares
``num_classes``; the CLI links it into the task.

The names below are imported from their modules on first use (:mod:`cbsa_dense.lazy`): a segmentation
checkpoint does not import the COCO datamodule, and the CLI imports them all.
"""

from __future__ import annotations

from cbsa_dense.lazy import lazy_namespace

#: Public name -> the module defining it.
_HOMES = {
    "ADE20KDataModule": "cbsa_dense.data.ade20k",
    "COCODetectionDataModule": "cbsa_dense.data.coco_datamodule",
    "DemoDetectionDataModule": "cbsa_dense.data.demo_det",
    "DemoSegDataModule": "cbsa_dense.data.demo_seg",
    "PredictImagesDataModule": "cbsa_dense.data.predict_images",
    "SegDataModule": "cbsa_dense.data.seg_datamodule",
    "SegFolderDataModule": "cbsa_dense.data.seg_folder",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_namespace(__name__, _HOMES)
