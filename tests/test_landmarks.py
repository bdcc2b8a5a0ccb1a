"""Spine landmarks (sonogym.anatomy.landmarks) on synthetic vertebrae with known geometry.

A synthetic vertebra (local frame in mm: a = left, b = posterior, c = cranial, origin at the
centre of the body's posterior half) has an elliptic body, two round pedicles whose radius is
smallest (3 mm) at b = 4 mm, laminae around a canal of radius 8 mm, a spinous process and
transverse processes. Three of them are stacked along the cranial axis, straight or tilted.
"""

import numpy as np
import pytest

from sonogym.anatomy.landmarks import ScrewTrajectory, Vertebra, convergence_deg, find_vertebrae, plot_landmarks
from sonogym.errors import DataError

SPACING_M = 1e-3
PITCH_MM = 30.0  # vertebra-to-vertebra distance along the spine
LABELS = (30, 29, 28)  # L2, L3, L4 from cranial to caudal
PEDICLE_A_MM, PEDICLE_B_MM, PEDICLE_C_MM, PEDICLE_R_MM = 11.5, 4.0, 2.0, 3.0
CANAL_B_MM, CANAL_R_MM = 6.0, 8.0
BODY_B_MM = -18.0


def vertebra_mask(a, b, c):
    """Bone of one synthetic vertebra at local coordinates a, b, c [mm] (broadcast arrays)."""
    body = ((a / 20.0) ** 2 + ((b - BODY_B_MM) / 15.0) ** 2 <= 1.0) & (np.abs(c) <= 12.0)
    radius = PEDICLE_R_MM + 0.05 * (b - PEDICLE_B_MM) ** 2
    pedicles = (
        ((np.abs(a) - PEDICLE_A_MM) ** 2 + (c - PEDICLE_C_MM) ** 2 <= radius**2) & (b >= -6.0) & (b <= 12.0)
    )
    ring = np.hypot(a, b - CANAL_B_MM)
    laminae = (ring > CANAL_R_MM) & (ring < 13.0) & (b > 9.0) & (np.abs(c) <= 9.0)
    spinous = (np.abs(a) <= 2.5) & (b >= 16.0) & (b <= 38.0) & (c >= -9.0) & (c <= 4.0)
    transverse = (np.abs(a) >= 14.0) & (np.abs(a) <= 30.0) & (b >= 10.0) & (b <= 16.0) & (c >= -1.0) & (c <= 7.0)
    return body | pedicles | laminae | spinous | transverse


def rotation_x(deg):
    t = np.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])


def spine_volume(tilt_deg=0.0, shape=(80, 110, 130)):
    """Three vertebrae stacked along R @ z (R = rotation about x); returns labels, R, vertebra origins [m]."""
    rot = rotation_x(tilt_deg)
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1).T * SPACING_M * 1e3  # voxel centres [mm]
    centre = np.array(shape) * SPACING_M * 1e3 / 2 + np.array([0.0, -10.0, 0.0])  # body is anterior: shift back
    labels = np.zeros(shape, dtype=np.uint8)
    origins = []
    for k, lab in enumerate(LABELS):
        origin = centre + rot @ np.array([0.0, 0.0, (1 - k) * PITCH_MM])
        local = (idx - origin) @ rot  # rows: R^T (p - origin)
        inside = vertebra_mask(local[:, 0], local[:, 1], local[:, 2]).reshape(shape)
        labels[inside] = lab
        origins.append(origin * 1e-3)
    return labels, rot, origins


@pytest.fixture(scope="module")
def straight():
    labels, rot, origins = spine_volume(0.0)
    return labels, rot, origins, find_vertebrae(labels, SPACING_M)


@pytest.fixture(scope="module")
def tilted():
    labels, rot, origins = spine_volume(20.0, shape=(80, 140, 140))
    return labels, rot, origins, find_vertebrae(labels, SPACING_M)


def angle_deg(u, v):
    return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1.0, 1.0)))


def label_at(labels, point_m):
    i = np.round(np.asarray(point_m) / SPACING_M).astype(int)
    if np.any(i < 0) or np.any(i >= labels.shape):
        return 0
    return int(labels[tuple(i)])


def test_order_names_and_completeness(straight):
    labels, _, _, vertebrae = straight
    assert [v.label for v in vertebrae] == list(LABELS)
    assert [v.name for v in vertebrae] == ["L2", "L3", "L4"]
    z = [v.centroid_m[2] for v in vertebrae]
    assert np.all(np.diff(z) < 0)  # most cranial first
    for v in vertebrae:
        assert isinstance(v, Vertebra) and v.complete
        assert v.voxel_count == np.count_nonzero(labels == v.label)
        assert np.allclose(v.centroid_m, np.argwhere(labels == v.label).mean(0) * SPACING_M)


@pytest.mark.parametrize("case", ["straight", "tilted"])
def test_axes_are_rotations_following_the_spine(case, request):
    _, rot, _, vertebrae = request.getfixturevalue(case)
    assert len(vertebrae) == 3
    for v in vertebrae:
        assert np.allclose(v.axes.T @ v.axes, np.eye(3), atol=1e-9)
        assert np.linalg.det(v.axes) == pytest.approx(1.0)
        for col in range(3):  # identity for the straight spine, the 20 degree tilt otherwise
            assert angle_deg(v.axes[:, col], rot[:, col]) < 3.0, (v.name, col)


def test_tilt_is_recovered(tilted):
    _, _, _, vertebrae = tilted
    for v in vertebrae:
        tilt = np.degrees(np.arctan2(-v.axes[1, 2], v.axes[2, 2]))  # cranial axis leans toward anterior (-y)
        assert tilt == pytest.approx(20.0, abs=2.0)


@pytest.mark.parametrize("case", ["straight", "tilted"])
def test_canal_centre_is_inside_the_enclosed_canal(case, request):
    labels, rot, origins, vertebrae = request.getfixturevalue(case)
    for v, origin in zip(vertebrae, origins):
        assert label_at(labels, v.canal_center_m) == 0
        # bone of this vertebra in front, behind and on both sides of the canal centre
        for direction in (v.axes[:, 0], -v.axes[:, 0], v.axes[:, 1], -v.axes[:, 1]):
            hits = [label_at(labels, v.canal_center_m + t * direction) for t in np.arange(0.0, 0.04, 0.5e-3)]
            assert v.label in hits, (v.name, direction)
        # near the designed canal, at the centroid's height along the cranial axis
        expected = origin + rot @ np.array([0.0, CANAL_B_MM, 0.0]) * 1e-3
        offset = v.canal_center_m - expected
        assert abs(offset @ v.axes[:, 0]) < 1.5e-3 and abs(offset @ v.axes[:, 1]) < 4e-3
        assert abs((v.canal_center_m - v.centroid_m) @ v.axes[:, 2]) < 1e-6
        assert 7e-3 < v.canal_radius_m < 11e-3


@pytest.mark.parametrize("case", ["straight", "tilted"])
def test_screws_follow_the_pedicles_into_the_body(case, request):
    labels, rot, origins, vertebrae = request.getfixturevalue(case)
    for v, origin in zip(vertebrae, origins):
        assert [s.side for s in v.screws] == ["left", "right"], v.name
        left, posterior, _ = v.axes.T
        for s in v.screws:
            assert isinstance(s, ScrewTrajectory)
            sign = 1.0 if s.side == "left" else -1.0
            assert np.linalg.norm(s.direction) == pytest.approx(1.0)
            assert np.allclose(s.tip_m, s.entry_m + s.length_m * s.direction)
            # the isthmus is the designed narrowest part of the pedicle on the screw's side
            design = origin + rot @ np.array([sign * PEDICLE_A_MM, PEDICLE_B_MM, PEDICLE_C_MM]) * 1e-3
            assert np.linalg.norm(s.isthmus_m - design) < 2.5e-3, (v.name, s.side)
            assert sign * (s.isthmus_m - v.canal_center_m) @ left > 5e-3  # lateral of the canal, own side
            assert 0 < s.corridor_radius_m < v.canal_radius_m
            assert s.corridor_radius_m == pytest.approx(PEDICLE_R_MM * 1e-3, abs=1e-3)
            # entry -> isthmus runs in bone of this vertebra; the entry is behind the isthmus
            seg = np.linspace(0.0, 1.0, 40)[:, None]
            pts = s.entry_m + seg * (s.isthmus_m - s.entry_m)
            assert np.mean([label_at(labels, p) == v.label for p in pts]) >= 0.9
            assert (s.entry_m - s.isthmus_m) @ posterior > 0
            assert np.linalg.norm(np.cross(s.isthmus_m - s.entry_m, s.direction)) < 1e-6  # isthmus on the line
            # the whole screw stays in bone (within 10 %) and ends in the body, anterior to the canal
            pts = s.entry_m + np.linspace(0.0, s.length_m, 60)[:, None] * s.direction
            assert np.mean([label_at(labels, p) == v.label for p in pts]) >= 0.9
            assert label_at(labels, s.tip_m) == v.label
            assert (s.tip_m - v.canal_center_m) @ posterior < -v.canal_radius_m
            assert sign * (s.tip_m - v.canal_center_m) @ left > 0  # the tip stays on its own side
            # medially converging, with a lumbar-like angle
            assert sign * (s.direction @ left) < 0
            assert 5.0 < convergence_deg(v, s) < 25.0
            assert 0.025 < s.length_m < 0.06


def test_anisotropic_spacing_gives_the_same_landmarks(straight):
    labels, _, _, vertebrae = straight
    coarse = find_vertebrae(labels[:, :, ::2], (SPACING_M, SPACING_M, 2 * SPACING_M))
    assert [v.label for v in coarse] == [v.label for v in vertebrae]
    for a, b in zip(coarse, vertebrae):
        assert np.linalg.norm(a.centroid_m - b.centroid_m) < 1.5e-3
        assert np.linalg.norm(a.canal_center_m - b.canal_center_m) < 2e-3
        assert len(a.screws) == 2
        for sa, sb in zip(a.screws, b.screws):
            assert np.linalg.norm(sa.isthmus_m - sb.isthmus_m) < 3e-3
            assert angle_deg(sa.direction, sb.direction) < 5.0


def test_cut_off_vertebra_is_incomplete_without_screws(straight):
    labels, _, _, _ = straight
    cut = labels[:, :, 40:]  # L4 (lowest) loses its lower part: it touches the volume border
    vertebrae = find_vertebrae(cut, SPACING_M)
    by_name = {v.name: v for v in vertebrae}
    assert not by_name["L4"].complete and by_name["L4"].screws == ()
    assert by_name["L2"].complete and len(by_name["L2"].screws) == 2
    # the cut vertebra takes the spine tangent of its complete neighbour: still ~ +z
    assert angle_deg(by_name["L4"].axes[:, 2], np.array([0.0, 0.0, 1.0])) < 3.0


def test_fragments_are_ignored(straight):
    labels, _, _, vertebrae = straight
    noisy = labels.copy()
    noisy[2:4, 2:4, 2:4] = 27  # an 8-voxel "L5" fragment: below min_voxels
    noisy[70:73, 100:103, 120:123] = 29  # a stray 27-voxel piece of L3 far from L3
    found = find_vertebrae(noisy, SPACING_M)
    assert [v.label for v in found] == list(LABELS)
    l3 = found[1]
    assert np.allclose(l3.centroid_m, vertebrae[1].centroid_m)
    assert l3.voxel_count == vertebrae[1].voxel_count
    assert [v.label for v in find_vertebrae(noisy, SPACING_M, min_voxels=5)] == [*LABELS, 27]


def test_no_vertebrae_gives_empty_list():
    assert find_vertebrae(np.zeros((20, 20, 20), np.uint8), SPACING_M) == []
    other = np.zeros((20, 20, 20), np.uint8)
    other[5:15, 5:15, 5:15] = 5  # liver only
    assert find_vertebrae(other, SPACING_M) == []


def test_single_vertebra_uses_plus_z():
    labels, _, _ = spine_volume(0.0, shape=(80, 110, 130))
    single = np.where(labels == 29, labels, 0).astype(np.uint8)
    (v,) = find_vertebrae(single, SPACING_M)
    assert np.allclose(v.axes[:, 2], [0.0, 0.0, 1.0])
    assert angle_deg(v.axes[:, 1], np.array([0.0, 1.0, 0.0])) < 3.0
    assert len(v.screws) == 2


def test_bad_input_is_rejected():
    with pytest.raises(DataError, match="metres"):
        find_vertebrae(np.zeros((4, 4, 4), np.uint8), 1.0)  # millimetres by mistake
    with pytest.raises(DataError, match="3-D"):
        find_vertebrae(np.zeros((4, 4), np.uint8), SPACING_M)
    with pytest.raises(DataError, match="integer"):
        find_vertebrae(np.zeros((4, 4, 4), np.float32), SPACING_M)


def test_plot_landmarks_writes_a_png(straight, tmp_path):
    labels, _, _, vertebrae = straight
    hu = np.where(labels > 0, 700, 0).astype(np.int16)
    path = tmp_path / "sub" / "landmarks.png"
    plot_landmarks(labels, SPACING_M, vertebrae, path, hu=hu)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_phantom_landmarks():
    phantom = pytest.importorskip("sonogym.anatomy.phantom")
    hu, labels = phantom.phantom_arrays(0, spacing_m=1e-3, small=True)
    vertebrae = find_vertebrae(labels, 1e-3)
    assert vertebrae, "the phantom has vertebrae"
    z = [v.centroid_m[2] for v in vertebrae]
    assert np.all(np.diff(z) < 0)
    for v in vertebrae:
        assert np.allclose(v.axes.T @ v.axes, np.eye(3), atol=1e-9) and np.linalg.det(v.axes) > 0
        assert v.axes[1, 1] > 0.7 and v.axes[2, 2] > 0.7
        assert label_at(labels, v.canal_center_m) != v.label
    planned = [v for v in vertebrae if v.screws]
    assert planned, "screws planned on the phantom's complete lumbar vertebrae"
    for v in planned:
        for s in v.screws:
            sign = 1.0 if s.side == "left" else -1.0
            pts = s.entry_m + np.linspace(0.0, 0.7 * s.length_m, 30)[:, None] * s.direction
            assert np.mean([label_at(labels, p) == v.label for p in pts]) >= 0.8
            assert sign * (s.isthmus_m - v.canal_center_m) @ v.axes[:, 0] > 0
            assert sign * (s.direction @ v.axes[:, 0]) < 0
            assert 0 < s.corridor_radius_m < v.canal_radius_m
