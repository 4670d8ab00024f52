"""The Fréchet distance between Gaussians fitted to two feature sets (FID/FVD), in NumPy/SciPy.

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

computed in float64 the way the reference FID/FVD code does: `scipy.linalg.sqrtm`
of S1 S2, retried with `eps` added to both diagonals when the root is not
finite (singular covariances, e.g. fewer samples than dimensions), and the
imaginary part that round-off leaves in the root dropped when it is small.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) of features (N, D), N >= 2, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (num_samples, dim), got shape {features.shape}.")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {features.shape[0]}.")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means (D,).
        sigma1, sigma2: covariances (D, D).
        eps: added to both diagonals when sqrtm(sigma1 sigma2) is not finite.

    Raises:
        ValueError: mismatched shapes, or an imaginary part of the matrix root
            too large to be round-off (the covariances are not PSD).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"mismatched Gaussian shapes: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {sigma2.shape}.")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(dim) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if imaginary > 1e-3:
            raise ValueError(f"sqrtm(sigma1 sigma2) has an imaginary component of {imaginary:.3g}: "
                             f"the covariances are not positive semi-definite.")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fvd_from_features(features_a, features_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    With I3D features of generated and real clips this is FVD.
    """
    features_a, features_b = np.asarray(features_a), np.asarray(features_b)
    if features_a.ndim == 2 and features_b.ndim == 2 and features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature dims differ: {features_a.shape[1]} vs {features_b.shape[1]}.")
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
