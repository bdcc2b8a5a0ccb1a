"""Skin surface of a patient: body mask, signed distance, mesh and probe-placement maps.

All geometry is in the patient frame (LPS, metres, voxel (i, j, k) centre at (i, j, k) * spacing).

* Body mask: voxels with HU above -500 (soft tissue, fat, bone), opened to cut thin bridges to the
  CT table or blankets, the largest connected component, holes filled slice by slice (lungs,
  bowel gas), plus every labelled voxel.
* Signed distance to the skin [m], negative inside the body, from Euclidean distance transforms of
  the mask; stored quantised to 0.1 mm in int16 (half the memory of float32).
* Mesh: marching cubes of the lightly smoothed mask on a zero-padded grid (so the surface is closed
  and watertight; where the scan cuts the body the mesh has flat caps), Taubin-smoothed,
  normals pointing out of the body.
* Placement maps: for a scanning side (``"posterior"`` = the back, or ``"anterior"``), the
  height of the skin along y for every (x, z) column, found at sub-voxel precision where the
  smoothed mask crosses 0.5, and the outward unit normal there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SDF_UNIT_M = 1e-4
"""Quantisation step of the stored signed distance [m] (0.1 mm)."""

BODY_HU_THRESHOLD = -500.0
"""Voxels above this HU count as body when building the mask [HU]."""

SIDES = {"posterior": +1, "anterior": -1}
"""Scanning sides and the sign of the y axis (LPS: +y is posterior) that points out of the body there."""


@dataclass(frozen=True)
class PlacementMap:
    """Skin height and outward normal over one side of the body, on the volume's (x, z) grid.

    Attributes:
        side: ``"posterior"`` (the back, +y) or ``"anterior"`` (-y).
        height_m: y coordinate of the skin for each (x, z) column [m], shape (X, Z); NaN where invalid.
        normal: outward unit normal at that point, shape (X, Z, 3).
        valid: columns that hit the body, shape (X, Z).
        spacing_m: grid step along x and z [m]; column (i, k) lies at x = i * spacing, z = k * spacing.
    """

    side: str
    height_m: np.ndarray
    normal: np.ndarray
    valid: np.ndarray
    spacing_m: float

    def surface_points(self) -> np.ndarray:
        """Skin points of all valid columns, shape (M, 3) [m]."""
        i, k = np.nonzero(self.valid)
        return np.stack([i * self.spacing_m, self.height_m[i, k], k * self.spacing_m], axis=1)

    def query(self, x_m: np.ndarray, z_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Skin point and normal at (x, z) [m] by bilinear interpolation.

        Args:
            x_m, z_m: positions [m], same shape S.
        Returns:
            (points [*S, 3] m, normals [*S, 3] unit). Points outside the valid area are NaN.
        """
        x_m, z_m = np.broadcast_arrays(np.asarray(x_m, float), np.asarray(z_m, float))
        coords = np.stack([x_m.ravel(), z_m.ravel()]) / self.spacing_m
        height = ndimage.map_coordinates(np.nan_to_num(self.height_m, nan=0.0), coords, order=1, mode="nearest")
        ok = ndimage.map_coordinates(self.valid.astype(np.float32), coords, order=1, mode="constant") > 0.999
        normal = np.stack([ndimage.map_coordinates(self.normal[..., d], coords, order=1, mode="nearest") for d in range(3)], -1)
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
        points = np.stack([x_m.ravel(), height, z_m.ravel()], -1)
        points[~ok] = np.nan
        normal[~ok] = np.nan
        return points.reshape(*x_m.shape, 3), normal.reshape(*x_m.shape, 3)


def body_mask(hu: np.ndarray, labels: np.ndarray, spacing_m: np.ndarray) -> np.ndarray:
    """Boolean body mask, shape (X, Y, Z), from HU [X, Y, Z] and labels [X, Y, Z]."""
    mask = hu > BODY_HU_THRESHOLD
    # Opening with a ~3 mm ball cuts thin bridges to the table and blankets.
    radius = np.maximum(np.round(1.5e-3 / np.asarray(spacing_m)), 1).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius)) <= 1.0
    mask = ndimage.binary_opening(mask, structure=ball)
    mask = largest_component(mask)
    for k in range(mask.shape[2]):  # axial slices: fills lungs and bowel gas enclosed by the body wall
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    mask |= labels > 0
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty input gives an empty mask)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def signed_distance_q(mask: np.ndarray, spacing_m: float) -> np.ndarray:
    """Signed distance to the mask boundary in units of :data:`SDF_UNIT_M`, int16, negative inside.

    One Euclidean distance transform to the inner boundary voxels (half the cost of transforming
    inside and outside separately); the surface lies half a voxel outside their centres.
    """
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=1)
    dist = ndimage.distance_transform_edt(~boundary, sampling=spacing_m)
    sdf = np.where(mask, -(dist + 0.5 * spacing_m), dist - 0.5 * spacing_m)
    limit = np.iinfo(np.int16).max * SDF_UNIT_M
    return np.round(np.clip(sdf, -limit, limit) / SDF_UNIT_M).astype(np.int16)


def trilinear(volume: np.ndarray, points_m: np.ndarray, spacing_m: float) -> np.ndarray:
    """Sample a volume [X, Y, Z] at points [..., 3] [m] trilinearly (clamped at the border); float64 [...]."""
    idx = np.asarray(points_m, dtype=np.float64) / spacing_m
    shape = np.asarray(volume.shape)
    idx = np.clip(idx, 0.0, shape - 1.0)
    base = np.minimum(np.floor(idx).astype(np.int64), shape - 2)
    frac = idx - base
    out = np.zeros(idx.shape[:-1])
    for corner in range(8):
        offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        weight = np.prod(np.where(offset, frac, 1.0 - frac), axis=-1)
        i, j, k = np.moveaxis(base + offset, -1, 0)
        out += weight * volume[i, j, k]
    return out


def skin_field(mask: np.ndarray) -> np.ndarray:
    """Lightly smoothed body mask (float32 in [0, 1]); its 0.5 level set is the skin."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma=1.0)


def skin_mesh(field: np.ndarray, spacing_m: float, max_edge_m: float = 2e-3) -> tuple[np.ndarray, np.ndarray]:
    """Closed, smoothed skin mesh with outward normals.

    Args:
        field: smoothed body mask, shape (X, Y, Z).
        spacing_m: voxel size [m].
        max_edge_m: marching-cubes step [m]; coarser than the voxels keeps the mesh small.
    Returns:
        (vertices float32 [V, 3] m, faces int32 [F, 3]).
    """
    import trimesh
    from skimage.measure import marching_cubes

    step = max(1, int(round(max_edge_m / spacing_m)))
    padded = np.pad(field, step + 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=(spacing_m,) * 3, step_size=step, allow_degenerate=False)
    verts -= (step + 1) * spacing_m
    mesh = trimesh.Trimesh(verts, faces, process=True)
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=10)
    if mesh.volume < 0:
        mesh.invert()
    return mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32)


def placement_map(field: np.ndarray, spacing_m: float, side: str) -> PlacementMap:
    """Skin height and outward normals seen from one side (``"posterior"`` or ``"anterior"``)."""
    if side not in SIDES:
        raise ValueError(f"unknown scanning side {side!r}; choose one of {sorted(SIDES)}")
    sign = SIDES[side]
    inside = field >= 0.5
    valid = inside.any(axis=1)
    ny = field.shape[1]
    if sign > 0:  # last inside voxel along +y, crossing towards j + 1
        j0 = ny - 1 - np.argmax(inside[:, ::-1, :], axis=1)
    else:  # first inside voxel along +y, crossing towards j - 1
        j0 = np.argmax(inside, axis=1)
    j1 = np.clip(j0 + sign, 0, ny - 1)
    ii, kk = np.indices(j0.shape)
    f0, f1 = field[ii, j0, kk], field[ii, j1, kk]
    t = np.clip((f0 - 0.5) / np.maximum(f0 - f1, 1e-6), 0.0, 1.0)
    height = ((j0 + sign * t) * spacing_m).astype(np.float32)
    height[~valid] = np.nan

    points = np.stack([ii * spacing_m, np.nan_to_num(height), kk * spacing_m], -1)[valid]
    normal = np.full(height.shape + (3,), np.nan, dtype=np.float32)
    normal[valid] = outward_normals(field, points, spacing_m)
    return PlacementMap(side=side, height_m=height, normal=normal, valid=valid, spacing_m=float(spacing_m))


def outward_normals(field: np.ndarray, points_m: np.ndarray, spacing_m: float, step_vox: float = 2.0) -> np.ndarray:
    """Unit normals pointing out of the body (down the field's gradient) at points [M, 3] [m]."""
    grad = np.zeros_like(points_m)
    h = step_vox * spacing_m
    for axis in range(3):
        offset = np.zeros(3)
        offset[axis] = h
        grad[:, axis] = (trilinear(field, points_m + offset, spacing_m) - trilinear(field, points_m - offset, spacing_m)) / (2 * h)
    normal = -grad
    return (normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)).astype(np.float32)
