"""Framework-free evaluation data pipeline: the official Cream eval preprocessing with PIL + numpy.

Nothing here imports torch or paddle, so worker processes stay light and both frameworks receive the
very same float32 input. The retraining side (``train_transforms``, ``train_loader``,
``train_masks``, ``train_loop``) is imported by module path.
"""
from cream_core.data.datasets import (IMG_EXTENSIONS, LAYOUTS, ImageDataset, Sample, class_folder, file_dataset,
                       imagenet_folder, list_file, natural_key, open_dataset, open_train_val)
from cream_core.data.embedded import make_imagenet_layout, sample_files, samples_dir, write_list_file
from cream_core.data.errors import BadDataError, BadItem
from cream_core.data.evaluation import (TOPK, EvalAccumulator, EvalResult, ForwardFn, cross_entropy,
                         iterate_normalized, progress_bar, run_evaluation, topk_indices)
from cream_core.data.imagenet import (IMAGENET_NUM_CLASSES, class_name, imagenet_class_names, imagenet_wnids,
                       is_wnid_shaped, wnid_to_index)
from cream_core.data.report import atomic_write_text, write_json
from cream_core.data.loader import DEFAULT_BATCH_SIZE, Batch, EvalLoader, default_workers
from cream_core.data.val_inputs import EVAL_LAYOUTS, TarMember, open_eval_data
from cream_core.data.val_labels import LabelFileError, read_labels
from cream_core.data.transforms import (DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_DEFAULT_MEAN,
                         IMAGENET_DEFAULT_STD, EvalTransform, center_crop, eval_crop, normalize,
                         open_image, resize_shorter, scale_size, to_chw_uint8)

__all__ = [
    "IMG_EXTENSIONS", "LAYOUTS", "ImageDataset", "Sample", "class_folder", "file_dataset",
    "imagenet_folder", "list_file", "natural_key", "open_dataset", "open_train_val",
    "make_imagenet_layout", "sample_files", "samples_dir", "write_list_file",
    "BadDataError", "BadItem",
    "TOPK", "EvalAccumulator", "EvalResult", "ForwardFn", "progress_bar", "cross_entropy",
    "iterate_normalized", "run_evaluation",
    "topk_indices",
    "IMAGENET_NUM_CLASSES", "class_name", "imagenet_class_names", "imagenet_wnids",
    "is_wnid_shaped", "wnid_to_index",
    "atomic_write_text", "write_json",
    "DEFAULT_BATCH_SIZE", "Batch", "EvalLoader", "default_workers",
    "DEFAULT_CROP_PCT", "DEFAULT_INTERPOLATION", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
    "EvalTransform", "center_crop", "eval_crop", "normalize", "open_image", "resize_shorter",
    "scale_size", "to_chw_uint8",
    "EVAL_LAYOUTS", "TarMember", "open_eval_data", "LabelFileError", "read_labels",
]
