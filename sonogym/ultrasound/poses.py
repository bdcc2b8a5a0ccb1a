"""Probe poses: quaternion helpers and poses that put the transducer face on a patient's skin."""

from __future__ import annotations

import numpy as np


def quat_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) [..., 4] of rotation matrices [..., 3, 3] (columns = rotated axes)."""
    rot = np.asarray(rot, dtype=np.float64)
    m = rot.reshape(-1, 3, 3)
    q = np.empty((m.shape[0], 4))
    for n, r in enumerate(m):
        trace = r[0, 0] + r[1, 1] + r[2, 2]
        if trace > 0:
            s = 2.0 * np.sqrt(trace + 1.0)
            q[n] = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
        elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
            s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
            q[n] = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
        elif r[1, 1] > r[2, 2]:
            s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
            q[n] = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
        else:
            s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
            q[n] = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(*rot.shape[:-2], 4)


def matrix_from_quat(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of quaternions (w, x, y, z) [..., 4] (normalised here)."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def probe_frame(into_body: np.ndarray, lateral_hint: np.ndarray, rotation_rad: np.ndarray | float = 0.0) -> np.ndarray:
    """Probe rotation matrices [..., 3, 3] whose z axis is ``into_body`` and whose x axis is
    ``lateral_hint`` projected onto the face plane, then turned by ``rotation_rad`` about z."""
    z = np.asarray(into_body, dtype=np.float64)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    hint = np.broadcast_to(np.asarray(lateral_hint, dtype=np.float64), z.shape)
    x = hint - np.sum(hint * z, -1, keepdims=True) * z
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm < 1e-6):
        raise ValueError("lateral_hint is parallel to the beam axis; choose another lateral direction")
    x = x / norm
    y = np.cross(z, x)
    angle = np.asarray(rotation_rad, dtype=np.float64)[..., None]
    x, y = np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y
    return np.stack([x, y, z], -1)


def skin_pose(
    patient,
    x_m,
    z_m,
    *,
    side: str = "posterior",
    rotation_rad=0.0,
    press_m: float = 1e-3,
) -> np.ndarray:
    """Poses [..., 7] (position [m], quaternion w, x, y, z) with the face on the skin at (x, z).

    The probe looks along the inward skin normal; with ``rotation_rad = 0`` its lateral axis follows
    the patient's x axis (a transverse image: left-right across the spine), pi/2 gives a sagittal
    image. The face sits ``press_m`` inside the skin so that it is in contact.

    Args:
        patient: a :class:`~sonogym.anatomy.Patient`.
        x_m, z_m: skin position on the patient's (x, z) grid [m], broadcastable arrays.
        side: ``"posterior"`` (back) or ``"anterior"`` (front).
        rotation_rad: turn about the beam axis [rad].
        press_m: depth of the face inside the skin [m].

    Raises:
        ValueError: a position that is off the skin map of that side.
    """
    if side not in patient.placement:
        raise ValueError(f"no placement map for side {side!r}; sides: {', '.join(patient.placement)}")
    points, normals = patient.placement[side].query(x_m, z_m)
    if np.isnan(points).any():
        raise ValueError(f"some (x, z) positions are off the {side} skin of patient {patient.name!r}; extent is {patient.extent_m.round(3).tolist()} m")
    rot = probe_frame(-normals, np.array([1.0, 0.0, 0.0]), rotation_rad)
    position = points - normals * press_m
    return np.concatenate([position, quat_from_matrix(rot)], -1)
