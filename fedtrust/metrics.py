"""Image-similarity metrics for scoring reconstructions: SSIM, PSNR and MSE.

Every function takes images with pixel values in [0, 1], channels first as the
models see them: ``(C, H, W)`` with ``C`` in {1, 3}, or a 2-D ``(H, W)``
grayscale image. Torch tensors and NumPy arrays are both accepted.

SSIM is scikit-image's :func:`skimage.metrics.structural_similarity` with
``data_range=1``: RGB images are compared with ``channel_axis`` (the mean over
channels), grayscale images as 2-D arrays. Its default 7x7 uniform window is
used, which fits 28x28 and 32x32 images.

:func:`score_batch` scores a batch of reconstructions against the batch that was
really used. A batch gradient does not say which reconstruction is which image,
so each reconstruction is first matched to one ground-truth image by a Hungarian
assignment that maximises the total SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

ArrayLike = np.ndarray | torch.Tensor


def _as_hwc(image: ArrayLike) -> np.ndarray:
    """A float64 ``(H, W)`` (grayscale) or ``(H, W, 3)`` array from a channels-first image."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with C in {{1, 3}} or (H, W), got shape {arr.shape}")
    if arr.shape[0] == 1:
        return arr[0]
    return np.moveaxis(arr, 0, -1)


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_hwc(a), _as_hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    return x, y


def ssim(reconstruction: ArrayLike, truth: ArrayLike) -> float:
    """Structural similarity of two images in [0, 1] (1 = identical).

    Parameters
    ----------
    reconstruction, truth:
        ``(C, H, W)`` with ``C`` in {1, 3}, or ``(H, W)``; values in [0, 1].

    Returns
    -------
    float
        scikit-image's SSIM with ``data_range=1`` (``channel_axis`` for RGB).
    """
    x, y = _pair(reconstruction, truth)
    if x.ndim == 3:
        return float(structural_similarity(x, y, data_range=1.0, channel_axis=-1))
    return float(structural_similarity(x, y, data_range=1.0))


def mse(reconstruction: ArrayLike, truth: ArrayLike) -> float:
    """Mean squared error over all pixels and channels."""
    x, y = _pair(reconstruction, truth)
    return float(np.mean((x - y) ** 2))


def psnr(reconstruction: ArrayLike, truth: ArrayLike) -> float:
    """Peak signal-to-noise ratio in dB for a peak of 1 (``inf`` for identical images)."""
    err = mse(reconstruction, truth)
    return math.inf if err == 0.0 else float(10.0 * math.log10(1.0 / err))


def ssim_matrix(reconstructions: Sequence[ArrayLike] | ArrayLike,
                truths: Sequence[ArrayLike] | ArrayLike) -> np.ndarray:
    """SSIM of every reconstruction (rows) against every ground-truth image (columns)."""
    out = np.empty((len(reconstructions), len(truths)), dtype=np.float64)
    for i, rec in enumerate(reconstructions):
        for j, tru in enumerate(truths):
            out[i, j] = ssim(rec, tru)
    return out


def match_images(reconstructions: Sequence[ArrayLike] | ArrayLike,
                 truths: Sequence[ArrayLike] | ArrayLike) -> list[int]:
    """For each reconstruction, the index of its ground-truth image.

    A Hungarian assignment (:func:`scipy.optimize.linear_sum_assignment`) that
    maximises the total SSIM pairs reconstructions and ground-truth images one to
    one. When there are more reconstructions than ground-truth images, those left
    over are matched to the image they are most similar to.
    """
    sims = ssim_matrix(reconstructions, truths)
    if sims.size == 0:
        return [-1] * sims.shape[0]
    rows, cols = linear_sum_assignment(sims, maximize=True)
    matched = [int(j) for j in sims.argmax(axis=1)]
    for r, c in zip(rows, cols):
        matched[int(r)] = int(c)
    return matched


def score_image(reconstruction: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """``{"ssim", "psnr", "mse"}`` of one reconstruction against one image."""
    return {"ssim": ssim(reconstruction, truth), "psnr": psnr(reconstruction, truth),
            "mse": mse(reconstruction, truth)}


def score_batch(reconstructions: Sequence[ArrayLike] | ArrayLike,
                truths: Sequence[ArrayLike] | ArrayLike) -> list[dict[str, float | int]]:
    """Match reconstructions to ground-truth images, then score each pair.

    Parameters
    ----------
    reconstructions:
        ``(N, C, H, W)`` images in [0, 1] (or a sequence of ``(C, H, W)`` images).
    truths:
        ``(M, C, H, W)`` ground-truth images in [0, 1].

    Returns
    -------
    list of dict
        One dict per reconstruction, in order: ``index`` (the reconstruction),
        ``matched`` (the ground-truth index from :func:`match_images`), ``ssim``,
        ``psnr`` and ``mse``.
    """
    if len(truths) == 0:
        raise ValueError("score_batch needs at least one ground-truth image")
    matched = match_images(reconstructions, truths)
    return [{"index": i, "matched": j, **score_image(reconstructions[i], truths[j])}
            for i, j in enumerate(matched)]

