"""Reading CT and label volumes through SimpleITK, with checks that name the file and the fix.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and a DICOM series directory. Every volume is reoriented once, here, to the SonoGym
patient frame (LPS, see :mod:`sonogym.anatomy.patient`) and returned as a numpy array indexed
``[x, y, z]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sonogym.errors import DataError

SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) or a DICOM series directory"


@dataclass(frozen=True)
class Volume:
    """A 3-D image in the LPS patient frame.

    Attributes:
        array: voxel values, shape (X, Y, Z); axis 0 points to the patient's left, axis 1 posterior,
            axis 2 superior.
        spacing_m: voxel size along x, y, z [m], shape (3,).
        origin_m: scanner (LPS) position of the centre of voxel (0, 0, 0) [m], shape (3,).
        path: the file it came from.
    """

    array: np.ndarray
    spacing_m: np.ndarray
    origin_m: np.ndarray
    path: str


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one 3-D scalar image (file or DICOM series directory) with clear errors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path, or run `sonogym fetch` for catalog patients.")
    if path.suffix == ".gz":
        _check_gzip(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise DataError(f"{path}: directory holds no DICOM series. Point to a folder of .dcm slices or to a single volume file.")
            if len(series) > 1:
                raise DataError(f"{path}: directory holds {len(series)} DICOM series ({', '.join(series)}); put one series per folder.")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(
            f"{path}: cannot read the image ({first_line}). The file is corrupt, truncated or not a supported format: "
            f"use {SUPPORTED_FORMATS}."
        ) from None
    if image.GetDimension() != 3:
        raise DataError(
            f"{path}: expected a 3-D volume, got a {image.GetDimension()}-D image of size {image.GetSize()}. "
            "Pass a single 3-D volume (split a 4-D series into 3-D volumes; stack 2-D slices into a series)."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} components "
            "(an RGB or vector image). Convert it to a scalar volume first."
        )
    if min(image.GetSize()) < 2:
        raise DataError(f"{path}: volume of size {image.GetSize()} is too thin to be a 3-D scan; expected at least 2 voxels on every axis.")
    return image


def _check_gzip(path: Path) -> None:
    """Decompress a ``.gz`` file once to catch truncation: SimpleITK reads a truncated NIfTI silently."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(
            f"{path}: cannot read the image (gzip stream broken: {err}). The file is corrupt or truncated "
            "(an interrupted download?); fetch or export it again."
        ) from None


def to_lps_volume(image: sitk.Image, path: str | os.PathLike) -> Volume:
    """Reorient to LPS (identity direction) and convert to an ``[x, y, z]`` numpy array."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(np.abs(direction) @ np.ones(3), 1.0, atol=1e-3):
        raise DataError(
            f"{path}: oblique image orientation (direction {np.round(direction, 3).tolist()}) is not supported; "
            "resample it onto an axis-aligned grid first (e.g. with SimpleITK.Resample)."
        )
    oriented = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(oriented).transpose(2, 1, 0)  # sitk gives [z, y, x]
    return Volume(
        array=np.ascontiguousarray(array),
        spacing_m=np.asarray(oriented.GetSpacing(), dtype=np.float64) * 1e-3,
        origin_m=np.asarray(oriented.GetOrigin(), dtype=np.float64) * 1e-3,
        path=str(path),
    )


def check_same_grid(ct: sitk.Image, labels: sitk.Image, ct_path: str | os.PathLike, labels_path: str | os.PathLike) -> None:
    """Raise if the CT and label images do not share size, spacing, origin and direction."""
    fix = "Resample the label map onto the CT grid (TotalSegmentator writes its output on the input CT's grid)."
    checks = [
        ("size", ct.GetSize(), labels.GetSize(), 0.0),
        ("spacing [mm]", ct.GetSpacing(), labels.GetSpacing(), 1e-4 * max(ct.GetSpacing())),
        ("origin [mm]", ct.GetOrigin(), labels.GetOrigin(), 1e-2 * min(ct.GetSpacing())),
        ("direction", ct.GetDirection(), labels.GetDirection(), 1e-4),
    ]
    for what, a, b, tol in checks:
        if not np.allclose(a, b, rtol=0.0, atol=tol):
            raise DataError(
                f"CT {ct_path} and labels {labels_path} have different {what}: "
                f"{np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}. {fix}"
            )


def label_array(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Check that a label array holds integer ids in 0..255 and return it as uint8."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(
                f"{path}: label map holds non-integer values (e.g. {array[array != np.round(array)][:3].tolist()}); "
                "a label map must store integer class ids. Did you pass the CT as the labels?"
            )
    elif array.dtype.kind not in "iub":
        raise DataError(f"{path}: label map has pixel type {array.dtype}; expected integer class ids.")
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise DataError(
            f"{path}: label ids must lie in 0..255 (TotalSegmentator v2 uses 1..117), found {lo}..{hi}. "
            "Did you pass the CT as the labels?"
        )
    return array.astype(np.uint8, copy=False)


def spacing_array(spacing_m) -> np.ndarray:
    """Voxel size [m] as a float64 array of shape (3,) from a float or a triple, checked."""
    spacing = np.broadcast_to(np.asarray(spacing_m, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DataError(f"voxel spacing must be positive and finite, got {spacing.tolist()} m.")
    if np.any(spacing > 0.05):
        raise DataError(
            f"voxel spacing {spacing.tolist()} m is invalid: larger than 5 cm. Spacing is in metres "
            "(divide a spacing in millimetres by 1000)."
        )
    return spacing


def read_ct_and_labels(ct_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[Volume, Volume]:
    """Read a CT [HU] and its label map, check they share one grid, and return both in LPS.

    Returns:
        (ct, labels): ``ct.array`` float32 [HU], ``labels.array`` uint8 TotalSegmentator ids,
        both shape (X, Y, Z) on the same grid.
    """
    ct_image = read_image(ct_path)
    labels_image = read_image(labels_path)
    check_same_grid(ct_image, labels_image, ct_path, labels_path)
    ct = to_lps_volume(ct_image, ct_path)
    labels = to_lps_volume(labels_image, labels_path)
    hu = ct.array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(hu)):
        raise DataError(f"{ct_path}: CT holds NaN or infinite values; replace them (e.g. with -1000 HU, air) first.")
    return (
        Volume(hu, ct.spacing_m, ct.origin_m, ct.path),
        Volume(label_array(labels.array, labels_path), labels.spacing_m, labels.origin_m, labels.path),
    )
