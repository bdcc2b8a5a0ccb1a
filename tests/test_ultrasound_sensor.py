"""The Warp sensor: interface, agreement with the torch reference, packing, threads and bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from sonogym.ultrasound import ProbeConvex, ProbeLinear, UltrasoundModel, UltrasoundSensor, convex_abdomen, linear_spine, skin_pose
from sonogym.ultrasound.poses import matrix_from_quat
from sonogym.ultrasound.reference import render_reference


def spine_poses(patient, n, seed=0, spread_m=0.015):
    """n poses on the back over the phantom's spine, random shifts and turns."""
    rng = np.random.default_rng(seed)
    v = patient.vertebrae[len(patient.vertebrae) // 2]
    x = v.centroid_m[0] + rng.uniform(-spread_m, spread_m, n)
    z = v.centroid_m[2] + rng.uniform(-spread_m, spread_m, n)
    return torch.tensor(skin_pose(patient, x, z, rotation_rad=rng.uniform(-0.8, 0.8, n)), dtype=torch.float32)


PROBES = {
    "linear": linear_spine(),
    "convex": convex_abdomen(),
    "linear-3-planes": linear_spine().replace(elevation_planes=3, elevation_width_m=2e-3),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_warp_matches_torch_reference(phantom_patient, name):
    probe = PROBES[name]
    model = UltrasoundModel(noise_floor_db=-50.0, seed=3)
    pose = spine_poses(phantom_patient, 4, seed=1)
    idx = torch.zeros(4, dtype=torch.long)
    sensor = UltrasoundSensor([phantom_patient], probe, 4, model=model)
    images = sensor.update(pose, idx).clone()
    ref_images, ref_envelope = render_reference([phantom_patient], probe, pose, idx, model=model)
    assert images.shape == ref_images.shape == (4, *probe.image_size)
    diff = (images - ref_images).abs()
    assert diff.mean() < 1e-4 and diff.max() < 5e-3, (diff.mean(), diff.max())
    rel = (sensor.envelope - ref_envelope).abs().sum() / ref_envelope.abs().sum()
    assert rel < 1e-4
    assert images.std() > 0.05  # a real picture, not a blank one


def test_outputs_shapes_ranges_and_label_slices(phantom_patient):
    probe = linear_spine()
    pose = spine_poses(phantom_patient, 3)
    sensor = UltrasoundSensor([phantom_patient], probe, 3, label_slices=True)
    images = sensor.update(pose, torch.zeros(3, dtype=torch.int32))
    assert images is sensor.images and images.dtype == torch.float32 and images.shape == (3, 200, 150)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert sensor.envelope.shape == (3, 200, 150) and bool((sensor.envelope >= 0).all())
    # Label slice: nearest voxel under each pixel, recomputed with numpy.
    pixels = probe.pixel_positions()  # [H, W, 3] probe frame
    rot = matrix_from_quat(pose[0, 3:].double().numpy())
    world = pose[0, :3].double().numpy() + pixels @ rot.T
    vox = np.floor(world / phantom_patient.spacing_m + 0.5).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(phantom_patient.shape)), -1)
    expected = np.zeros(pixels.shape[:2], np.uint8)
    expected[inside] = phantom_patient.labels[tuple(vox[inside].T)]
    agree = (sensor.labels[0].numpy() == expected).mean()
    assert agree > 0.999
    assert (expected > 0).mean() > 0.02  # the slice does cut through labelled anatomy


def test_threads_and_repeat_are_bit_identical(phantom_patient):
    pose = spine_poses(phantom_patient, 6)
    idx = torch.zeros(6, dtype=torch.long)
    one = UltrasoundSensor([phantom_patient], linear_spine(), 6, num_threads=1).update(pose, idx).clone()
    sensor = UltrasoundSensor([phantom_patient], linear_spine(), 6, num_threads=3)
    assert len(sensor._chunks) == 3
    assert torch.equal(sensor.update(pose, idx), one)
    assert torch.equal(sensor.update(pose, idx), one)


def test_packed_patients_render_like_single(phantom_patient):
    from sonogym.anatomy.patient import Patient

    other = Patient.from_phantom(1, iso_spacing_m=2e-3, small=True)
    pose = spine_poses(phantom_patient, 4, seed=2)
    both = UltrasoundSensor([phantom_patient, other], linear_spine(), 4)
    mixed = both.update(pose, torch.tensor([0, 1, 0, 1])).clone()
    only_other = UltrasoundSensor([other], linear_spine(), 4).update(pose, torch.zeros(4, dtype=torch.long))
    only_first = UltrasoundSensor([phantom_patient], linear_spine(), 4).update(pose, torch.zeros(4, dtype=torch.long))
    assert torch.equal(mixed[1::2], only_other[1::2])
    assert torch.equal(mixed[0::2], only_first[0::2])
    assert not torch.equal(mixed[1], only_first[1])
    mem = both.memory_bytes
    voxels = np.prod(phantom_patient.shape) + np.prod(other.shape)
    assert mem["patients"] == voxels  # one byte per voxel, no noise fields
    assert mem["per_env"] < 2_000_000


def test_bad_input_errors(phantom_patient):
    sensor = UltrasoundSensor([phantom_patient], linear_spine(), 2)
    good = spine_poses(phantom_patient, 2)
    idx = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        sensor.update(good[:, :6], idx)
    with pytest.raises(ValueError, match="NaN"):
        sensor.update(torch.where(torch.arange(7) == 0, torch.nan, good), idx)
    zero_q = good.clone()
    zero_q[1, 3:] = 0
    with pytest.raises(ValueError, match="zero-norm quaternion"):
        sensor.update(zero_q, idx)
    with pytest.raises(IndexError, match="1 patient"):
        sensor.update(good, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sensor runs on cpu"):
        sensor.update(good.to("meta"), idx)
    with pytest.raises(TypeError, match="integer"):
        sensor.update(good, idx.float())
    with pytest.raises(ValueError, match="depth_m"):
        ProbeLinear(depth_m=-0.01)
    with pytest.raises(ValueError, match="fov_rad"):
        ProbeConvex(fov_rad=3.5)
    with pytest.raises(ValueError, match="speckle_cell_m"):
        UltrasoundModel(speckle_cell_m=-1)
    with pytest.raises(TypeError, match="ProbeLinear or ProbeConvex"):
        UltrasoundSensor([phantom_patient], "linear", 2)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            UltrasoundSensor([phantom_patient], linear_spine(), 2, device="cuda")


def test_import_is_light():
    code = "import sys, sonogym.ultrasound; assert 'warp' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(phantom_patient):
    pose = spine_poses(phantom_patient, 8)
    idx = torch.zeros(8, dtype=torch.long)
    cpu = UltrasoundSensor([phantom_patient], linear_spine(), 8).update(pose, idx)
    gpu = UltrasoundSensor([phantom_patient], linear_spine(), 8, device="cuda").update(pose.cuda(), idx.cuda()).cpu()
    assert (cpu - gpu).abs().mean() < 1e-3
