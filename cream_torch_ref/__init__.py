"""PyTorch reference of Cream (NeurIPS 2020): the official child nets on current torch and timm."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_official_checkpoint
from .childnet import ChildNet
from .models import create_model, list_models, load_weights, seeded_official_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint", "save_official_checkpoint",
           "ChildNet", "create_model", "list_models", "load_weights", "seeded_official_checkpoint"]
