"""Spine landmarks (sonogym.anatomy.landmarks) on synthetic vertebrae with known geometry.

A synthetic vertebra (local frame in mm: a = left, b = posterior, c = cranial; origin near the
back of the body, 18 mm behind its centre) has an elliptic body, two round pedicles whose radius
is smallest (3 mm) at b = 4 mm, laminae around a canal of radius 8 mm, a spinous process,
transverse processes and two small lips on the body's back rim. Three of them are stacked along
the cranial axis: straight, leaning 20 degrees forward, or turned 15 degrees about the spine axis.
The procedural phantom (with its ground truth) is checked too when it is available."""

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
    transverse = (np.abs(a) >= 11.0) & (np.abs(a) <= 30.0) & (b >= 10.0) & (b <= 16.0) & (c >= -1.0) & (c <= 7.0)
    # small lips on the body's posterior rim below the pedicles: narrower than the pedicles, they
    # must not be taken for the isthmus
    lips = (np.abs(a) >= 9.0) & (np.abs(a) <= 12.0) & (b >= -5.5) & (b <= -1.0) & (c >= -10.0) & (c <= -7.0)
    return body | pedicles | laminae | spinous | transverse | lips


def rotation(axis, deg):
    """Rotation matrix about coordinate axis 0 (x) or 2 (z)."""
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    if axis == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def spine_volume(rot=np.eye(3), shape=(80, 110, 130)):
    """Three vertebrae, each rotated by ``rot``, stacked along rot @ z; returns labels, rot, origins [m]."""
    mm = SPACING_M * 1e3
    # centred in x (left-right symmetric voxels); 0.3 mm off the grid in y and z (no boundary ties)
    centre = np.round(np.array(shape) / 2) * mm + np.array([0.0, -9.7, 0.3])
    corners = np.array(np.meshgrid([-31, 31], [-34, 39], [-13, 13], indexing="ij")).reshape(3, -1)  # local box [mm]
    labels = np.zeros(shape, dtype=np.uint8)
    origins = []
    for k, lab in enumerate(LABELS):
        origin = centre + rot @ np.array([0.0, 0.0, (1 - k) * PITCH_MM])
        world = origin[:, None] + rot @ corners  # evaluate the shape only inside its bounding box
        lo = np.clip(np.floor(world.min(1) / mm).astype(int), 0, shape)
        hi = np.clip(np.ceil(world.max(1) / mm).astype(int) + 1, 0, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        idx = (np.indices(hi - lo, dtype=np.float64).reshape(3, -1).T + lo) * mm  # voxel centres [mm]
        local = (idx - origin) @ rot  # rows: R^T (p - origin)
        inside = vertebra_mask(local[:, 0], local[:, 1], local[:, 2]).reshape(hi - lo)
        labels[box][inside] = lab
        origins.append(origin * 1e-3)
    return labels, rot, origins


@pytest.fixture(scope="module")
def straight():
    labels, rot, origins = spine_volume()
    return labels, rot, origins, find_vertebrae(labels, SPACING_M)


@pytest.fixture(scope="module")
def tilted():
    """Spine leaning 20 degrees forward (rotation about x)."""
    labels, rot, origins = spine_volume(rotation(0, 20.0), shape=(80, 140, 140))
    return labels, rot, origins, find_vertebrae(labels, SPACING_M)


@pytest.fixture(scope="module")
def rotated():
    """Vertebrae turned 15 degrees about the spine axis (axial rotation, as in scoliosis)."""
    labels, rot, origins = spine_volume(rotation(2, 15.0), shape=(90, 110, 130))
    return labels, rot, origins, find_vertebrae(labels, SPACING_M)


def angle_deg(u, v):
    return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1.0, 1.0)))


def label_at(labels, point_m, spacing_m=SPACING_M):
    i = np.round(np.asarray(point_m) / spacing_m).astype(int)
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


@pytest.mark.parametrize("case", ["straight", "tilted", "rotated"])
def test_axes_are_rotations_following_the_spine(case, request):
    _, rot, _, vertebrae = request.getfixturevalue(case)
    assert len(vertebrae) == 3
    for v in vertebrae:
        assert np.allclose(v.axes.T @ v.axes, np.eye(3), atol=1e-9)
        assert np.linalg.det(v.axes) == pytest.approx(1.0)
        for col in range(3):  # identity for the straight spine, the tilt or axial rotation otherwise
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


@pytest.mark.parametrize("case", ["straight", "tilted", "rotated"])
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
            assert s.corridor_radius_m == pytest.approx(PEDICLE_R_MM * 1e-3, abs=0.6e-3)
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
    labels, _, _ = spine_volume()
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
    spacing = 2e-3  # the spacing patients use in tests
    _, labels = phantom.phantom_arrays(0, spacing_m=spacing, small=True)
    vertebrae = find_vertebrae(labels, spacing)
    assert [v.name for v in vertebrae] == ["L2", "L3", "L4"]
    for v in vertebrae:
        assert v.complete and len(v.screws) == 2
        assert np.allclose(v.axes.T @ v.axes, np.eye(3), atol=1e-9) and np.linalg.det(v.axes) > 0
        assert label_at(labels, v.canal_center_m, spacing) != v.label
        for s in v.screws:
            sign = 1.0 if s.side == "left" else -1.0
            pts = s.entry_m + np.linspace(0.0, s.length_m, 40)[:, None] * s.direction
            assert np.mean([label_at(labels, p, spacing) == v.label for p in pts]) >= 0.9
            assert sign * (s.isthmus_m - v.canal_center_m) @ v.axes[:, 0] > 0
            assert sign * (s.direction @ v.axes[:, 0]) < 0
            assert 0 < s.corridor_radius_m < v.canal_radius_m
    if not hasattr(phantom, "phantom_geometry"):
        return
    truth = phantom.phantom_geometry(0, small=True)
    for v in vertebrae:  # against the phantom's ground truth
        gt = truth.vertebra(v.name)
        for col in range(3):
            assert angle_deg(v.axes[:, col], gt.axes[:, col]) < 4.0
        offset = gt.axes.T @ (v.canal_center_m - gt.canal_center_m)
        assert np.hypot(offset[0], offset[1]) < 1.5e-3  # in the axial plane (heights differ by design)
        for s in v.screws:
            ped = gt.pedicles[s.side]
            r = s.isthmus_m - ped.posterior_m
            assert np.linalg.norm(r - (r @ ped.axis) * ped.axis) < 2e-3  # isthmus on the pedicle axis
            assert s.corridor_radius_m < min(ped.width_m, ped.height_m) / 2 + 0.5e-3


def test_open_ring_falls_back_to_the_spinal_cord():
    labels, _, origins = spine_volume()
    idx = np.indices(labels.shape, dtype=np.float64) * SPACING_M * 1e3
    a = idx[0] - origins[0][0] * 1e3
    b = idx[1] - origins[0][1] * 1e3
    labels[(np.abs(a) < 7.0) & (b > 9.0)] = 0  # a 14 mm gap in the laminae: the canal ring is open
    no_cord = find_vertebrae(labels, SPACING_M)
    assert all(v.screws == () and v.canal_radius_m == 0.0 for v in no_cord)
    assert all(angle_deg(v.axes[:, 1], np.array([0.0, 1.0, 0.0])) < 0.01 for v in no_cord)  # +y fallback
    cord = np.hypot(a, b - CANAL_B_MM) <= 4.0
    labels[cord & (labels == 0)] = 79
    for v, origin in zip(find_vertebrae(labels, SPACING_M), origins):
        expected = origin + np.array([0.0, CANAL_B_MM, 0.0]) * 1e-3
        assert np.linalg.norm((v.canal_center_m - expected)[:2]) < 1e-3
        assert v.canal_radius_m == pytest.approx(4e-3, abs=0.5e-3)  # the cord's radius, not the canal's
        assert angle_deg(v.axes[:, 1], np.array([0.0, 1.0, 0.0])) < 3.0
        assert v.screws == ()  # no planning without a closed canal
