"""LightningDataModules: ADE20K, COCO, your folders, and the generated demo sets. Every datamodule declares
``num_classes``; the CLI links it into the task."""

from cbsa_dense.data.ade20k import ADE20KDataModule
from cbsa_dense.data.coco_datamodule import COCODetectionDataModule
from cbsa_dense.data.demo_det import DemoDetectionDataModule
from cbsa_dense.data.demo_seg import DemoSegDataModule
from cbsa_dense.data.predict_images import PredictImagesDataModule
from cbsa_dense.data.seg_datamodule import SegDataModule
from cbsa_dense.data.seg_folder import SegFolderDataModule

__all__ = ["ADE20KDataModule", "COCODetectionDataModule", "DemoDetectionDataModule", "DemoSegDataModule",
           "PredictImagesDataModule", "SegDataModule", "SegFolderDataModule"]
