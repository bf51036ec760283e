"""Held-out photos: scikit-image's bundled pictures as model-sized images.

They are real photographs that no data set split contains, so an attack that does well
on them is not exploiting anything about the training data's distribution. Nothing is
downloaded: only the pictures scikit-image ships are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage import data as skdata
from skimage.color import rgb2gray
from skimage.transform import resize

#: Bundled pictures, in the order :func:`photos` takes them.
PHOTO_NAMES = ("astronaut", "camera", "chelsea", "coffee", "clock", "coins", "moon", "rocket",
               "horse", "page", "text", "brick")


def photos(count: int, size: int, channels: int, names: Sequence[str] = PHOTO_NAMES) -> torch.Tensor:
    """The first ``count`` pictures as ``(count, channels, size, size)`` floats in [0, 1].

    Colour pictures become grey for one channel (luminance); grey ones are repeated for three.
    """
    if not 1 <= count <= len(names):
        raise ValueError(f"count={count!r} is not allowed; allowed: 1 to {len(names)} photos")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r} is not allowed; allowed: 1, 3")
    out = []
    for name in names[:count]:
        img = np.asarray(getattr(skdata, name)(), dtype=np.float64)
        img = img / 255.0 if img.max() > 1.0 else img
        if img.ndim == 3:
            img = img[..., :3]
            img = rgb2gray(img)[..., None] if channels == 1 else img
        else:
            img = np.repeat(img[..., None], channels, axis=-1)
        small = resize(img, (size, size, channels), anti_aliasing=True)
        out.append(torch.tensor(small, dtype=torch.float32).permute(2, 0, 1).clamp(0.0, 1.0))
    return torch.stack(out)
