"""``sonogym bench ultrasound``: frames/s and memory of the Warp sensor next to the torch reference.

For each probe preset and batch size N the sensor renders N poses on the back of a real CT patient
(random positions around the lumbar spine, random turns); the time per batch is the median of
repeated updates after a warm-up. The torch reference renders the first ``ref_frames`` of the same
poses in the same process, so the speed-up is a ratio measured on one machine at one time. Memory:
the process's resident set after the sensor runs (before the reference runs), and the sensor's own
accounting of bytes per patient (packed volumes) and per env (image buffers).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process [MiB], from /proc."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    key, value = line.split(":")
                    values[key] = float(value.split()[0]) / 1024
    except OSError:
        return float("nan"), float("nan")
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def bench_poses(patient, n: int, seed: int = 0) -> torch.Tensor:
    """n random probe poses [n, 7] on the back over the spine (transverse +- 0.6 rad)."""
    from sonogym.ultrasound.poses import skin_pose

    rng = np.random.default_rng(seed)
    vertebrae = [v for v in patient.vertebrae if v.name.startswith("L")] or list(patient.vertebrae)
    if vertebrae:
        xs = np.array([v.centroid_m[0] for v in vertebrae])
        zs = np.array([v.centroid_m[2] for v in vertebrae])
        x = rng.uniform(xs.min() - 0.02, xs.max() + 0.02, n)
        z = rng.uniform(zs.min() - 0.01, zs.max() + 0.01, n)
    else:
        ext = patient.extent_m
        x = rng.uniform(0.4, 0.6, n) * ext[0]
        z = rng.uniform(0.4, 0.6, n) * ext[2]
    return torch.tensor(skin_pose(patient, x, z, rotation_rad=rng.uniform(-0.6, 0.6, n)), dtype=torch.float32)


def _time(fn, min_seconds: float, min_repeats: int = 3) -> float:
    """Median seconds per call of fn (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(
    patient_name: str = "ct-abdomen",
    *,
    sizes=(1, 16, 64, 256),
    probes=("linear", "convex"),
    devices=None,
    ref_frames: int = 8,
    min_seconds: float = 1.0,
    spacing_mm: float = 1.0,
    out: str | os.PathLike = "outputs/bench/ultrasound.json",
    progress: bool = True,
) -> dict:
    """Run the benchmark, print a table and write JSON; returns the results."""
    from sonogym.anatomy.catalog import load_patient
    from sonogym.ultrasound.probes import probe_preset
    from sonogym.ultrasound.reference import render_reference
    from sonogym.ultrasound.sensor import UltrasoundSensor

    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rss_start, _ = _rss_mib()
    patient = load_patient(patient_name, iso_spacing_m=spacing_mm * 1e-3, progress=progress)
    rows = []
    max_n = max(sizes)
    poses = bench_poses(patient, max_n)
    for device in devices:
        for probe_name in probes:
            probe = probe_preset(probe_name)
            for n in sizes:
                sensor = UltrasoundSensor([patient], probe, n, device=device, check_inputs=False)
                pose = poses[:n].to(device)
                idx = torch.zeros(n, dtype=torch.int32, device=device)

                def step():
                    sensor.update(pose, idx)
                    if device != "cpu":
                        torch.cuda.synchronize()

                seconds = _time(step, min_seconds)
                rss, peak = _rss_mib()
                mem = sensor.memory_bytes
                rows.append(
                    {
                        "device": device, "probe": probe_name, "num_envs": n, "image": list(probe.image_size),
                        "ms_per_batch": seconds * 1e3, "fps": n / seconds,
                        "patient_mib": mem["patients"] / 2**20, "per_env_kib": mem["per_env"] / 2**10,
                        "process_rss_mib": rss, "process_peak_mib": peak,
                        "threads": len(sensor._chunks),
                    }
                )
                if progress:
                    r = rows[-1]
                    print(f"  {device:5s} {probe_name:7s} N={n:<5d} {r['ms_per_batch']:9.2f} ms  {r['fps']:9.0f} fps  rss {rss:7.0f} MiB", flush=True)
    # The torch reference, on the same poses, in the same process (CPU).
    reference = {}
    for probe_name in probes:
        probe = probe_preset(probe_name)
        k = min(ref_frames, max_n)
        pose, idx = poses[:k], torch.zeros(k, dtype=torch.long)
        seconds = _time(lambda: render_reference([patient], probe, pose, idx, chunk=8), 0.0, min_repeats=1)
        reference[probe_name] = {"frames": k, "seconds": seconds, "fps": k / seconds}
        if progress:
            print(f"  reference {probe_name:7s} {k} frames: {seconds:.2f} s, {k / seconds:.1f} fps", flush=True)
    for row in rows:
        ref_fps = reference[row["probe"]]["fps"]
        row["reference_fps"] = ref_fps
        row["speedup_vs_reference"] = row["fps"] / ref_fps
    result = {
        "patient": patient_name, "patient_shape": list(patient.shape), "spacing_mm": spacing_mm,
        "cpu_threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "rss_before_load_mib": rss_start,
        "rows": rows, "reference": reference,
    }
    print(format_table(result))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return result


def format_table(result: dict) -> str:
    head = f"{'device':6s} {'probe':7s} {'N':>5s} {'image':>9s} {'ms/batch':>9s} {'fps':>8s} {'ref fps':>8s} {'speed-up':>8s} {'patient MiB':>11s} {'env KiB':>8s} {'RSS MiB':>8s}"
    lines = [f"Ultrasound sensor on {result['patient']} {tuple(result['patient_shape'])} at {result['spacing_mm']} mm", head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['device']:6s} {r['probe']:7s} {r['num_envs']:5d} {r['image'][0]:>4d}x{r['image'][1]:<4d} {r['ms_per_batch']:9.2f} "
            f"{r['fps']:8.0f} {r['reference_fps']:8.1f} {r['speedup_vs_reference']:7.0f}x {r['patient_mib']:11.1f} "
            f"{r['per_env_kib']:8.0f} {r['process_rss_mib']:8.0f}"
        )
    return "\n".join(lines)
