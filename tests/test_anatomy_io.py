"""Reading volumes: formats, orientation to LPS, and every bad input with a clear error."""

import numpy as np
import pytest
import SimpleITK as sitk

from sonogym.anatomy.io import read_ct_and_labels
from sonogym.anatomy.patient import Patient
from sonogym.errors import DataError


def torso_arrays(shape=(40, 36, 30)):
    """A box of soft tissue (40 HU) in air with a bright 'spine' bar labelled L3 (id 29); [x, y, z] LPS."""
    hu = np.full(shape, -1000, np.int16)
    hu[5:-5, 5:-5, :] = 40
    labels = np.zeros(shape, np.uint8)
    labels[17:23, 22:27, :] = 29
    hu[labels > 0] = 700
    return hu, labels


def write_pair(tmp_path, ext, hu, labels, spacing_mm=(2.0, 2.0, 2.0), direction=None):
    """Write hu/labels given in [x, y, z] LPS to files of one format; returns both paths."""
    paths = []
    for name, arr in (("ct", hu), ("labels", labels)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        image.SetSpacing(spacing_mm)
        image.SetOrigin((-10.0, 20.0, 30.0))
        if direction is not None:
            image.SetDirection(direction)
        path = tmp_path / f"{name}{ext}"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_formats_round_trip(tmp_path, ext):
    hu, labels = torso_arrays()
    ct_path, labels_path = write_pair(tmp_path, ext, hu, labels, spacing_mm=(2.0, 2.5, 3.0))
    ct, lab = read_ct_and_labels(ct_path, labels_path)
    np.testing.assert_array_equal(ct.array, hu)
    np.testing.assert_array_equal(lab.array, labels)
    np.testing.assert_allclose(ct.spacing_m, [0.002, 0.0025, 0.003])
    assert lab.array.dtype == np.uint8


def test_dicom_series_directory(tmp_path):
    hu, labels = torso_arrays((24, 20, 6))
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    image.SetSpacing((1.0, 1.0, 2.0))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[2]):
        slice_ = image[:, :, k]
        slice_.SetMetaData("0020|0032", f"0\\0\\{2.0 * k}")  # image position (patient)
        slice_.SetMetaData("0020|0013", str(k))  # instance number
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")  # orientation
        slice_.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    labels_path = tmp_path / "labels.nii.gz"
    lab_image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    lab_image.CopyInformation(series)
    sitk.WriteImage(lab_image, str(labels_path))
    ct, lab = read_ct_and_labels(folder, labels_path)
    assert ct.array.shape == hu.shape
    np.testing.assert_allclose(ct.array, hu, atol=1)
    np.testing.assert_allclose(ct.spacing_m[2], 0.002)


def test_ras_file_is_reoriented_to_lps(tmp_path):
    """A RAS-oriented file (x to the right, y anterior) comes out with the same anatomy in LPS."""
    hu, labels = torso_arrays()
    hu[30:35, 10:12, :] = 300  # a marker on the patient's left (+x), anterior (low y)
    ras_hu = hu[::-1, ::-1, :]  # re-index so that +i points right and +j anterior
    ras_labels = labels[::-1, ::-1, :]
    ct_path, labels_path = write_pair(tmp_path, ".nii.gz", ras_hu, ras_labels, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    ct, lab = read_ct_and_labels(ct_path, labels_path)
    np.testing.assert_array_equal(ct.array, hu)
    np.testing.assert_array_equal(lab.array, labels)


def test_missing_file(tmp_path):
    hu, labels = torso_arrays()
    ct_path, _ = write_pair(tmp_path, ".nii.gz", hu, labels)
    with pytest.raises(DataError, match="missing.nii.gz: file not found"):
        read_ct_and_labels(ct_path, tmp_path / "missing.nii.gz")


def test_corrupt_file(tmp_path):
    hu, labels = torso_arrays()
    ct_path, labels_path = write_pair(tmp_path, ".nii.gz", hu, labels)
    data = ct_path.read_bytes()
    ct_path.write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(DataError, match=r"ct\.nii\.gz: cannot read the image.*corrupt"):
        read_ct_and_labels(ct_path, labels_path)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.nii.gz"):
        read_ct_and_labels(junk, labels_path)


@pytest.mark.parametrize("dims", [2, 4])
def test_wrong_dimension(tmp_path, dims):
    hu, labels = torso_arrays()
    _, labels_path = write_pair(tmp_path, ".nii.gz", hu, labels)
    arr = np.zeros((20, 20), np.int16) if dims == 2 else np.zeros((3, 10, 12, 14), np.int16)
    bad = tmp_path / f"bad{dims}d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(bad))
    with pytest.raises(DataError, match=f"expected a 3-D volume, got a {dims}-D image"):
        read_ct_and_labels(bad, labels_path)


@pytest.mark.parametrize(
    "what, change",
    [
        ("size", lambda im: sitk.ConstantPad(im, (0, 0, 0), (0, 0, 1), 0)),
        ("spacing", lambda im: _with(im, spacing=(2.0, 2.0, 2.5))),
        ("origin", lambda im: _with(im, origin=(-10.0, 20.0, 36.0))),
        ("direction", lambda im: _with(im, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))),
    ],
)
def test_mismatched_geometry(tmp_path, what, change):
    hu, labels = torso_arrays()
    ct_path, labels_path = write_pair(tmp_path, ".nii.gz", hu, labels)
    sitk.WriteImage(change(sitk.ReadImage(str(labels_path))), str(labels_path))
    with pytest.raises(DataError, match=f"have different {what}.*Resample the label map"):
        read_ct_and_labels(ct_path, labels_path)


def _with(image, **kw):
    image = sitk.Image(image)
    if "spacing" in kw:
        image.SetSpacing(kw["spacing"])
    if "origin" in kw:
        image.SetOrigin(kw["origin"])
    if "direction" in kw:
        image.SetDirection(kw["direction"])
    return image


def test_non_integer_labels(tmp_path):
    hu, labels = torso_arrays()
    ct_path, labels_path = write_pair(tmp_path, ".nii.gz", hu, labels.astype(np.float32) + 0.25)
    with pytest.raises(DataError, match="non-integer values"):
        read_ct_and_labels(ct_path, labels_path)


def test_float_labels_with_integer_values_are_accepted(tmp_path):
    hu, labels = torso_arrays()
    ct_path, labels_path = write_pair(tmp_path, ".nii.gz", hu, labels.astype(np.float32))
    _, lab = read_ct_and_labels(ct_path, labels_path)
    np.testing.assert_array_equal(lab.array, labels)


def test_ct_passed_as_labels(tmp_path):
    hu, labels = torso_arrays()
    ct_path, _ = write_pair(tmp_path, ".nii.gz", hu, labels)
    with pytest.raises(DataError, match="label ids must lie in 0..255"):
        read_ct_and_labels(ct_path, ct_path)


def test_empty_body_mask():
    hu = np.full((20, 20, 20), -1000, np.int16)
    with pytest.raises(DataError, match="empty body mask"):
        Patient.from_arrays(hu, np.zeros_like(hu, np.uint8), 2e-3)


def test_array_shape_and_value_errors():
    hu, labels = torso_arrays()
    with pytest.raises(DataError, match="differ in shape"):
        Patient.from_arrays(hu, labels[:-1], 2e-3)
    with pytest.raises(DataError, match="3-D array"):
        Patient.from_arrays(hu[..., 0], labels[..., 0], 2e-3)
    bad = hu.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        Patient.from_arrays(bad, labels, 2e-3)
    with pytest.raises(DataError, match="spacing .* invalid"):
        Patient.from_arrays(hu, labels, 2.0)  # millimetres instead of metres
