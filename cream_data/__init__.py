"""Framework-free evaluation data pipeline: the official Cream eval preprocessing with PIL + numpy.

Nothing here imports torch or paddle, so worker processes stay light and both frameworks receive the
very same float32 input. The retraining side (``train_transforms``, ``train_loader``,
``train_masks``, ``train_loop``) is imported by module path.
"""
from .datasets import (IMG_EXTENSIONS, LAYOUTS, ImageDataset, Sample, class_folder, file_dataset,
                       imagenet_folder, list_file, natural_key, open_dataset, open_train_val)
from .embedded import make_imagenet_layout, sample_files, samples_dir, write_list_file
from .errors import BadDataError, BadItem
from .evaluation import (TOPK, EvalAccumulator, EvalResult, ForwardFn, cross_entropy,
                         iterate_normalized, progress_bar, run_evaluation, topk_indices)
from .imagenet import (IMAGENET_NUM_CLASSES, class_name, imagenet_class_names, imagenet_wnids,
                       is_wnid_shaped, wnid_to_index)
from .report import atomic_write_text, write_json
from .loader import DEFAULT_BATCH_SIZE, Batch, EvalLoader, default_workers
from .val_inputs import EVAL_LAYOUTS, TarMember, open_eval_data
from .val_labels import LabelFileError, read_labels
from .transforms import (DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_DEFAULT_MEAN,
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
