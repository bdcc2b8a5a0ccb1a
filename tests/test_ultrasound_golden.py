"""Golden-image regression tests: both probe presets on the real abdominal CT.

The stored images (``tests/golden/ultrasound_<probe>.npz``, uint8) were rendered by the Warp sensor
on ``ct-abdomen`` at the test spacing (2 mm) at four fixed poses over L2-L4. A change to the model,
the kernels, the tissue table or the patient processing changes them; when the change is intended,
look at the new pictures (``sonogym render ct-abdomen``) and regenerate with::

    .venv/bin/python tests/test_ultrasound_golden.py

Tolerance: mean absolute difference below 1/255 and 99.5 % of pixels within 4/255, which absorbs
float rounding across compilers and CPUs but not a change of the picture.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
PROBES = ("linear", "convex")


def golden_poses(patient) -> torch.Tensor:
    from sonogym.ultrasound import skin_pose

    poses = []
    for name, rotation, dx in (("L2", 0.0, 0.0), ("L3", 0.0, 0.01), ("L4", 0.3, -0.005), ("L3", np.pi / 2, 0.0)):
        v = patient.vertebra(name)
        poses.append(skin_pose(patient, v.centroid_m[0] + dx, v.centroid_m[2], rotation_rad=rotation))
    return torch.tensor(np.stack(poses), dtype=torch.float32)


def render_golden(patient, probe_name: str) -> np.ndarray:
    from sonogym.ultrasound import UltrasoundSensor, probe_preset

    pose = golden_poses(patient)
    sensor = UltrasoundSensor([patient], probe_preset(probe_name), len(pose))
    images = sensor.update(pose, torch.zeros(len(pose), dtype=torch.long))
    return np.round(images.numpy() * 255).astype(np.uint8)


@pytest.mark.realdata
@pytest.mark.parametrize("probe_name", PROBES)
def test_golden_images(ct_abdomen, probe_name):
    path = GOLDEN / f"ultrasound_{probe_name}.npz"
    assert path.exists(), f"missing {path}; regenerate with `.venv/bin/python {Path(__file__).relative_to(Path.cwd()) if Path(__file__).is_relative_to(Path.cwd()) else __file__}`"
    expected = np.load(path)["images"]
    images = render_golden(ct_abdomen, probe_name)
    assert images.shape == expected.shape
    diff = np.abs(images.astype(np.int16) - expected.astype(np.int16))
    assert diff.mean() < 1.0 and (diff <= 4).mean() > 0.995, (diff.mean(), (diff <= 4).mean())
    # The picture has content: bright bone echoes and dark shadows.
    assert images.std() > 20 and (images > 150).mean() > 0.002 and (images < 10).mean() > 0.05


if __name__ == "__main__":
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from conftest import TEST_SPACING_M  # noqa: E402

    from sonogym.anatomy.catalog import load_patient

    patient = load_patient("ct-abdomen", iso_spacing_m=TEST_SPACING_M)
    GOLDEN.mkdir(exist_ok=True)
    for name in PROBES:
        out = GOLDEN / f"ultrasound_{name}.npz"
        np.savez_compressed(out, images=render_golden(patient, name))
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
