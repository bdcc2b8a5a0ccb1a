"""A readable torch implementation of the B-mode model, for tests and as the benchmark baseline.

It computes what :class:`~sonogym.ultrasound.sensor.UltrasoundSensor` computes with Warp kernels
(the model is in :mod:`sonogym.ultrasound`), with whole-tensor operations over
``[envs, planes, lines, samples]`` instead of a loop per line: the running products along a line
(transmission, attenuation) become cumulative products. It is slow and uses a lot of memory; render
in small batches (``chunk``).

    images, envelope = render_reference(patients, probe, pose, patient_idx)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from sonogym.anatomy.tissues import TissueTable
from sonogym.ultrasound import model as m
from sonogym.ultrasound.model import PackedPatients, UltrasoundModel, class_tables
from sonogym.ultrasound.probes import ProbeConvex, ProbeLinear, elevation_offsets

_U32 = 0xFFFFFFFF
_CORNERS = torch.tensor([[a & 1, (a >> 1) & 1, (a >> 2) & 1] for a in range(8)])  # [8, 3], corner a = dx + 2 dy + 4 dz


def rotation_matrices(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of quaternions (w, x, y, z) [N, 4] (normalised here)."""
    q = quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).view(-1, 3, 3)


def corner_classes(packed: PackedPatients, volume: torch.Tensor, patient: torch.Tensor, base: torch.Tensor, air: int) -> torch.Tensor:
    """Classes of the 8 corners of the cells at integer voxel ``base`` [..., 3] -> [..., 8]; air outside."""
    dims = torch.as_tensor(packed.dims, dtype=torch.int64)[patient]  # [..., 3]
    offsets = torch.as_tensor(packed.offsets, dtype=torch.int64)[patient]
    idx = base[..., None, :] + _CORNERS  # [..., 8, 3]
    inside = ((idx >= 0) & (idx < dims[..., None, :])).all(-1)
    idx = torch.where(inside[..., None], idx, torch.zeros_like(idx))
    flat = offsets[..., None] + (idx[..., 0] * dims[..., None, 1] + idx[..., 1]) * dims[..., None, 2] + idx[..., 2]
    classes = (volume[flat] & m.CLASS_MASK).long()
    return torch.where(inside, classes, torch.full_like(classes, air))


def corner_weights(frac: torch.Tensor) -> torch.Tensor:
    """Trilinear weights of the 8 cell corners [..., 8] for fractional positions [..., 3]."""
    c = _CORNERS.to(frac.dtype)
    return torch.where(c == 1, frac[..., None, :], 1 - frac[..., None, :]).prod(-1)


def majority_class(classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class with the largest total weight among the corners (first corner wins ties) [...]."""
    same = classes[..., :, None] == classes[..., None, :]  # [..., 8, 8]
    total = (same * weights[..., None, :]).sum(-1)
    return classes.gather(-1, total.argmax(-1, keepdim=True)).squeeze(-1)


def indicator_gradient(classes: torch.Tensor, frac: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Gradient [..., 3] (voxel units) of the trilinear indicator of class ``cls`` [...] in the cell."""
    c = _CORNERS.to(frac.dtype)
    w = torch.where(c == 1, frac[..., None, :], 1 - frac[..., None, :])  # per-axis weights [..., 8, 3]
    sign = 2 * c - 1
    member = (classes == cls[..., None]).to(frac.dtype)  # [..., 8]
    grads = torch.stack(
        [sign[:, 0] * w[..., 1] * w[..., 2], sign[:, 1] * w[..., 0] * w[..., 2], sign[:, 2] * w[..., 0] * w[..., 1]], -1
    )
    return (member[..., None] * grads).sum(-2)


def _hash_finish(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * m.HASH_M1) & _U32
    h = h ^ (h >> 15)
    h = (h * m.HASH_M2) & _U32
    return h ^ (h >> 16)


def speckle(q: torch.Tensor, seed: int, threshold: torch.Tensor) -> torch.Tensor:
    """Complex scatterer field [..., 2] at lattice coordinates q [..., 3] (see kernels.speckle)."""
    floor = torch.floor(q)
    frac = q - floor
    cell = floor.long() & _U32
    steps = torch.tensor([m.HASH_X, m.HASH_Y, m.HASH_Z], dtype=torch.int64)
    h0 = ((cell * steps).sum(-1) + (seed * m.HASH_SEED & _U32)) & _U32
    # Kuhn tetrahedron: walk the axes in descending order of their fractions (stable for ties).
    order = torch.sort(frac, dim=-1, descending=True, stable=True).indices
    f = frac.gather(-1, order)  # [..., 3] sorted
    step = steps[order]
    h1 = (h0 + step[..., 0]) & _U32
    h2 = (h1 + step[..., 1]) & _U32
    h3 = (h2 + step[..., 2]) & _U32
    weights = torch.stack([1 - f[..., 0], f[..., 0] - f[..., 1], f[..., 1] - f[..., 2], f[..., 2]], -1)
    h = _hash_finish(torch.stack([h0, h1, h2, h3], -1))  # [..., 4]
    re = (h & 127).float() + ((h >> 7) & 127).float() - 127.0
    im = ((h >> 14) & 127).float() + ((h >> 21) & 127).float() - 127.0
    on = ((h >> 28) < threshold[..., None]).float() / math.sqrt(2 * (128.0**2 - 1) / 12)
    return torch.stack([(re * on * weights).sum(-1), (im * on * weights).sum(-1)], -1)


def gaussian_filter(x: torch.Tensor, weights: np.ndarray, dim: int) -> torch.Tensor:
    """Convolve x with symmetric taps along ``dim``, zero outside."""
    radius = len(weights) // 2
    out = torch.zeros_like(x)
    size = x.shape[dim]
    for a, w in enumerate(weights):
        shift = a - radius  # out[i] += w * x[i + shift]
        if w == 0 or abs(shift) >= size:
            continue
        src = x.narrow(dim, max(shift, 0), size - abs(shift))
        out.narrow(dim, max(-shift, 0), size - abs(shift)).add_(src, alpha=float(w))
    return out


def echo_lines(packed, volume, tables, probe, model, pose, patient_idx) -> torch.Tensor:
    """Complex echo amplitudes before the PSF, [N, L, S, 2]."""
    n = pose.shape[0]
    origins, directions = (torch.as_tensor(a, dtype=torch.float32) for a in probe.line_geometry())
    elevation = torch.as_tensor(elevation_offsets(probe), dtype=torch.float32)
    rot = rotation_matrices(pose[:, 3:])
    num_samples = int(probe.num_samples)
    t = (torch.arange(num_samples, dtype=torch.float32) + 0.5) * probe.sample_step_m  # [S]
    direction = torch.einsum("nij,lj->nli", rot, directions)  # [N, L, 3]
    y_axis = rot[:, :, 1]
    start = pose[:, None, None, :3] + torch.einsum("nij,lj->nli", rot, origins)[:, None] + elevation[None, :, None, None] * y_axis[:, None, None]
    x = start[..., None, :] + direction[:, None, :, None, :] * t[:, None]  # [N, E, L, S, 3] patient frame [m]
    inv_spacing = (1.0 / torch.as_tensor(packed.spacing_m)[patient_idx]).view(n, 1, 1, 1)  # float32, as the kernel
    u = x * inv_spacing[..., None]
    base = torch.floor(u).long()
    frac = u - torch.floor(u)
    pid = patient_idx.view(n, 1, 1, 1).expand(u.shape[:-1])
    corners = corner_classes(packed, volume, pid, base, tables.air_class)  # [N, E, L, S, 8]
    cls = majority_class(corners, corner_weights(frac))  # [N, E, L, S]

    # Air in the first samples, before any tissue, is coupling gel if the face touches tissue at its
    # first, middle or last line.
    gel_samples = int(math.ceil(model.gel_m / probe.sample_step_m - 0.5))
    ends = torch.tensor([0, probe.num_lines // 2, probe.num_lines - 1])
    face = pose[:, None, :3] + torch.einsum("nij,kj->nki", rot, origins[ends] + directions[ends] * (0.5 * probe.sample_step_m))
    u_face = face * inv_spacing.view(n, 1, 1)
    face_cls = majority_class(
        corner_classes(packed, volume, patient_idx.view(n, 1).expand(n, 3), torch.floor(u_face).long(), tables.air_class),
        corner_weights(u_face - torch.floor(u_face)),
    )
    contact = (face_cls != tables.air_class).any(-1).view(n, 1, 1, 1)
    gel_samples = torch.where(contact, gel_samples, 0)
    leading_air = torch.cumprod((cls == tables.air_class).long(), dim=-1).bool()
    cls = torch.where(leading_air & (torch.arange(num_samples) < gel_samples), torch.full_like(cls, tables.gel_class), cls)

    impedance = torch.as_tensor(tables.impedance)[cls]
    previous = torch.cat([torch.full_like(impedance[..., :1], float(tables.impedance[tables.gel_class])), impedance[..., :-1]], -1)
    prev_cls = torch.cat([torch.full_like(cls[..., :1], tables.gel_class), cls[..., :-1]], -1)
    change = cls != prev_cls
    reflectance = torch.where(change, ((impedance - previous) / (impedance + previous)) ** 2, torch.zeros_like(impedance))

    # Incidence: gradient of the new class's indicator here, else in the previous sample's cell.
    grad = indicator_gradient(corners, frac, cls)
    prev_corners = torch.cat([corners[..., :1, :], corners[..., :-1, :]], -2)
    u_start = start * inv_spacing
    prev_frac = torch.cat([(u_start - torch.floor(u_start))[..., None, :], frac[..., :-1, :]], -2)
    prev_corners[..., 0, :] = corner_classes(packed, volume, pid[..., 0], torch.floor(u_start).long(), tables.air_class)
    grad_prev = indicator_gradient(prev_corners, prev_frac, cls)
    small = (grad * grad).sum(-1, keepdim=True) < 1e-12
    grad = torch.where(small, grad_prev, grad)
    gg = (grad * grad).sum(-1)
    dirs = direction[:, None, :, None, :]
    cosine = torch.where(gg >= 1e-12, (grad * dirs).sum(-1).abs() / gg.clamp_min(1e-30).sqrt(), torch.ones_like(gg))
    echo = reflectance.sqrt() * cosine ** (model.specular_exponent / 2)
    echo[..., 0] = 0.0  # the lens interface is in the dead zone

    transmission_after = torch.cumprod(1 - reflectance, -1)
    transmission_before = torch.cat([torch.ones_like(transmission_after[..., :1]), transmission_after[..., :-1]], -1)
    amplitude = torch.cumprod(torch.as_tensor(tables.attenuation_step)[cls], -1)

    q = x * torch.tensor(1.0 / model.speckle_cell_m, dtype=torch.float32)
    scatter = speckle(q, int(model.seed), torch.as_tensor(tables.density_threshold)[cls])
    gain = torch.as_tensor(tables.scatter_gain)[cls]
    value = scatter * (gain * transmission_after * amplitude)[..., None]
    amplitude_before = torch.cat([torch.ones_like(amplitude[..., :1]), amplitude[..., :-1]], -1)
    value[..., 0] += echo * transmission_before * amplitude_before  # the interface echo, before this sample's attenuation

    # A line is cut off after the first sample whose round-trip amplitude is below DEAD_AMPLITUDE.
    alive = transmission_after * amplitude >= m.DEAD_AMPLITUDE
    keep = torch.cat([torch.ones_like(alive[..., :1]), torch.cumprod(alive.long(), -1)[..., :-1].bool()], -1)
    value = value * keep[..., None]
    return value.mean(1)  # coherent average over elevation planes -> [N, L, S, 2]


def render_reference(
    patients: Sequence | PackedPatients,
    probe: ProbeLinear | ProbeConvex,
    pose: torch.Tensor,
    patient_idx: torch.Tensor,
    *,
    model: UltrasoundModel | None = None,
    tissues: TissueTable | None = None,
    chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B-mode images and envelopes [N, H, W] for poses [N, 7] on CPU, ``chunk`` envs at a time."""
    from sonogym.ultrasound.sensor import psf_weights

    model = model or UltrasoundModel()
    tissues = tissues or TissueTable.load()
    packed = patients if isinstance(patients, PackedPatients) else PackedPatients.from_patients(patients, tissues)
    tables = class_tables(tissues, probe, model)
    volume = torch.from_numpy(packed.classes.astype(np.int64))
    pose = pose.detach().to("cpu", torch.float32)
    patient_idx = patient_idx.detach().to("cpu", torch.int64)
    sigma_axial, sigma_lateral = probe.psf_sigma_px()
    w_axial, w_lateral = psf_weights(sigma_axial), psf_weights(sigma_lateral)
    tgc_db_per_m = model.tgc_db_per_m(probe.frequency_mhz)
    floor = model.noise_floor_amplitude()
    images, envelopes = [], []
    for start in range(0, pose.shape[0], chunk):
        sl = slice(start, start + chunk)
        iq = echo_lines(packed, volume, tables, probe, model, pose[sl], patient_idx[sl])  # [n, L, S, 2]
        iq = gaussian_filter(iq, w_axial, dim=2)
        iq = gaussian_filter(iq, w_lateral, dim=1)
        env = torch.linalg.vector_norm(iq, dim=-1).transpose(1, 2)  # [n, S, L]
        if isinstance(probe, ProbeLinear):
            depth = (torch.arange(probe.num_samples, dtype=torch.float32) + 0.5) * probe.sample_step_m
            env = env * torch.exp(tgc_db_per_m * depth / (20 / math.log(10)))[:, None]
            if floor > 0:
                env = torch.sqrt(env * env + floor * floor)
        else:
            env = scan_convert(env, probe, tgc_db_per_m, floor)
        level = 20 * torch.log10(env.clamp_min(1e-30)) + model.gain_db
        img = (1 + level / model.dynamic_range_db).clamp(0, 1)
        if not isinstance(probe, ProbeLinear):
            img = torch.where(env > 0, img, torch.zeros_like(img))
        images.append(img)
        envelopes.append(env)
    return torch.cat(images), torch.cat(envelopes)


def scan_conversion_map(probe: ProbeConvex, tgc_db_per_m: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each Cartesian pixel of a convex image reads the polar grid [S, L].

    Returns (source int32 [H * W]: flat index s0 * L + l0 of the bilinear cell's first corner, -1
    outside the sector; weights float32 [H * W, 2]: (line, sample) fractions; gain float32 [H * W]:
    TGC at the pixel's depth along its line).
    """
    x0, _, z0, _ = probe.image_extent()
    pixel_z, pixel_x = probe.pixel_size_m()
    height, width = probe.image_size
    x = x0 + (torch.arange(width, dtype=torch.float32) + 0.5) * pixel_x
    z = z0 + (torch.arange(height, dtype=torch.float32) + 0.5) * pixel_z
    xx, zr = torch.broadcast_tensors(x[None, :], z[:, None] + probe.radius_m)  # [H, W]
    rho = torch.sqrt(xx**2 + zr**2) - probe.radius_m
    theta = torch.atan2(xx, zr)
    num_lines, num_samples = probe.num_lines, probe.num_samples
    lf = (theta + 0.5 * probe.fov_rad) / (probe.fov_rad / num_lines) - 0.5
    sf = rho / probe.sample_step_m - 0.5
    inside = (lf >= -0.5) & (lf <= num_lines - 0.5) & (sf >= -0.5) & (sf <= num_samples - 0.5)
    lc = lf.clamp(0, num_lines - 1)
    sc = sf.clamp(0, num_samples - 1)
    l0 = lc.long().clamp(max=num_lines - 2)
    s0 = sc.long().clamp(max=num_samples - 2)
    source = torch.where(inside, s0 * num_lines + l0, torch.full_like(l0, -1)).to(torch.int32)
    weights = torch.stack([lc - l0, sc - s0], -1)
    gain = torch.exp(tgc_db_per_m * rho.clamp_min(0) / (20 / math.log(10)))
    return source.flatten(), weights.reshape(-1, 2), gain.flatten()


def scan_convert(polar: torch.Tensor, probe: ProbeConvex, tgc_db_per_m: float, floor: float) -> torch.Tensor:
    """Polar envelope [n, S, L] -> Cartesian envelope [n, H, W] with TGC and noise floor; 0 outside the sector."""
    source, weights, gain = scan_conversion_map(probe, tgc_db_per_m)
    inside = source >= 0
    k = source.clamp_min(0).long()
    flat = polar.flatten(1)  # [n, S * L]
    num_lines = probe.num_lines
    tl, ts = weights[:, 0], weights[:, 1]
    top = flat[:, k] * (1 - tl) + flat[:, k + 1] * tl
    bottom = flat[:, k + num_lines] * (1 - tl) + flat[:, k + num_lines + 1] * tl
    env = (top * (1 - ts) + bottom * ts) * gain
    env = torch.sqrt(env * env + floor * floor)
    env = torch.where(inside, env, torch.zeros_like(env))
    return env.view(polar.shape[0], *probe.image_size)
