"""ImageNet weights for the backbones (``model.pretrained: imagenet``), fetched by the libraries' own loaders."""
from __future__ import annotations

import textwrap
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class PretrainedUnavailable(RuntimeError):
    """The ImageNet weights could not be downloaded (an offline machine) or the local copy does not load."""


def with_imagenet_weights(load: Callable[[], T], file: Optional[str], what: str, download: str) -> T:
    """Run ``load`` (a library's weight loading: from ``file``, or downloading ``download`` when file is None);
    whatever it raises becomes one PretrainedUnavailable saying what to do, with the library's error kept as the
    cause. The libraries fail in many ways offline (hub, HTTP and cache errors), hence the broad except."""
    try:
        return load()
    except Exception as e:
        cause = textwrap.shorten(f"{type(e).__name__}: {e}", 400)
        if file is not None:
            raise PretrainedUnavailable(f"model.pretrained_file: {file} does not load as the ImageNet weights of "
                                        f"{what} ({cause})") from e
        raise PretrainedUnavailable(
            f"model.pretrained: the ImageNet weights of {what} could not be downloaded ({cause}). On a machine "
            f"without network access, download {download} elsewhere and set model.pretrained_file to its local "
            f"path") from e
