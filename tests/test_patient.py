"""Patient processing: skin surface, normals, signed distance, resampling, persistence and cache."""

import numpy as np
import pytest

from sonogym.anatomy import catalog
from sonogym.anatomy.patient import Patient
from sonogym.anatomy.resample import resample_labels
from sonogym.anatomy.skin import signed_distance_q
from sonogym.errors import DataError


def ellipsoid_patient(spacing_m=2e-3):
    """An ellipsoidal 'torso' (40 HU) with a table slab (300 HU) 8 mm below its back."""
    shape = (70, 60, 50)
    x, y, z = np.indices(shape) * spacing_m
    c = (np.asarray(shape) - 1) * spacing_m / 2
    inside = ((x - c[0]) / 0.05) ** 2 + ((y - c[1]) / 0.035) ** 2 + ((z - c[2]) / 0.06) ** 2 <= 1
    hu = np.where(inside, 40, -1000).astype(np.int16)
    table_j = int(round((c[1] + 0.035 + 0.008) / spacing_m))
    hu[:, table_j:table_j + 3, :] = 300
    return Patient.from_arrays(hu, np.zeros(shape, np.uint8), spacing_m, name="ellipsoid", iso_spacing_m=spacing_m), c


def test_table_is_removed_and_body_kept():
    patient, _ = ellipsoid_patient()
    # the table slab lay outside the body: it became air, the ellipsoid stays soft tissue
    assert patient.hu.max() == 40
    body = patient.body_mask
    assert np.mean(patient.hu[body] == 40) > 0.99 and np.all(patient.hu[~body] == -1000)
    volume_m3 = body.sum() * patient.spacing_m**3
    assert volume_m3 == pytest.approx(4 / 3 * np.pi * 0.05 * 0.035 * 0.06, rel=0.05)


@pytest.mark.parametrize("side, sign", [("posterior", 1), ("anterior", -1)])
def test_placement_map_on_ellipsoid(side, sign):
    patient, _ = ellipsoid_patient()
    pm = patient.placement[side]
    points = pm.surface_points()
    normals = pm.normal[pm.valid]
    assert pm.valid.sum() > 300
    # normals point out of the body: the signed distance grows along them
    outside = patient.signed_distance(points + 3 * patient.spacing_m * normals)
    inside = patient.signed_distance(points - 3 * patient.spacing_m * normals)
    assert np.all(outside > 0) and np.all(inside < 0)
    # on the scanning side the normal faces away from the body along y
    assert np.all(np.sign(normals[:, 1]) == sign)
    # the surface lies within one voxel of the mask boundary
    assert np.abs(patient.signed_distance(points)).max() <= patient.spacing_m


def test_signed_distance_matches_sphere():
    r_vox = 15
    idx = np.indices((44, 44, 44)) - 21.5
    mask = np.sqrt((idx**2).sum(0)) <= r_vox
    sdf = signed_distance_q(mask, 1e-3) * 1e-4
    exact = (np.sqrt((idx**2).sum(0)) - r_vox) * 1e-3
    near = np.abs(exact) < 5e-3
    assert np.abs(sdf - exact)[near].max() <= 1e-3  # voxelised sphere: within one voxel
    assert np.all(sdf[mask] < 0) and np.all(sdf[~mask] > 0)


def test_smooth_label_upsampling_has_no_staircase():
    """Upsampling a 4 mm label sphere to 1 mm: smooth labels follow the sphere better than nearest."""
    idx = np.indices((20, 20, 20)) - 9.5
    labels = (np.sqrt((idx**2).sum(0)) <= 6).astype(np.uint8) * 28
    up_smooth = resample_labels(labels, np.full(3, 4e-3), 1e-3, smooth=True)
    up_nearest = resample_labels(labels, np.full(3, 4e-3), 1e-3, smooth=False)
    fine = (np.indices(up_smooth.shape) * 1e-3) / 4e-3 - 9.5
    exact = np.sqrt((fine**2).sum(0)) <= 6
    err_smooth = np.count_nonzero((up_smooth > 0) != exact)
    err_nearest = np.count_nonzero((up_nearest > 0) != exact)
    assert set(np.unique(up_smooth)) == {0, 28}
    assert err_smooth < 0.7 * err_nearest


def test_phantom_patient_skin_and_mesh(phantom_patient):
    p = phantom_patient
    assert p.hu.dtype == np.int16 and p.labels.dtype == np.uint8 and p.sdf_q.shape == p.hu.shape
    mesh = p.skin_mesh()
    assert mesh.is_watertight and mesh.volume > 0  # closed, normals outward
    # mesh vertices away from the scan's cut planes lie on the mask boundary (within one voxel)
    v = p.skin_vertices_m
    lo, hi = 2 * p.spacing_m, p.extent_m - 2 * p.spacing_m
    interior = np.all((v > lo) & (v < hi), axis=1)
    assert interior.sum() > 1000
    assert np.abs(p.signed_distance(v[interior])).max() <= p.spacing_m
    # every normal of the back placement map points out of the body
    pm = p.placement["posterior"]
    pts, n = pm.surface_points(), pm.normal[pm.valid]
    assert np.all(p.signed_distance(pts + 2 * p.spacing_m * n) > p.signed_distance(pts - 2 * p.spacing_m * n))
    assert np.mean(p.signed_distance(pts + 3 * p.spacing_m * n) > 0) > 0.99
    assert np.all(n[:, 1] > 0)  # back faces +y (posterior)


def test_placement_query_interpolates(phantom_patient):
    pm = phantom_patient.placement["posterior"]
    i, k = np.argwhere(pm.valid)[len(np.argwhere(pm.valid)) // 2]
    s = pm.spacing_m
    point, normal = pm.query(np.array([i * s]), np.array([k * s]))
    np.testing.assert_allclose(point[0], [i * s, pm.height_m[i, k], k * s], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normal[0]), 1.0, atol=1e-5)
    far_point, _ = pm.query(np.array([-1.0]), np.array([-1.0]))
    assert np.all(np.isnan(far_point))


def test_save_load_round_trip(tmp_path, phantom_patient):
    path = tmp_path / "p.npz"
    phantom_patient.save(path)
    assert [f.name for f in tmp_path.iterdir()] == ["p.npz"]  # no temporary left behind
    loaded = Patient.load(path)
    np.testing.assert_array_equal(loaded.hu, phantom_patient.hu)
    np.testing.assert_array_equal(loaded.labels, phantom_patient.labels)
    assert [v.name for v in loaded.vertebrae] == [v.name for v in phantom_patient.vertebrae]
    for a, b in zip(loaded.vertebrae, phantom_patient.vertebrae):
        np.testing.assert_allclose(a.centroid_m, b.centroid_m)
        for sa, sb in zip(a.screws, b.screws):
            np.testing.assert_allclose(sa.tip_m, sb.tip_m)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt processed-patient file"):
        Patient.load(path)


def test_cache_second_load_is_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("SONOGYM_CACHE_DIR", str(tmp_path))
    first = catalog.load_patient("phantom-3-small", iso_spacing_m=3e-3)
    files = list(tmp_path.glob("phantom-3-small-3mm-*.npz"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(Patient, "from_phantom", classmethod(lambda cls, *a, **k: calls.append(a)))
    second = catalog.load_patient("phantom-3-small", iso_spacing_m=3e-3)
    assert calls == []  # served from the cache, not rebuilt
    np.testing.assert_array_equal(second.hu, first.hu)
    # a corrupt cache file is rebuilt, not fatal
    files[0].write_bytes(b"garbage")
    monkeypatch.undo()
    monkeypatch.setenv("SONOGYM_CACHE_DIR", str(tmp_path))
    third = catalog.load_patient("phantom-3-small", iso_spacing_m=3e-3)
    np.testing.assert_array_equal(third.hu, first.hu)


def test_unknown_patient_and_missing_vertebra(phantom_patient):
    with pytest.raises(DataError, match="unknown patient 'ct-liver'.*phantom-<seed>"):
        catalog.load_patient("ct-liver")
    with pytest.raises(DataError, match="has no vertebra C3"):
        phantom_patient.vertebra("C3")
    patient, _ = ellipsoid_patient()
    with pytest.raises(DataError, match="no vertebra labels"):
        patient.vertebra("L4")


def test_phantom_determinism():
    a = Patient.from_phantom(5, iso_spacing_m=3e-3, small=True)
    b = Patient.from_phantom(5, iso_spacing_m=3e-3, small=True)
    c = Patient.from_phantom(6, iso_spacing_m=3e-3, small=True)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.skin_vertices_m, b.skin_vertices_m)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)
