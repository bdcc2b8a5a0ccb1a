"""Physical checks of the B-mode model (sonogym/ultrasound) against closed-form acoustics.

Every test renders generated phantoms (homogeneous blocks, layers, plates, beads; see
``tests/us_phantoms.py``) with :class:`~sonogym.ultrasound.sensor.UltrasoundSensor` on the CPU and
compares what comes out with the physics the model claims to implement:

1. fully developed speckle has Rayleigh envelope statistics, mean / std = sqrt(pi / (4 - pi));
2. with TGC off the mean echo falls with depth at 2 alpha f dB/cm;
3. a flat interface normal to the beam echoes with intensity proportional to
   R = ((Z2 - Z1) / (Z2 + Z1))**2, and less when tilted (R cos**p for a tilt out of the image plane);
4. bone casts an acoustic shadow;
5. a point-like target appears at the pixel the probe geometry predicts, for both probes and for
   rotated and tilted poses;
6. rendering is deterministic and the speckle is fixed in the tissue (it moves with the probe);
7. a probe held in air shows (almost) nothing.

Tolerances are the physical spec's (10 % for statistics, slopes and ratios, 1 px for geometry).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sonogym.anatomy.tissues import TissueTable
from sonogym.ultrasound import UltrasoundModel, convex_abdomen, linear_spine
from sonogym.ultrasound.sensor import UltrasoundSensor
from us_phantoms import Builder, custom_table, pose, pose_seeing, rotation

RAYLEIGH_MEAN_OVER_STD = math.sqrt(math.pi / (4.0 - math.pi))  # 1.913


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def shipped() -> TissueTable:
    return TissueTable.load()


@pytest.fixture(scope="module")
def no_scatter(tmp_path_factory) -> TissueTable:
    """The shipped table with every class anechoic (scatter_amplitude 0): only interface echoes."""
    names = TissueTable.load().names
    return custom_table(tmp_path_factory.mktemp("no_scatter"), {n: {"scatter_amplitude": 0.0} for n in names})


def render(volume, probe, poses, *, model=None, tissues=None, device="cpu"):
    """(images, envelope) as numpy [N, H, W] for poses [N, 7] on one volume."""
    poses = np.asarray(poses, np.float64)
    n = len(poses)
    sensor = UltrasoundSensor([volume], probe, n, device=device, model=model, tissues=tissues)
    images = sensor.update(torch.tensor(poses, dtype=torch.float32, device=device), torch.zeros(n, dtype=torch.int64, device=device))
    return images.cpu().numpy().copy(), sensor.envelope.cpu().numpy().copy()


def depth_cm(probe) -> np.ndarray:
    """Depth of each image row of a linear probe [cm]."""
    return (np.arange(probe.num_samples) + 0.5) * probe.sample_step_m * 100.0


def row_of_depth(probe, depth_m: float) -> float:
    """Continuous image row of a depth below the face (linear probe): depth / step - 0.5."""
    return depth_m / probe.sample_step_m - 0.5


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    return float((a @ b) / math.sqrt((a @ a) * (b @ b)))


def class_of(tissues: TissueTable, cls: str, attr: str) -> float:
    return float(getattr(tissues, attr)[tissues.class_id(cls)])


def reflectance(tissues: TissueTable, a: str, b: str) -> float:
    za, zb = class_of(tissues, a, "impedance_mrayl"), class_of(tissues, b, "impedance_mrayl")
    return ((zb - za) / (zb + za)) ** 2


# Homogeneous block used by several tests: 100 x 60 x 90 mm at 1 mm, face 2 mm inside its top.
BLOCK_SHAPE = (100, 60, 90)
BLOCK_SPACING = 1e-3
FACE_Z = 2e-3


def block_poses(n: int, *, x_step=3.3e-3, y_step=4.1e-3) -> np.ndarray:
    """n identity-orientation poses over the block: lateral shifts and different elevation planes."""
    return np.stack([pose([50e-3 + ((i % 4) - 1.5) * x_step, 8e-3 + (i // 4) * 3 * y_step + (i % 4) * y_step, FACE_Z]) for i in range(n)])


# ----------------------------------------------------------------------------------------------
# 1. speckle statistics


def test_fully_developed_speckle_is_rayleigh(tmp_path) -> None:
    """Envelope mean / std in homogeneous tissue of scatterer density 1 is 1.91 (Rayleigh) +- 10 %."""
    tissues = custom_table(tmp_path, {"soft_tissue": {"scatterer_density": 1.0}})
    probe = linear_spine()
    volume = Builder(BLOCK_SHAPE, BLOCK_SPACING).build(tissues)
    _, env = render(volume, probe, block_poses(16), model=UltrasoundModel(tgc_db_cm_mhz=0.0), tissues=tissues)
    region = env[:, 25:175, 10:140]  # 1..7 cm deep, away from the face and the lateral edges
    # Attenuation makes the mean fall with depth; normalise each depth by its mean over lines and poses.
    normalised = region / region.mean(axis=(0, 2), keepdims=True)
    ratio = normalised.mean() / normalised.std()
    print(f"speckle mean/std = {ratio:.4f} (Rayleigh {RAYLEIGH_MEAN_OVER_STD:.4f})")
    assert ratio == pytest.approx(RAYLEIGH_MEAN_OVER_STD, rel=0.10)


# ----------------------------------------------------------------------------------------------
# 2. attenuation


@pytest.mark.parametrize("cls", ["soft_tissue", "muscle"])
def test_attenuation_slope_is_two_alpha_f(shipped, cls) -> None:
    """With TGC off, 20 log10(mean envelope) falls at 2 alpha f dB/cm (alpha of the class) +- 10 %."""
    probe = linear_spine()
    volume = Builder(BLOCK_SHAPE, BLOCK_SPACING, fill=cls).build(shipped)
    _, env = render(volume, probe, block_poses(16), model=UltrasoundModel(tgc_db_cm_mhz=0.0), tissues=shipped)
    profile = env[:, :, 10:140].mean(axis=(0, 2))
    rows = slice(25, 180)  # 1.0 .. 7.2 cm, away from the face (dead zone, PSF edge)
    slope = np.polyfit(depth_cm(probe)[rows], 20.0 * np.log10(profile[rows]), 1)[0]
    expected = -2.0 * class_of(shipped, cls, "attenuation_db_cm_mhz") * probe.frequency_mhz
    print(f"{cls}: slope {slope:.3f} dB/cm, expected {expected:.3f} (ratio {slope / expected:.4f})")
    assert slope == pytest.approx(expected, rel=0.10)


# ----------------------------------------------------------------------------------------------
# 3. reflection

INTERFACE_Z = 30.5e-3  # boundary between voxel layers 30 and 31 of the 1 mm block


def interface_echo(volume, probe, poses, depth_m, model, tissues, columns=slice(20, 130)) -> np.ndarray:
    """Mean over lines of the squared envelope peak near ``depth_m`` (along the beam), per pose."""
    _, env = render(volume, probe, poses, model=model, tissues=tissues)
    out = []
    for n in range(len(poses)):
        r = row_of_depth(probe, depth_m[n] if np.ndim(depth_m) else depth_m)
        window = env[n, max(int(r) - 6, 0):int(r) + 7, columns]
        out.append(float((window.max(axis=0) ** 2).mean()))
    return np.array(out)


@pytest.mark.parametrize("lower", ["muscle", "bone"])
def test_interface_echo_scales_with_reflectance(no_scatter, lower) -> None:
    """Soft tissue over fat vs soft tissue over ``lower``, same depth: echo intensity ratio = R ratio +- 10 %."""
    probe = linear_spine()
    model = UltrasoundModel(tgc_db_cm_mhz=0.0)
    poses = block_poses(4)
    depth = INTERFACE_Z - FACE_Z  # same upper medium and depth: the attenuation to the interface cancels
    echoes, rs = {}, {}
    for cls in ("fat", lower):
        volume = Builder(BLOCK_SHAPE, BLOCK_SPACING).box(cls, (None, None, INTERFACE_Z - 0.2e-3), (None, None, None)).build(no_scatter)
        echoes[cls] = interface_echo(volume, probe, poses, depth, model, no_scatter).mean()
        rs[cls] = reflectance(no_scatter, "soft_tissue", cls)
    measured = echoes[lower] / echoes["fat"]
    expected = rs[lower] / rs["fat"]
    print(
        f"R(fat)={rs['fat']:.5f} R({lower})={rs[lower]:.5f}; echo I(fat)={echoes['fat']:.4e} I({lower})={echoes[lower]:.4e}; "
        f"I ratio {measured:.4f} vs R ratio {expected:.4f} ({measured / expected:.4f})"
    )
    assert measured == pytest.approx(expected, rel=0.10)


def test_tilted_interface_echo_is_weaker(no_scatter) -> None:
    """Tilting the probe lowers the interface echo (attenuation of the longer path compensated).

    Out of the image plane (about the probe's x axis) every line meets the interface at the same
    angle theta, so the echo follows the model's R |cos theta|**p (+- 10 %); in the image plane
    (about y) it must at least fall with the angle.
    """
    probe = linear_spine()
    model = UltrasoundModel(tgc_db_cm_mhz=0.0)
    alpha_db_m = 2.0 * class_of(no_scatter, "soft_tissue", "attenuation_db_cm_mhz") * probe.frequency_mhz * 100.0
    face_z, iface_z = 20e-3, 60.5e-3
    volume = Builder((100, 80, 100), BLOCK_SPACING).box("fat", (None, None, iface_z - 0.2e-3), (None, None, None)).build(no_scatter)
    angles = np.radians([0.0, 15.0, 30.0])
    d0 = iface_z - face_z
    for axis in ("x", "y"):
        poses = np.stack([pose([50e-3, 30e-3, face_z], rotation(axis, a)) for a in angles])
        depth = d0 / np.cos(angles)  # along the central line
        echo = interface_echo(volume, probe, poses, depth, model, no_scatter, columns=slice(55, 95))
        echo = echo * 10.0 ** (alpha_db_m * (depth - d0) / 10.0)  # undo the extra round-trip attenuation
        rel = echo / echo[0]
        law = np.cos(angles) ** model.specular_exponent
        print(f"tilt about {axis}: I/I0 = {np.round(rel, 4).tolist()}, cos^p = {np.round(law, 4).tolist()}")
        assert rel[1] < 0.99 and rel[2] < rel[1]
        if axis == "x":
            np.testing.assert_allclose(rel, law, rtol=0.10)


# ----------------------------------------------------------------------------------------------
# 4. shadow


def test_bone_plate_casts_shadow(shipped) -> None:
    """Below a 6 mm bone plate the mean image intensity is at most 10 % of that beside it."""
    probe = linear_spine()
    top = 20.5e-3
    volume = (
        Builder(BLOCK_SHAPE, BLOCK_SPACING)
        .box("bone", (None, None, top - 0.2e-3), (50.5e-3 - 0.2e-3, None, top + 6e-3 - 0.2e-3))  # x < 50.5 mm
        .build(shipped)
    )
    poses = block_poses(8, x_step=0.7e-3)  # face centre x = 48.95 .. 51.05 mm, the plate edge near the middle
    images, _ = render(volume, probe, poses, tissues=shipped)
    rows = slice(int(row_of_depth(probe, 35e-3 - FACE_Z)), int(row_of_depth(probe, 75e-3 - FACE_Z)))
    under = images[:, rows, 10:60].mean()  # x <= 49 mm - 8 mm: under the plate for every pose
    beside = images[:, rows, 90:140].mean()  # x >= 51 + 6 mm: beside it
    print(f"shadow: mean image under the plate {under:.4f}, beside {beside:.4f}, ratio {under / beside:.4f}")
    assert beside > 0.1
    assert under <= 0.10 * beside


# ----------------------------------------------------------------------------------------------
# 5. geometry

BEAD_SPACING = 0.5e-3
BEAD_RADIUS = 1.5e-3
BEAD_HALF = 72  # 145^3 voxels, 72 mm across


@pytest.fixture(scope="module")
def bead(no_scatter):
    """A bone bead (sphere, radius 1.5 mm at 0.5 mm voxels) in an anechoic soft-tissue cube."""
    centre = np.array([BEAD_HALF * BEAD_SPACING] * 3) + np.array([0.3, -0.2, 0.1]) * BEAD_SPACING
    volume = Builder((2 * BEAD_HALF + 1,) * 3, BEAD_SPACING).sphere("bone", centre, BEAD_RADIUS).build(no_scatter)
    bone = (no_scatter.classify(volume.labels, volume.hu) == no_scatter.class_id("bone")).astype(np.float32)
    return volume, centre, bone


def surface_depth(bone: np.ndarray, start_m: np.ndarray, direction: np.ndarray) -> float:
    """Distance from ``start_m`` along ``direction`` to the bead's surface [m].

    The surface is where the trilinear interpolation of the bone indicator reaches 1/2 (for two
    classes, the class of largest trilinear weight changes there), found on a 20 um grid and refined
    linearly. This is where a specular echo comes from.
    """
    t = np.arange(0.0, 0.1, 2e-5)
    points = (start_m[None] + t[:, None] * direction[None]) / BEAD_SPACING
    v = ndimage.map_coordinates(bone, points.T, order=1, mode="constant", cval=0.0)
    i = int(np.argmax(v >= 0.5))
    assert v[i] >= 0.5 and i > 0, "the line misses the bead"
    return float(t[i - 1] + (0.5 - v[i - 1]) / (v[i] - v[i - 1]) * (t[i] - t[i - 1]))


GEOMETRY_ROTATIONS = {
    "identity": np.eye(3),
    "about axis 30 deg": rotation("z", math.radians(30.0)),
    "tilted in plane 20 deg": rotation("y", math.radians(20.0)),
    "tilted out of plane 25 deg": rotation("x", math.radians(25.0)),
    "rotated 30 and tilted": rotation("z", math.radians(30.0)) @ rotation("x", math.radians(20.0)) @ rotation("y", math.radians(-15.0)),
}


@pytest.mark.parametrize("kind", ["linear", "convex"])
def test_target_appears_at_expected_pixel(bead, no_scatter, kind) -> None:
    """The bead's echo (envelope peak, refined by its centroid) lies within 1 px of the pixel of its
    front surface on the scan line through its centre, computed from the probe geometry."""
    volume, centre, bone = bead
    probe = linear_spine() if kind == "linear" else convex_abdomen()
    # Targets on scan lines (so that one line passes through the bead's centre), 12..30 mm deep.
    if kind == "linear":
        lines, depths = np.array([50, 105, 82]), np.array([25e-3, 18e-3, 12e-3])
        xs = (lines + 0.5 - probe.num_lines / 2) * probe.line_pitch_m
        targets = np.stack([xs, np.zeros(3), depths], 1)
    else:
        theta = probe.line_angles()[[40, 90, 64]]
        rho = probe.radius_m + np.array([25e-3, 20e-3, 30e-3])
        targets = np.stack([rho * np.sin(theta), np.zeros(3), rho * np.cos(theta) - probe.radius_m], 1)
    cases = [(name, rot, target) for name, rot in GEOMETRY_ROTATIONS.items() for target in targets]
    poses = np.stack([pose_seeing(centre, target, rot) for _, rot, target in cases])
    _, env = render(volume, probe, poses, model=UltrasoundModel(), tissues=no_scatter)

    worst = 0.0
    for n, (name, rot, target) in enumerate(cases):
        position = poses[n, :3]
        if kind == "linear":
            start = position + rot @ np.array([target[0], 0.0, 0.0])
            d = surface_depth(bone, start, rot[:, 2])
            expected = np.array([d / probe.sample_step_m - 0.5, target[0] / probe.line_pitch_m + probe.num_lines / 2 - 0.5])
        else:
            apex = np.array([0.0, 0.0, -probe.radius_m])
            direction = (target - apex) / np.linalg.norm(target - apex)
            d = surface_depth(bone, position + rot @ (apex + probe.radius_m * direction), rot @ direction)
            surface = apex + (probe.radius_m + d) * direction
            x0, _, z0, _ = probe.image_extent()
            pixel_z, pixel_x = probe.pixel_size_m()
            expected = np.array([(surface[2] - z0) / pixel_z - 0.5, (surface[0] - x0) / pixel_x - 0.5])
        r0, c0 = np.round(expected).astype(int)
        window = env[n, r0 - 10:r0 + 11, c0 - 10:c0 + 11]
        r, c = np.unravel_index(int(window.argmax()), window.shape)
        r, c = r + r0 - 10, c + c0 - 10
        w = env[n, r - 2:r + 3, c - 2:c + 3].astype(np.float64) ** 2
        gr, gc = np.mgrid[r - 2:r + 3, c - 2:c + 3]
        found = np.array([(w * gr).sum() / w.sum(), (w * gc).sum() / w.sum()])
        error = found - expected
        worst = max(worst, float(np.abs(error).max()))
        print(f"{kind} {name} target {np.round(target * 1e3, 2).tolist()} mm: expected (row, col) {np.round(expected, 2).tolist()}, "
              f"found {np.round(found, 2).tolist()}, error {np.round(error, 2).tolist()}")
        assert window.max() > 0.0
        assert np.all(np.abs(error) <= 1.0), f"{kind} {name}: target at {found} px, expected {expected} px"
    print(f"{kind}: worst error {worst:.3f} px")


# ----------------------------------------------------------------------------------------------
# 6. coherence


def test_same_pose_same_image_bit_for_bit(shipped) -> None:
    """Two updates of one sensor, and two sensors, give identical images and envelopes for one pose."""
    probe = linear_spine()
    volume = Builder(BLOCK_SHAPE, BLOCK_SPACING).box("bone", (None, None, 40e-3), (None, None, 45e-3)).build(shipped)
    poses = torch.tensor(block_poses(4), dtype=torch.float32)
    idx = torch.zeros(4, dtype=torch.int64)
    a = UltrasoundSensor([volume], probe, 4, tissues=shipped)
    first = a.update(poses, idx).clone()
    first_env = a.envelope.clone()
    a.update(poses + torch.tensor([1e-3, 0, 0, 0, 0, 0, 0]), idx)  # something else in between
    second = a.update(poses, idx).clone()
    b = UltrasoundSensor([volume], probe, 4, tissues=shipped)
    third = b.update(poses, idx).clone()
    assert torch.equal(first, second) and torch.equal(first_env, a.envelope)
    assert torch.equal(first, third) and torch.equal(first_env, b.envelope)
    assert first.std() > 0.05  # a real image, not a blank one


def test_speckle_moves_with_the_tissue(shipped) -> None:
    """A 0.1 mm lateral shift keeps the speckle (correlation > 0.8); a shift of 7 line pitches moves the
    image by 7 columns: shifted back it matches (> 0.8), unshifted it does not (< 0.2)."""
    probe = linear_spine()
    volume = Builder(BLOCK_SHAPE, BLOCK_SPACING).build(shipped)
    k = 7
    big = k * probe.line_pitch_m
    bases = [pose([50e-3, y, FACE_Z]) for y in (12e-3, 27e-3, 41e-3)]
    poses = []
    for p in bases:
        for dx in (0.0, 0.1e-3, big):
            q = p.copy()
            q[0] += dx
            poses.append(q)
    images, env = render(volume, probe, np.stack(poses), tissues=shipped)
    rows, cols = slice(25, 175), slice(20, 130)
    small_env, small_img, back, unshifted = [], [], [], []
    for b in range(len(bases)):
        e0, e1 = env[3 * b], env[3 * b + 1]
        i0, i1, i2 = images[3 * b], images[3 * b + 1], images[3 * b + 2]
        small_env.append(corr(e0[rows, cols], e1[rows, cols]))
        small_img.append(corr(i0[rows, cols], i1[rows, cols]))
        # Probe moved +x by k pitches: tissue at column c + k before is at column c now.
        back.append(corr(i0[rows, 20 + k:130 + k], i2[rows, 20:130]))
        unshifted.append(corr(i0[rows, cols], i2[rows, cols]))
    print(f"0.1 mm shift: envelope corr {np.round(small_env, 4).tolist()}, image corr {np.round(small_img, 4).tolist()}")
    print(f"{big * 1e3:.1f} mm shift: shifted back {np.round(back, 4).tolist()}, unshifted {np.round(unshifted, 4).tolist()}")
    assert min(small_env) > 0.8 and min(small_img) > 0.8
    assert min(back) > 0.8
    assert max(np.abs(unshifted)) < 0.2


# ----------------------------------------------------------------------------------------------
# 7. contact


def test_probe_in_air_sees_nothing(shipped) -> None:
    """5 mm of air between face and skin: image mean below 2 % of the mean in contact."""
    probe = linear_spine()
    skin = 10.5e-3  # tissue from voxel layer 11 down, air above
    volume = Builder(BLOCK_SHAPE, BLOCK_SPACING).box("air", (None, None, None), (None, None, skin - 0.2e-3)).build(shipped)
    contact = [pose([50e-3, y, skin + 1e-3]) for y in (15e-3, 30e-3)]  # face pressed 1 mm into the skin
    lifted = [pose([50e-3, y, skin - 5e-3]) for y in (15e-3, 30e-3)]  # 5 mm of air under the face
    images, _ = render(volume, probe, np.stack(contact + lifted), tissues=shipped)
    in_contact, in_air = images[:2].mean(), images[2:].mean()
    print(f"contact: image mean {in_contact:.4f}; 5 mm air gap: {in_air:.5f} ({in_air / in_contact:.2%}); "
          f"brightest rows in air: {np.argsort(images[2:].mean(axis=(0, 2)))[::-1][:4].tolist()}")
    assert in_contact > 0.2
    assert in_air < 0.02 * in_contact


# ----------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(shipped) -> None:
    """The same scene on CUDA gives images close to the CPU's (float rounding only)."""
    probe = linear_spine()
    volume = (
        Builder(BLOCK_SHAPE, BLOCK_SPACING)
        .box("bone", (None, None, 30e-3), (50e-3, None, 36e-3))
        .box("muscle", (60e-3, None, 15e-3), (None, None, 45e-3))
        .build(shipped)
    )
    poses = block_poses(8)
    poses[4:, 3:] = pose([0, 0, 0], rotation("z", 0.3) @ rotation("x", 0.2))[3:]
    cpu_images, cpu_env = render(volume, probe, poses, tissues=shipped)
    gpu_images, gpu_env = render(volume, probe, poses, tissues=shipped, device="cuda")
    diff = np.abs(cpu_images - gpu_images)
    print(f"cuda vs cpu: mean |diff| {diff.mean():.2e}, max {diff.max():.2e}, fraction > 1e-3: {(diff > 1e-3).mean():.2e}")
    assert diff.mean() < 1e-4
    assert (diff > 1e-3).mean() < 1e-3
    np.testing.assert_allclose(gpu_env, cpu_env, rtol=1e-3, atol=1e-6 * cpu_env.max())
