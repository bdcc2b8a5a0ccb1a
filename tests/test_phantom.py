"""Tests for the seeded procedural phantom (sonogym/anatomy/phantom.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from sonogym.anatomy.labels import LABEL_IDS, VERTEBRA_IDS, vertebra_id
from sonogym.anatomy.phantom import EXTENT_MM, TISSUE_HU, phantom_arrays, phantom_geometry

LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")
SMALL_LEVELS = ("L2", "L3", "L4")
COARSE_M = 3e-3
FINE_M = 2e-3


@pytest.fixture(scope="module")
def full():
    """Default phantom of seed 0 at 3 mm: (hu, labels, geometry)."""
    hu, labels = phantom_arrays(0, spacing_m=COARSE_M)
    return hu, labels, phantom_geometry(0)


@pytest.fixture(scope="module")
def small():
    """Small phantom of seed 0 at 2 mm: (hu, labels, geometry)."""
    hu, labels = phantom_arrays(0, spacing_m=FINE_M, small=True)
    return hu, labels, phantom_geometry(0, small=True)


def voxel(point_m: np.ndarray, spacing_m: float) -> tuple[int, int, int]:
    return tuple(int(i) for i in np.round(np.asarray(point_m) / spacing_m))


def centroid_m(labels: np.ndarray, label: int, spacing_m: float) -> np.ndarray:
    return np.argwhere(labels == label).mean(axis=0) * spacing_m


# --- determinism, types, shapes -------------------------------------------------------------


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    hu_a, lab_a = phantom_arrays(7, spacing_m=COARSE_M, small=True)
    hu_b, lab_b = phantom_arrays(7, spacing_m=COARSE_M, small=True)
    assert np.array_equal(hu_a, hu_b) and np.array_equal(lab_a, lab_b)
    hu_c, lab_c = phantom_arrays(8, spacing_m=COARSE_M, small=True)
    assert hu_a.shape != hu_c.shape or not np.array_equal(hu_a, hu_c)
    assert lab_a.shape != lab_c.shape or not np.array_equal(lab_a, lab_c)


def test_dtypes_and_shapes(full, small) -> None:
    hu, labels, geom = full
    assert hu.dtype == np.int16 and labels.dtype == np.uint8
    assert hu.shape == labels.shape == tuple(int(round(e / 3.0)) for e in EXTENT_MM)
    np.testing.assert_allclose(geom.extent_m, EXTENT_MM * 1e-3)
    s_hu, s_labels, s_geom = small
    assert s_hu.dtype == np.int16 and s_labels.dtype == np.uint8 and s_hu.shape == s_labels.shape
    assert s_hu.shape[:2] == tuple(int(round(e / 2.0)) for e in EXTENT_MM[:2])  # full cross-section
    assert s_hu.shape[2] == int(round(s_geom.extent_m[2] / FINE_M))
    assert 0.08 < s_geom.extent_m[2] < 0.16  # a lumbar segment of about 12 cm


def test_invalid_spacing_is_rejected() -> None:
    with pytest.raises(ValueError, match="spacing"):
        phantom_arrays(0, spacing_m=0.0)


def test_small_phantom_builds_fast() -> None:
    phantom_arrays(1, spacing_m=FINE_M, small=True)  # warm-up (imports, caches)
    best = min(_timed(lambda: phantom_arrays(1, spacing_m=FINE_M, small=True)) for _ in range(3))
    assert best < 0.3


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- labels -------------------------------------------------------------------------------


def test_expected_labels_present(full, small) -> None:
    _, labels, _ = full
    present = set(np.unique(labels).tolist())
    expected = {vertebra_id(n) for n in LEVELS} | {
        LABEL_IDS[n] for n in ("sacrum", "spinal_cord", "autochthon_left", "autochthon_right", "kidney_left",
                               "kidney_right", "liver", "spleen", "aorta", "inferior_vena_cava",
                               "iliopsoas_left", "iliopsoas_right")
    }
    assert expected <= present
    _, s_labels, s_geom = small
    s_present = set(np.unique(s_labels).tolist())
    assert {vertebra_id(n) for n in SMALL_LEVELS} <= s_present
    assert not (set(VERTEBRA_IDS) - {vertebra_id(n) for n in SMALL_LEVELS}) & s_present  # only L2-L4
    assert [v.name for v in s_geom.vertebrae] == list(SMALL_LEVELS)


def test_small_vertebrae_do_not_touch_the_volume_border(small) -> None:
    _, labels, _ = small
    for name in SMALL_LEVELS:
        idx = np.argwhere(labels == vertebra_id(name))
        assert idx.min() > 0 and np.all(idx.max(axis=0) < np.array(labels.shape) - 1), name


def test_organs_on_the_correct_side(full) -> None:
    _, labels, geom = full
    mid = geom.midline_x_m
    x = {name: centroid_m(labels, LABEL_IDS[name], COARSE_M)[0] - mid for name in (
        "liver", "spleen", "kidney_left", "kidney_right", "aorta", "inferior_vena_cava",
        "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right")}
    # x points to the patient's left: left structures at x > midline, the liver on the right.
    for name in ("spleen", "kidney_left", "aorta", "autochthon_left", "iliopsoas_left"):
        assert x[name] > 0.005, name
    for name in ("liver", "kidney_right", "inferior_vena_cava", "autochthon_right", "iliopsoas_right"):
        assert x[name] < -0.005, name
    body_y = geom.vertebra("L2").center_m[1]
    aorta_y = centroid_m(labels, LABEL_IDS["aorta"], COARSE_M)[1]
    back_y = centroid_m(labels, LABEL_IDS["autochthon_left"], COARSE_M)[1]
    assert aorta_y < body_y - 0.015 < body_y + 0.015 < back_y  # aorta in front, paraspinal muscles behind


# --- spine ---------------------------------------------------------------------------------


def test_vertebrae_ordered_cranio_caudally(full) -> None:
    _, labels, geom = full
    z = [centroid_m(labels, vertebra_id(n), COARSE_M)[2] for n in LEVELS]
    assert all(a > b for a, b in zip(z, z[1:])), z  # T11 highest ... L5 lowest
    assert centroid_m(labels, LABEL_IDS["sacrum"], COARSE_M)[2] < z[-1]
    steps = -np.diff(z)
    assert np.all((steps > 0.025) & (steps < 0.045))  # one body + one disc apart
    np.testing.assert_allclose(z, [geom.vertebra(n).center_m[2] for n in LEVELS], atol=0.006)


def test_spinous_processes_posterior_to_bodies(full) -> None:
    _, labels, geom = full
    mid = geom.midline_x_m
    for name in LEVELS:
        idx = np.argwhere(labels == vertebra_id(name)) * COARSE_M
        tip = idx[np.argmax(idx[:, 1])]  # most posterior voxel
        front = idx[np.argmin(idx[:, 1])]  # most anterior voxel (front of the body)
        assert abs(tip[0] - mid) < 0.006, name  # on the midline: the spinous process
        assert tip[1] - geom.vertebra(name).center_m[1] > 0.045, name
        assert tip[1] - front[1] > 0.06, name


def test_bone_hu_everywhere_a_vertebra_is_labelled(full) -> None:
    hu, labels, _ = full
    bone = np.isin(labels, list(VERTEBRA_IDS) + [LABEL_IDS["sacrum"]])
    assert bone.sum() > 10_000
    assert hu[bone].min() > 200
    assert (hu[bone] >= 1200).any() and ((hu[bone] > 200) & (hu[bone] < 320)).any()  # cortex and cancellous


def test_discs_between_bodies_are_unlabelled(full) -> None:
    hu, labels, geom = full
    upper, lower = geom.vertebra("L3"), geom.vertebra("L4")
    bottom = upper.center_m - upper.axes[:, 2] * upper.body_height_m / 2
    top = lower.center_m + lower.axes[:, 2] * lower.body_height_m / 2
    i, j, k = voxel((bottom + top) / 2, COARSE_M)
    assert labels[i, j, k] == 0 and hu[i, j, k] == TISSUE_HU["disc"]


def test_spinal_cord_enclosed_by_bone_at_the_pedicles(small) -> None:
    _, labels, geom = small
    cord = labels == LABEL_IDS["spinal_cord"]
    for vert in geom.vertebrae:
        k = voxel(vert.pedicles["left"].isthmus_m, FINE_M)[2]
        bone = labels[:, :, k] == vert.label
        holes = ndimage.binary_fill_holes(bone) & ~bone
        assert cord[:, :, k].sum() >= 4, vert.name
        assert np.all(holes[cord[:, :, k]]), vert.name  # the canal is a closed bony ring


def test_canal_ring_opens_at_the_foramina(small) -> None:
    """Between two vertebrae (mid-disc) there are no pedicles: the bone does not enclose the cord."""
    _, labels, geom = small
    upper, lower = geom.vertebra("L2"), geom.vertebra("L3")
    k = voxel((upper.center_m + lower.center_m) / 2, FINE_M)[2]
    bone = np.isin(labels[:, :, k], [upper.label, lower.label])
    holes = ndimage.binary_fill_holes(bone) & ~bone
    cord = labels[:, :, k] == LABEL_IDS["spinal_cord"]
    assert cord.any() and not holes[cord].any()


def test_pedicles_are_solid_bone_bridges() -> None:
    spacing = 1e-3
    hu, labels = phantom_arrays(3, spacing_m=spacing, small=True)
    geom = phantom_geometry(3, small=True)
    for vert in geom.vertebrae:
        for side, ped in vert.pedicles.items():
            assert 0.008 <= ped.width_m <= 0.013, (vert.name, side)
            # The axis, from the lamina junction into the body, stays inside this vertebra's bone.
            for t in np.linspace(0.1, 0.9, 17):
                i, j, k = voxel(ped.posterior_m + t * (ped.anterior_m - ped.posterior_m), spacing)
                assert labels[i, j, k] == vert.label and hu[i, j, k] > 200, (vert.name, side, t)
            # Across the isthmus: bone over most of the width, the canal just medial to it.
            medial = -vert.axes[:, 0] if side == "left" else vert.axes[:, 0]
            medial = medial - (medial @ ped.axis) * ped.axis
            medial /= np.linalg.norm(medial)
            for offset in np.linspace(-0.3, 0.3, 7) * ped.width_m:
                i, j, k = voxel(ped.isthmus_m + offset * medial, spacing)
                assert labels[i, j, k] == vert.label, (vert.name, side, offset)
            i, j, k = voxel(ped.isthmus_m + (ped.width_m / 2 + 0.003) * medial, spacing)
            assert labels[i, j, k] != vert.label and hu[i, j, k] < 200, (vert.name, side)


def test_lordosis_follows_the_seed() -> None:
    """The lumbar apex lies further forward (lower y) than the ends of the curve, by more when
    the drawn lordosis is larger."""
    bulge = {}
    for seed in (25, 8):  # drawn lordosis about 6 mm and 18 mm
        _, labels = phantom_arrays(seed, spacing_m=COARSE_M)
        y = {n: centroid_m(labels, vertebra_id(n), COARSE_M)[1] for n in ("T12", "L3", "L4", "L5")}
        bulge[seed] = (y["T12"] + y["L5"]) / 2 - (y["L3"] + y["L4"]) / 2
    geo = {seed: phantom_geometry(seed).lordosis_m for seed in bulge}
    assert geo[8] - geo[25] > 0.008
    assert 0.0 < bulge[25] < bulge[8]


# --- soft tissue ----------------------------------------------------------------------------


def test_skin_surrounded_by_air(full) -> None:
    hu, _, _ = full
    air = TISSUE_HU["air"]
    for face in (hu[0], hu[-1], hu[:, 0], hu[:, -1]):  # air beside and in front of/behind the torso
        assert np.all(face == air)
    assert np.all(np.isin(hu, [air]) | (hu > -500))  # nothing between air and tissue
    body = hu > -500
    for k in (0, hu.shape[2] // 2, hu.shape[2] - 1):
        section = body[:, :, k]
        assert ndimage.label(section)[1] == 1  # one torso, no holes of air inside
        assert np.array_equal(ndimage.binary_fill_holes(section), section)
        outline = section & ~ndimage.binary_erosion(section)
        assert np.all(hu[:, :, k][outline] == TISSUE_HU["skin"])


def test_back_fat_thickness_follows_the_seed() -> None:
    measured = {}
    for seed in (0, 4):  # drawn fat about 9 mm and 34 mm
        hu, _ = phantom_arrays(seed, spacing_m=FINE_M, small=True)
        geom = phantom_geometry(seed, small=True)
        k = hu.shape[2] // 2
        runs = []
        for dx in (-0.045, -0.03, 0.03, 0.045):  # beside the midline furrow
            column = hu[voxel([geom.midline_x_m + dx, 0, 0], FINE_M)[0], ::-1, k]  # from the back forward
            first = np.argmax(column != TISSUE_HU["air"])
            assert column[first] == TISSUE_HU["skin"]
            fat = column[first:first + 60] == TISSUE_HU["fat"]
            start = np.argmax(fat)
            runs.append(np.argmin(fat[start:]) * FINE_M)
        measured[seed] = float(np.mean(runs))
        assert abs(measured[seed] - geom.fat_thickness_m) <= 1.5 * FINE_M, (seed, measured[seed], geom.fat_thickness_m)
        assert 0.008 <= geom.fat_thickness_m <= 0.035
    assert measured[4] - measured[0] > 0.02


def test_spinal_cord_in_csf_inside_the_canal(small) -> None:
    hu, labels, _ = small
    cord = labels == LABEL_IDS["spinal_cord"]
    assert np.all(hu[cord] == TISSUE_HU["spinal_cord"])
    around = ndimage.binary_dilation(cord, iterations=1) & ~cord
    assert np.mean(hu[around] == TISSUE_HU["csf"]) > 0.8  # CSF (label 0) surrounds the cord
    assert np.all(labels[around & (hu == TISSUE_HU["csf"])] == 0)


def test_geometry_does_not_depend_on_spacing(small) -> None:
    _, labels, geom = small
    default = phantom_geometry(0)
    z0 = default.vertebra("L3").center_m[2] - geom.vertebra("L3").center_m[2]
    for name in SMALL_LEVELS:
        np.testing.assert_allclose(default.vertebra(name).center_m - [0, 0, z0], geom.vertebra(name).center_m)
        # the body centre is cancellous bone of that vertebra
        i, j, k = voxel(geom.vertebra(name).center_m, FINE_M)
        assert labels[i, j, k] == vertebra_id(name)
