"""How numpy drop masks reach a model, once: the framework-free half of ``MaskInjector`` and
``MaskedDropPath`` (``cream_torch_ref.train`` and its Paddle twin).

Drop-path layers are swapped for a masked subclass; the dropout before the classifier becomes a
forward pre-hook multiplying the classifier's input by a mask (both frameworks have
``register_forward_pre_hook`` with the same contract). A framework's classes supply the leaves:
its ``DropPath`` classes, how to list sub-layers, numpy to tensor, a dtype cast, the random
dropout rule and the classifier's input width. No framework import.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from cream_core.training.masks import MaskSpec, StepMasks

__all__ = ["MaskedForward", "MaskInjectorBase"]


class MaskedForward:
    """Mixin before a framework's ``DropPath``: its per-sample mask is given (``.mask``, shape
    (N,)) instead of drawn; without a mask it falls back to the layer's own random rule.

    The framework class supplies ``_cast(tensor, like)`` (``tensor`` in ``like``'s dtype).
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__(drop_prob, scale_by_keep)  # type: ignore[call-arg]
        self.mask: Any = None

    @staticmethod
    def _cast(tensor: Any, like: Any) -> Any:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:  # noqa: D102
        if not self.training or self.drop_prob == 0.0:  # type: ignore[attr-defined]
            return x
        if self.mask is None:
            return super().forward(x)  # type: ignore[misc]
        if int(self.mask.shape[0]) != int(x.shape[0]):
            raise RuntimeError(f"drop-path mask is for {self.mask.shape[0]} samples, the batch has "
                               f"{x.shape[0]}")
        return x * self._cast(self.mask.reshape([-1] + [1] * (x.ndim - 1)), x)


class MaskInjectorBase:
    """Feed numpy drop masks to a model: drop-path layers become ``masked_class``, and the dropout
    before the classifier becomes a pre-hook multiplying the classifier's input by a mask.

    ``set(masks)`` before each training forward; ``remove()`` restores the model (the swapped layers
    hold no weights, so the state dict never changes). The model's own dropout is switched off while
    the injector is installed; the mask follows its rule (kept units scaled by ``1/(1-p)``).
    """

    #: the framework's drop-path class (swapped) and its masked subclass
    drop_path_class: type
    masked_class: type

    def __init__(self, model: Any) -> None:
        self.model = model
        self._swapped: List[Tuple[Any, str, Any]] = []
        self.layers: List[Any] = []
        for name, layer in list(self._named_layers(model)):
            if type(layer) is self.drop_path_class:
                self._swap(name, layer)
            elif isinstance(layer, self.masked_class):
                self.layers.append(layer)
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))
        self.dropout_mask: Any = None
        model.drop_rate = 0.0  # the hook applies dropout instead of the model's forward
        self._hook = model.get_classifier().register_forward_pre_hook(self._dropout)

    # --- the framework half ---------------------------------------------------------------------
    @staticmethod
    def _named_layers(model: Any) -> Iterable[Tuple[str, Any]]:
        """Every sub-layer with its dotted name."""
        raise NotImplementedError

    @staticmethod
    def _tensor(array: np.ndarray) -> Any:
        """A tensor of a contiguous numpy array."""
        raise NotImplementedError

    @staticmethod
    def _features(classifier: Any) -> int:
        """The classifier's input width."""
        raise NotImplementedError

    @staticmethod
    def _random_dropout(x: Any, p: float) -> Any:
        """The model's own random dropout of ``x`` (training mode)."""
        raise NotImplementedError

    # --- built on it ----------------------------------------------------------------------------
    def _swap(self, name: str, layer: Any) -> None:
        parent_name, _, attr = name.rpartition(".")
        parent = self.model
        for part in (parent_name.split(".") if parent_name else []):
            parent = getattr(parent, part)
        new = self.masked_class(layer.drop_prob, layer.scale_by_keep)
        setattr(parent, attr, new)
        self._swapped.append((parent, attr, layer))
        self.layers.append(new)

    def spec(self) -> MaskSpec:
        """What the model drops: drop-path probabilities in model order and the dropout rate."""
        return MaskSpec(tuple(float(m.drop_prob) for m in self.layers), self.drop_rate,
                        int(self._features(self.model.get_classifier())))

    def set(self, masks: Optional[StepMasks]) -> None:
        """Use ``masks`` for the next forward (``None``: the layers' random rule)."""
        if masks is None:
            for layer in self.layers:
                layer.mask = None
            self.dropout_mask = None
            return
        if len(masks.drop_path) != len(self.layers):
            raise ValueError(f"{len(masks.drop_path)} drop-path masks for {len(self.layers)} "
                             "layers")
        for layer, m in zip(self.layers, masks.drop_path):
            layer.mask = None if m is None else self._tensor(np.ascontiguousarray(m))
        self.dropout_mask = None if masks.dropout is None else self._tensor(
            np.ascontiguousarray(masks.dropout))

    def _dropout(self, layer: Any, inputs: Tuple[Any, ...]) -> Optional[tuple]:
        if not self.model.training or self.drop_rate <= 0.0:
            return None
        x = inputs[0]
        if self.dropout_mask is None:
            return (self._random_dropout(x, self.drop_rate),) + tuple(inputs[1:])
        mask_shape = tuple(int(s) for s in self.dropout_mask.shape)
        if mask_shape != tuple(int(s) for s in x.shape):
            raise RuntimeError(f"dropout mask has shape {mask_shape}, the classifier input "
                               f"{tuple(int(s) for s in x.shape)}")
        return (x * self.masked_class._cast(self.dropout_mask, x),) + tuple(inputs[1:])

    def remove(self) -> None:
        """Put the original layers and the model's own dropout back."""
        self._hook.remove()
        for parent, attr, orig in self._swapped:
            setattr(parent, attr, orig)
        self.model.drop_rate = self.drop_rate
        self._swapped.clear()
