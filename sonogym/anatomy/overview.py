"""PNG overview of a patient: axial, sagittal and coronal CT slices with the label overlay, the skin
outline and the planned pedicle-screw trajectories.

Views follow radiological convention: axial and coronal show the patient's right on the left of the
image; axial has anterior up; sagittal has anterior on the left; superior is up. Axes are in mm of
the patient frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sonogym.anatomy.patient import Patient

HU_WINDOW = (-300.0, 1200.0)


def _label_colors(labels_slice: np.ndarray):
    """RGBA overlay of a label slice: one stable colour per id, transparent where 0."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    rgba = cmap((labels_slice.astype(int) * 7) % 20)
    rgba[..., 3] = np.where(labels_slice > 0, 0.35, 0.0)
    return rgba


def plot_overview(patient: Patient, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write the overview PNG and return its path.

    The slices pass through the middle vertebra with a screw plan (or the volume centre); the axial
    view shows that vertebra's screws, the sagittal and coronal views the projections of all.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s_mm = patient.spacing_m * 1e3
    planned = [v for v in patient.vertebrae if v.screws] or list(patient.vertebrae)
    focus = planned[len(planned) // 2] if planned else None  # the axial view shows this vertebra's screws
    if focus is None:
        centre_m = patient.extent_m / 2
    elif focus.screws:  # axial slice through the pedicle isthmi
        centre_m = np.mean([s.isthmus_m for s in focus.screws], axis=0)
    else:
        centre_m = focus.centroid_m
    i, j, k = np.clip(np.round(centre_m / patient.spacing_m).astype(int), 0, np.asarray(patient.shape) - 1)
    body = patient.body_mask
    nx, ny, nz = patient.shape
    ext = lambda n: (-0.5 * s_mm, (n - 0.5) * s_mm)  # noqa: E731

    views = [  # (title, hu slice [rows, cols], labels, body, extent, origin, (row-axis, col-axis))
        ("axial", patient.hu[:, :, k].T, patient.labels[:, :, k].T, body[:, :, k].T, (*ext(nx), *ext(ny)[::-1]), "upper", (1, 0)),
        ("sagittal", patient.hu[i, :, :].T, patient.labels[i, :, :].T, body[i, :, :].T, (*ext(ny), *ext(nz)), "lower", (2, 1)),
        ("coronal", patient.hu[:, j, :].T, patient.labels[:, j, :].T, body[:, j, :].T, (*ext(nx), *ext(nz)), "lower", (2, 0)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.8), constrained_layout=True)
    for ax, (title, hu, lab, msk, extent, origin, (row_axis, col_axis)) in zip(axes, views):
        ax.imshow(hu, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], extent=extent, origin=origin, interpolation="bilinear")
        ax.imshow(_label_colors(lab), extent=extent, origin=origin, interpolation="nearest")
        rows, cols = np.arange(msk.shape[0]) * s_mm, np.arange(msk.shape[1]) * s_mm  # voxel centres [mm]
        ax.contour(cols, rows, msk.astype(float), levels=[0.5], colors="tomato", linewidths=1.0)
        for vertebra in patient.vertebrae:
            c = vertebra.centroid_m * 1e3
            if title == "sagittal":
                ax.text(c[col_axis] + 25, c[row_axis], vertebra.name, color="yellow", fontsize=8, va="center")
            for screw in vertebra.screws if (title != "axial" or vertebra is focus) else ():
                a, b = screw.entry_m * 1e3, screw.tip_m * 1e3
                colour = "cyan" if screw.side == "left" else "magenta"
                ax.plot([a[col_axis], b[col_axis]], [a[row_axis], b[row_axis]], color=colour, linewidth=1.4)
                ax.plot(a[col_axis], a[row_axis], "o", color=colour, markersize=2.5)
        where = {"axial": f"z = {k * s_mm:.0f} mm", "sagittal": f"x = {i * s_mm:.0f} mm", "coronal": f"y = {j * s_mm:.0f} mm"}[title]
        ax.set_title(f"{title} ({where})")
        names = "xyz"
        ax.set_xlabel(f"{names[col_axis]} [mm]")
        ax.set_ylabel(f"{names[row_axis]} [mm]")
        if title == "axial":
            ax.text(0.01, 0.99, "R", transform=ax.transAxes, color="white", va="top")
            ax.text(0.98, 0.99, "L", transform=ax.transAxes, color="white", va="top", ha="right")
    fig.suptitle(
        f"{patient.name}: {nx}x{ny}x{nz} voxels at {s_mm:.2f} mm; skin outline red; "
        "screw plans cyan (left) / magenta (right)", fontsize=11,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
