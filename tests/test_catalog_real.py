"""Real catalog CTs (fetched by set-up): loading, orientation, skin and spine landmarks.

Skipped when the CTs are not fetched. Patients load at 2 mm (cached after the first run).
"""

import numpy as np
import pytest

from sonogym.anatomy.labels import LABEL_IDS, vertebra_id

pytestmark = pytest.mark.realdata


def centroid(patient, label):
    idx = np.argwhere(patient.labels == label)
    assert len(idx), f"label {label} missing"
    return idx.mean(axis=0) * patient.spacing_m


@pytest.fixture(params=["ct_chest", "ct_abdomen"])
def real(request):
    return request.getfixturevalue(request.param)


def test_loads_with_expected_content(real):
    present = real.labels_present()
    vertebrae = [v.name for v in real.vertebrae if v.complete]
    if real.name == "ct-chest":
        assert {"T1", "T6", "T12", "L1"} <= set(vertebrae)
        assert LABEL_IDS["costal_cartilages"] in present  # remapped from the file's id 118
        assert 118 not in present
    else:
        assert {"L1", "L2", "L3", "L4", "L5"} <= set(vertebrae)
    assert real.hu.dtype == np.int16 and real.hu.min() >= -1024
    assert real.nbytes < 64 * 2**20  # at 2 mm


def test_orientation_anterior_posterior_and_superior(real):
    """The spine lies in the back half of the body (+y posterior); L1 is above L4 (+z superior)."""
    body_y = np.argwhere(real.body_mask.any(axis=(0, 2))).ravel() * real.spacing_m
    spine_y = np.mean([v.centroid_m[1] for v in real.vertebrae])
    assert (spine_y - body_y.min()) / (body_y.max() - body_y.min()) > 0.55
    upper, lower = ("T4", "T10") if real.name == "ct-chest" else ("L1", "L4")
    assert real.vertebra(upper).centroid_m[2] > real.vertebra(lower).centroid_m[2] + 0.05


def test_orientation_left_right_chest(ct_chest):
    """Liver on the patient's right (small x), spleen on the left; sternum anterior to the spine."""
    liver = centroid(ct_chest, LABEL_IDS["liver"])
    spleen = centroid(ct_chest, LABEL_IDS["spleen"])
    sternum = centroid(ct_chest, LABEL_IDS["sternum"])
    t6 = centroid(ct_chest, vertebra_id("T6"))
    assert liver[0] < t6[0] < spleen[0]
    assert sternum[1] < t6[1] - 0.05


def test_landmarks_cranio_caudal_and_axes(real):
    z = [v.centroid_m[2] for v in real.vertebrae]
    assert np.all(np.diff(z) < 0)
    for v in real.vertebrae:
        assert np.allclose(v.axes.T @ v.axes, np.eye(3), atol=1e-6) and np.linalg.det(v.axes) > 0
        assert v.axes[1, 1] > 0.5  # the vertebra's posterior axis points roughly along +y
        assert v.axes[2, 2] > 0.5  # its cranial axis roughly along +z


def test_screws_inside_pedicles(real):
    """Points from the entry to 70% of each screw's path lie in bone of that vertebra."""
    planned = [v for v in real.vertebrae if v.screws]
    assert len(planned) >= (10 if real.name == "ct-chest" else 4)
    for v in planned:
        assert {s.side for s in v.screws} == {"left", "right"}
        for screw in v.screws:
            t = np.linspace(0.0, 0.7, 30)[:, None] * screw.length_m
            points = screw.entry_m + t * screw.direction
            idx = np.clip(np.round(points / real.spacing_m).astype(int), 0, np.asarray(real.shape) - 1)
            inside = real.labels[tuple(idx.T)] == v.label
            assert inside.mean() >= 0.8, f"{v.name} {screw.side}: {inside.mean():.0%} of the path in bone"
            # left screws sit left of the canal (larger x in LPS), right screws right of it
            lateral = (screw.isthmus_m - v.canal_center_m) @ v.axes[:, 0]
            assert lateral > 0 if screw.side == "left" else lateral < 0
            assert 0.015 < screw.length_m < 0.07 and 0 < screw.corridor_radius_m < 8e-3


def test_skin_normals_point_out_of_real_body(real):
    pm = real.placement["posterior"]
    pts, n = pm.surface_points(), pm.normal[pm.valid]
    assert np.mean(real.signed_distance(pts + 3 * real.spacing_m * n) > 0) > 0.99
    assert np.abs(real.signed_distance(pts)).max() <= real.spacing_m
