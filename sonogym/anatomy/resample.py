"""Resampling of ``[x, y, z]`` volumes onto an isotropic grid that keeps voxel (0, 0, 0) in place.

HU is interpolated linearly. Labels are interpolated "smoothly" by default: each structure's
binary mask is resampled linearly inside its bounding box and every output voxel takes the label
with the largest value (0.5 or more), so that upsampling a 2.5 mm label map to 1 mm gives smooth
boundaries instead of a staircase. ``"nearest"`` is available too.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def output_shape(shape: tuple[int, ...], spacing_in_m: np.ndarray, spacing_out_m: float) -> tuple[int, int, int]:
    """Number of output voxels per axis that fit inside the input extent."""
    extent = (np.asarray(shape) - 1) * np.asarray(spacing_in_m)
    return tuple(int(n) for n in np.floor(extent / spacing_out_m + 1e-6).astype(int) + 1)


def resample(array: np.ndarray, spacing_in_m: np.ndarray, spacing_out_m: float, *, linear: bool, shape_out=None) -> np.ndarray:
    """Resample an ``[x, y, z]`` array; output voxel i sits at i * spacing_out in input metres."""
    shape_out = shape_out or output_shape(array.shape, spacing_in_m, spacing_out_m)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing_in_m))
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(
        image, [int(n) for n in shape_out], sitk.Transform(), interpolator,
        (0.0, 0.0, 0.0), (float(spacing_out_m),) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def resample_labels(labels: np.ndarray, spacing_in_m: np.ndarray, spacing_out_m: float, *, smooth: bool = True) -> np.ndarray:
    """Resample a uint8 label map ``[x, y, z]``; see the module docstring for ``smooth``."""
    shape_out = output_shape(labels.shape, spacing_in_m, spacing_out_m)
    if not smooth:
        return resample(labels, spacing_in_m, spacing_out_m, linear=False, shape_out=shape_out).astype(np.uint8)
    spacing_in_m = np.asarray(spacing_in_m, dtype=np.float64)
    out = np.zeros(shape_out, dtype=np.uint8)
    best = np.full(shape_out, 0.5, dtype=np.float32)  # a label must cover at least half a voxel
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    objects = _bounding_boxes(labels)
    for label in present[present > 0]:
        box_in = objects[label - 1]
        lo = np.array([max(s.start - 1, 0) for s in box_in])
        hi = np.array([min(s.stop + 1, n) for s, n in zip(box_in, labels.shape)])
        # output voxels whose centres fall inside [lo, hi - 1] input voxels
        lo_out = np.ceil(lo * spacing_in_m / spacing_out_m - 1e-6).astype(int)
        hi_out = np.minimum(np.floor((hi - 1) * spacing_in_m / spacing_out_m + 1e-6).astype(int) + 1, shape_out)
        if np.any(hi_out <= lo_out):
            continue
        crop = (labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == label).astype(np.float32)
        image = sitk.GetImageFromArray(np.ascontiguousarray(crop.transpose(2, 1, 0)))
        image.SetSpacing(tuple(spacing_in_m))
        image.SetOrigin(tuple(lo * spacing_in_m))
        size = hi_out - lo_out
        res = sitk.Resample(
            image, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear,
            tuple(float(v) for v in lo_out * spacing_out_m), (float(spacing_out_m),) * 3,
            (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, sitk.sitkFloat32,
        )
        value = sitk.GetArrayFromImage(res).transpose(2, 1, 0)
        region = tuple(slice(a, b) for a, b in zip(lo_out, hi_out))
        wins = value > best[region]
        best[region][wins] = value[wins]
        out[region][wins] = label
    return out


def _bounding_boxes(labels: np.ndarray) -> list:
    """Bounding-box slices per label id 1..max (None for absent ids), from scipy.ndimage."""
    from scipy import ndimage

    return ndimage.find_objects(labels)
