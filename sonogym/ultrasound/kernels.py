"""Warp kernels of the B-mode model (see :mod:`sonogym.ultrasound` for the model).

Module-level kernels, compiled once per device and cached by Warp. Buffers are flat 1-D arrays
indexed by hand, and loops run inside a thread (a line or an image row), which is several times
faster on Warp's CPU back end than one thread per pixel with 3-D indexing. Every kernel takes an ``env0``
offset so that the CPU path can split a batch into chunks rendered on several threads (Warp's CPU
launches release the GIL). Inputs come before outputs. The torch reference in
:mod:`sonogym.ultrasound.reference` computes the same thing, operation for operation.

Pipeline for a batch of N envs:

1. :func:`march_lines` (one thread per env and scan line): tissue class, attenuation, interface
   echoes and speckle along the line -> complex echo amplitudes ``iq [N, L, S]`` (vec2), then the
   axial Gaussian PSF -> ``iq_axial [N, S, L]``.
2. :func:`lateral_psf_envelope` (one thread per env and sample row): lateral PSF and envelope
   ``|iq|``. Linear probes then apply TGC and log compression and write the image directly; convex
   probes write the polar envelope ``[N, S, L]`` for
3. :func:`scan_convert` (per env and image pixel): bilinear polar -> Cartesian, TGC, log compression.
4. :func:`label_slice` (per env and pixel, optional): nearest TotalSegmentator label under each pixel.
"""

from __future__ import annotations

import warp as wp

from sonogym.ultrasound import model as _m

wp.set_module_options({"fast_math": True, "optimization_level": 3})

HX = wp.constant(wp.uint32(_m.HASH_X))
HY = wp.constant(wp.uint32(_m.HASH_Y))
HZ = wp.constant(wp.uint32(_m.HASH_Z))
HM1 = wp.constant(wp.uint32(_m.HASH_M1))
HM2 = wp.constant(wp.uint32(_m.HASH_M2))
DEAD_AMPLITUDE = wp.constant(_m.DEAD_AMPLITUDE)
NODE_SCALE = wp.constant(1.0 / (2.0 * (128.0**2 - 1.0) / 12.0) ** 0.5)
DB_PER_NEPER = wp.constant(8.685889638065035)  # 20 / ln(10)

PSF_RADIUS = wp.constant(_m.PSF_RADIUS)
PSF_TAPS = wp.constant(2 * _m.PSF_RADIUS + 1)
vec9f = wp.types.vector(length=2 * _m.PSF_RADIUS + 1, dtype=wp.float32)
vec8i = wp.types.vector(length=8, dtype=wp.int32)
vec8f = wp.types.vector(length=8, dtype=wp.float32)


@wp.func
def pose_rotation(pose: wp.array2d(dtype=float), e: int) -> wp.mat33:
    """Rotation matrix (probe -> patient) of env e's pose ``[px, py, pz, qw, qx, qy, qz]``."""
    w = pose[e, 3]
    x = pose[e, 4]
    y = pose[e, 5]
    z = pose[e, 6]
    inv = 1.0 / wp.sqrt(w * w + x * x + y * y + z * z)
    w = w * inv
    x = x * inv
    y = y * inv
    z = z * inv
    return wp.mat33(
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )


@wp.func
def corner_class(classes: wp.array(dtype=wp.uint8), off: int, dims: wp.vec3i, i: int, j: int, k: int, air: int) -> int:
    """Tissue class of voxel (i, j, k); air outside the volume."""
    c = air
    if i >= 0 and j >= 0 and k >= 0 and i < dims[0] and j < dims[1] and k < dims[2]:
        c = int(classes[off + (i * dims[1] + j) * dims[2] + k]) & 127
    return c


@wp.func
def mixed_cell_class(classes: wp.array(dtype=wp.uint8), off: int, dims: wp.vec3i, u: wp.vec3, air: int) -> int:
    """Class at voxel coordinate u in a mixed cell (or at the volume border): the class with the
    largest total trilinear weight among the 8 corners of u's cell; the first corner wins a tie."""
    fx = wp.floor(u[0])
    fy = wp.floor(u[1])
    fz = wp.floor(u[2])
    i = int(fx)
    j = int(fy)
    k = int(fz)
    tx = u[0] - fx
    ty = u[1] - fy
    tz = u[2] - fz
    cs = vec8i()
    ws = vec8f()
    for a in range(8):
        dx = a & 1
        dy = (a >> 1) & 1
        dz = (a >> 2) & 1
        cs[a] = corner_class(classes, off, dims, i + dx, j + dy, k + dz, air)
        ws[a] = wp.where(dx == 1, tx, 1.0 - tx) * wp.where(dy == 1, ty, 1.0 - ty) * wp.where(dz == 1, tz, 1.0 - tz)
    best = float(-1.0)
    result = air
    for a in range(8):
        total = float(0.0)
        for b in range(8):
            if cs[b] == cs[a]:
                total = total + ws[b]
        if total > best:
            best = total
            result = cs[a]
    return result


@wp.func
def contact_class(classes: wp.array(dtype=wp.uint8), off: int, dims: wp.vec3i, u: wp.vec3, air: int) -> int:
    """Class at voxel coordinate u, by the same rule as the march (uniform cell or majority)."""
    i = int(wp.floor(u[0]))
    j = int(wp.floor(u[1]))
    k = int(wp.floor(u[2]))
    c = int(-1)
    if i >= 0 and j >= 0 and k >= 0 and i < dims[0] - 1 and j < dims[1] - 1 and k < dims[2] - 1:
        c = int(classes[off + (i * dims[1] + j) * dims[2] + k])
    if c < 0 or c >= 128:
        c = mixed_cell_class(classes, off, dims, u, air)
    return c


@wp.func
def class_gradient(classes: wp.array(dtype=wp.uint8), off: int, dims: wp.vec3i, u: wp.vec3, cls: int, air: int) -> wp.vec3:
    """Gradient (voxel units) of the trilinear indicator of class ``cls`` inside u's cell."""
    fx = wp.floor(u[0])
    fy = wp.floor(u[1])
    fz = wp.floor(u[2])
    i = int(fx)
    j = int(fy)
    k = int(fz)
    tx = u[0] - fx
    ty = u[1] - fy
    tz = u[2] - fz
    g = wp.vec3(0.0, 0.0, 0.0)
    for a in range(8):
        dx = a & 1
        dy = (a >> 1) & 1
        dz = (a >> 2) & 1
        if corner_class(classes, off, dims, i + dx, j + dy, k + dz, air) == cls:
            wx = wp.where(dx == 1, tx, 1.0 - tx)
            wy = wp.where(dy == 1, ty, 1.0 - ty)
            wz = wp.where(dz == 1, tz, 1.0 - tz)
            sx = wp.where(dx == 1, 1.0, -1.0)
            sy = wp.where(dy == 1, 1.0, -1.0)
            sz = wp.where(dz == 1, 1.0, -1.0)
            g = g + wp.vec3(sx * wy * wz, wx * sy * wz, wx * wy * sz)
    return g


@wp.func
def hash_finish(h: wp.uint32) -> wp.uint32:
    h = h ^ (h >> wp.uint32(16))
    h = h * HM1
    h = h ^ (h >> wp.uint32(15))
    h = h * HM2
    return h ^ (h >> wp.uint32(16))


@wp.func
def node_value(h: wp.uint32, threshold: int) -> wp.vec2:
    """Complex scatterer of a lattice node: zero-mean, unit variance per component (triangular)."""
    re = float(h & wp.uint32(127)) + float((h >> wp.uint32(7)) & wp.uint32(127)) - 127.0
    im = float((h >> wp.uint32(14)) & wp.uint32(127)) + float((h >> wp.uint32(21)) & wp.uint32(127)) - 127.0
    on = wp.where(int(h >> wp.uint32(28)) < threshold, NODE_SCALE, 0.0)
    return wp.vec2(re * on, im * on)


@wp.func
def speckle(q: wp.vec3, seed_hash: wp.uint32, threshold: int) -> wp.vec2:
    """Scatterer field at lattice coordinate q (patient frame / cell size): the node values of
    q's lattice cell interpolated over the tetrahedron (Kuhn split) that contains q. Continuous in
    q, so the field is fixed in the patient frame and moves with the tissue."""
    fx = wp.floor(q[0])
    fy = wp.floor(q[1])
    fz = wp.floor(q[2])
    h = wp.uint32(int(fx)) * HX + wp.uint32(int(fy)) * HY + wp.uint32(int(fz)) * HZ + seed_hash
    a = q[0] - fx
    b = q[1] - fy
    c = q[2] - fz
    oa = HX
    ob = HY
    oc = HZ
    # Sort the fractions in descending order (stable), carrying the lattice step of each axis.
    if b > a:
        t = a
        a = b
        b = t
        o = oa
        oa = ob
        ob = o
    if c > b:
        t = b
        b = c
        c = t
        o = ob
        ob = oc
        oc = o
        if b > a:
            t = a
            a = b
            b = t
            o = oa
            oa = ob
            ob = o
    h1 = h + oa
    h2 = h1 + ob
    h3 = h2 + oc
    return (
        node_value(hash_finish(h), threshold) * (1.0 - a)
        + node_value(hash_finish(h1), threshold) * (a - b)
        + node_value(hash_finish(h2), threshold) * (b - c)
        + node_value(hash_finish(h3), threshold) * c
    )


@wp.kernel
def march_lines(
    classes: wp.array(dtype=wp.uint8),
    offsets: wp.array(dtype=wp.int32),
    dims: wp.array(dtype=wp.vec3i),
    spacing: wp.array(dtype=float),
    impedance: wp.array(dtype=float),
    attenuation_step: wp.array(dtype=float),
    scatter_gain: wp.array(dtype=float),
    density_threshold: wp.array(dtype=wp.int32),
    air: int,
    gel: int,
    pose: wp.array2d(dtype=float),
    patient: wp.array(dtype=wp.int32),
    line_origin: wp.array(dtype=wp.vec3),
    line_dir: wp.array(dtype=wp.vec3),
    elevation: wp.array(dtype=float),
    axial_weights: vec9f,
    num_samples: int,
    sample_step: float,
    gel_samples: int,
    inv_cell: float,
    seed_hash: wp.uint32,
    half_specular_exponent: float,
    env0: int,
    scratch_env0: int,
    iq: wp.array(dtype=wp.vec2),
    iq_axial: wp.array(dtype=wp.vec2),
):
    """One thread per (env, line): echoes along the line into ``iq`` [N, L, S + 2 PSF_RADIUS]
    (line-major, zero margins), then the axial PSF into ``iq_axial`` [N, S, L + 2 PSF_RADIUS]
    (row-major with zero margins, for the lateral pass). Both are scratch buffers whose env slot is
    ``e - scratch_env0`` (the CPU path renders one env at a time per thread through a 1-env scratch)."""
    tid = wp.tid()
    num_lines = line_origin.shape[0]
    e = env0 + tid // num_lines
    line = tid - (tid // num_lines) * num_lines
    slot = e - scratch_env0  # env's place in the scratch buffers
    base = (slot * num_lines + line) * (num_samples + 2 * PSF_RADIUS) + PSF_RADIUS
    p = patient[e]
    off = offsets[p]
    dim = dims[p]
    inv_spacing = 1.0 / spacing[p]
    rot = pose_rotation(pose, e)
    position = wp.vec3(pose[e, 0], pose[e, 1], pose[e, 2])
    direction = rot * line_dir[line]
    y_axis = wp.vec3(rot[0, 1], rot[1, 1], rot[2, 1])
    planes = elevation.shape[0]
    plane_weight = 1.0 / float(planes)
    # Gel fills small air gaps only when the face touches tissue somewhere (first, middle or last line).
    gel_depth = int(0)
    for corner in range(3):
        probe_line = wp.where(corner == 0, 0, wp.where(corner == 1, num_lines // 2, num_lines - 1))
        face = position + rot * (line_origin[probe_line] + line_dir[probe_line] * (0.5 * sample_step))
        if contact_class(classes, off, dim, face * inv_spacing, air) != air:
            gel_depth = gel_samples
    for plane in range(planes):
        start = position + rot * line_origin[line] + y_axis * elevation[plane]
        prev_class = gel
        prev_z = impedance[gel]
        step_attenuation = float(1.0)
        gain = float(0.0)
        threshold = int(0)
        prev_u = start * inv_spacing
        transmission = float(1.0)
        amplitude = float(1.0)
        for s in range(num_samples):
            x = start + direction * ((float(s) + 0.5) * sample_step)
            u = x * inv_spacing
            # Class: one load in a uniform cell (the common case), the trilinear majority otherwise.
            i = int(wp.floor(u[0]))
            j = int(wp.floor(u[1]))
            k = int(wp.floor(u[2]))
            c = int(-1)
            if i >= 0 and j >= 0 and k >= 0 and i < dim[0] - 1 and j < dim[1] - 1 and k < dim[2] - 1:
                c = int(classes[off + (i * dim[1] + j) * dim[2] + k])
            if c < 0 or c >= 128:
                c = mixed_cell_class(classes, off, dim, u, air)
            if c == air and prev_class == gel and s < gel_depth:
                c = gel  # an air gap thinner than the gel layer is filled with coupling gel
            value = wp.vec2(0.0, 0.0)
            before = transmission
            echo = float(0.0)
            if c != prev_class:
                z = impedance[c]
                r = (z - prev_z) / (z + prev_z)
                reflectance = r * r
                if s > 0:
                    g = class_gradient(classes, off, dim, u, c, air)
                    if wp.dot(g, g) < 1e-12:
                        g = class_gradient(classes, off, dim, prev_u, c, air)
                    cosine = float(1.0)
                    gg = wp.dot(g, g)
                    if gg >= 1e-12:
                        cosine = wp.abs(wp.dot(g, direction)) / wp.sqrt(gg)
                    echo = wp.sqrt(reflectance) * wp.pow(cosine, half_specular_exponent)
                transmission = transmission * (1.0 - reflectance)
                prev_class = c
                prev_z = z
                step_attenuation = attenuation_step[c]
                gain = scatter_gain[c]
                threshold = density_threshold[c]
            value = wp.vec2(echo * before * amplitude, 0.0)  # the interface echo, before this sample's attenuation
            amplitude = amplitude * step_attenuation
            if gain > 0.0:
                value = value + speckle(x * inv_cell, seed_hash, threshold) * (gain * transmission * amplitude)
            value = value * plane_weight
            if plane == 0:
                iq[base + s] = value
            else:
                iq[base + s] = iq[base + s] + value
            prev_u = u
            if transmission * amplitude < DEAD_AMPLITUDE:
                if plane == 0:
                    for rest in range(s + 1, num_samples):
                        iq[base + rest] = wp.vec2(0.0, 0.0)
                break
    # Axial PSF along the line (the zero margins stand for "outside"), written transposed.
    row_stride = num_lines + 2 * PSF_RADIUS
    out = slot * num_samples * row_stride + PSF_RADIUS + line
    for s in range(num_samples):
        acc = wp.vec2(0.0, 0.0)
        for a in range(PSF_TAPS):
            acc = acc + iq[base + s + a - PSF_RADIUS] * axial_weights[a]
        iq_axial[out + s * row_stride] = acc


@wp.func
def display(envelope: float, gain_db: float, dynamic_range_db: float) -> float:
    """Log compression: full scale (1) at -gain_db dB, black at -(gain_db + dynamic range)."""
    level = DB_PER_NEPER * wp.log(wp.max(envelope, 1e-30)) + gain_db
    return wp.clamp(1.0 + level / dynamic_range_db, 0.0, 1.0)


@wp.kernel
def lateral_psf_envelope(
    iq_axial: wp.array(dtype=wp.vec2),
    weights: vec9f,
    num_lines: int,
    num_samples: int,
    is_linear: int,
    sample_step: float,
    tgc_db_per_m: float,
    noise_floor: float,
    gain_db: float,
    dynamic_range_db: float,
    env0: int,
    scratch_env0: int,
    envelope: wp.array(dtype=float),
    images: wp.array(dtype=float),
):
    """One thread per (env, sample row): lateral PSF across lines and the envelope. Linear probes:
    TGC, noise floor and log compression into ``envelope`` and ``images`` [N * S * L]. Convex: the
    raw polar envelope into the scratch ``envelope`` [slots * S * L] (slot ``e - scratch_env0``)."""
    tid = wp.tid()
    e = env0 + tid // num_samples
    s = tid - (tid // num_samples) * num_samples
    slot = e - scratch_env0
    row = (e * num_samples + s) * num_lines
    if is_linear == 0:
        row = (slot * num_samples + s) * num_lines
    padded_row = (slot * num_samples + s) * (num_lines + 2 * PSF_RADIUS)
    tgc = float(1.0)
    if is_linear == 1:
        tgc = wp.exp(tgc_db_per_m * (float(s) + 0.5) * sample_step / DB_PER_NEPER)
    for line in range(num_lines):
        acc = wp.vec2(0.0, 0.0)
        for a in range(PSF_TAPS):
            acc = acc + iq_axial[padded_row + line + a] * weights[a]
        env = wp.length(acc)
        if is_linear == 1:
            env = env * tgc
            if noise_floor > 0.0:
                env = wp.sqrt(env * env + noise_floor * noise_floor)
            images[row + line] = display(env, gain_db, dynamic_range_db)
        envelope[row + line] = env


@wp.kernel
def scan_convert(
    polar: wp.array(dtype=float),
    source: wp.array(dtype=wp.int32),
    weights: wp.array(dtype=wp.vec2),
    depth_gain: wp.array(dtype=float),
    num_lines: int,
    num_samples: int,
    width: int,
    noise_floor: float,
    gain_db: float,
    dynamic_range_db: float,
    env0: int,
    scratch_env0: int,
    envelope: wp.array(dtype=float),
    images: wp.array(dtype=float),
):
    """Convex probes, one thread per (env, image row): bilinear interpolation of the polar envelope
    (scratch [slots * S * L]) at each pixel's precomputed (sample, line) cell ``source`` (-1 outside
    the sector) with weights (line, sample), TGC ``depth_gain``, noise floor, log compression."""
    tid = wp.tid()
    height = source.shape[0] // width
    e = env0 + tid // height
    i = tid - (tid // height) * height
    polar_base = (e - scratch_env0) * num_samples * num_lines
    for j in range(width):
        pixel = i * width + j
        out = e * height * width + pixel
        src = source[pixel]
        env = float(0.0)
        value = float(0.0)
        if src >= 0:
            w = weights[pixel]
            k = polar_base + src
            top = polar[k] * (1.0 - w[0]) + polar[k + 1] * w[0]
            bottom = polar[k + num_lines] * (1.0 - w[0]) + polar[k + num_lines + 1] * w[0]
            env = (top * (1.0 - w[1]) + bottom * w[1]) * depth_gain[pixel]
            if noise_floor > 0.0:
                env = wp.sqrt(env * env + noise_floor * noise_floor)
            value = display(env, gain_db, dynamic_range_db)
        envelope[out] = env
        images[out] = value


@wp.kernel
def label_slice(
    labels: wp.array(dtype=wp.uint8),
    offsets: wp.array(dtype=wp.int32),
    dims: wp.array(dtype=wp.vec3i),
    spacing: wp.array(dtype=float),
    pose: wp.array2d(dtype=float),
    patient: wp.array(dtype=wp.int32),
    pixels: wp.array2d(dtype=wp.vec3),
    inside: wp.array2d(dtype=wp.uint8),
    env0: int,
    out: wp.array3d(dtype=wp.uint8),
):
    """TotalSegmentator label (nearest voxel) under each image pixel; 0 outside the field of view."""
    tid = wp.tid()
    height = out.shape[1]
    width = out.shape[2]
    per_env = height * width
    e = env0 + tid // per_env
    rem = tid - (tid // per_env) * per_env
    i = rem // width
    j = rem - i * width
    value = wp.uint8(0)
    if inside[i, j] != wp.uint8(0):
        p = patient[e]
        rot = pose_rotation(pose, e)
        x = wp.vec3(pose[e, 0], pose[e, 1], pose[e, 2]) + rot * pixels[i, j]
        u = x / spacing[p]
        dim = dims[p]
        vi = int(wp.floor(u[0] + 0.5))
        vj = int(wp.floor(u[1] + 0.5))
        vk = int(wp.floor(u[2] + 0.5))
        if vi >= 0 and vj >= 0 and vk >= 0 and vi < dim[0] and vj < dim[1] and vk < dim[2]:
            value = labels[offsets[p] + (vi * dim[1] + vj) * dim[2] + vk]
    out[e, i, j] = value
