"""Shared by the benchmarks: inputs, timing of whole commands, peak memory, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "outputs" / "bench"
PATIENTKIT = [sys.executable, "-m", "patientkit"]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def ensure_export(export_id: str, seed: int = 0) -> Path:
    """The generated export under bench/.work/exports (made once, kept)."""
    root = WORK / "exports"
    folder = root / export_id
    if not folder.is_dir() or not any(folder.glob("*.csv")):
        subprocess.run(
            [*PATIENTKIT, "export", "generate", export_id, str(root), "--seed", str(seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return root


def run_timed(cmd: list[str]) -> dict[str, Any]:
    """Run a command; return its wall seconds and stdout (nothing else runs meanwhile)."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return {"seconds": seconds, "stdout": done.stdout.decode()}


def run_measured(cmd: list[str]) -> dict[str, Any]:
    """Run a command; return wall seconds, its stdout, and the peak memory of its process
    tree, sampled every 20 ms: the largest single process (RSS) and the whole tree (RSS
    summed, and PSS summed, which counts pages shared by forked workers once). Sampling
    costs CPU, so use run_timed for timings."""
    started = time.perf_counter()
    process = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_main = peak_child = peak_tree_rss = peak_tree_pss = 0
    while process.poll() is None:
        try:
            procs = [process, *process.children(recursive=True)]
            rss = pss = 0
            for proc in procs:
                info = proc.memory_full_info()
                rss += info.rss
                pss += info.pss
                if proc.pid == process.pid:
                    peak_main = max(peak_main, info.rss)
                else:
                    peak_child = max(peak_child, info.rss)
            peak_tree_rss, peak_tree_pss = max(peak_tree_rss, rss), max(peak_tree_pss, pss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(0.02)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({process.returncode}): {err.decode()[-2000:]}")
    mb = 1 / 2**20
    return {
        "seconds": seconds,
        "stdout": out.decode(),
        "peak_rss_main_mb": round(peak_main * mb, 1),
        "peak_rss_worker_mb": round(peak_child * mb, 1),
        "peak_rss_tree_mb": round(peak_tree_rss * mb, 1),
        "peak_pss_tree_mb": round(peak_tree_pss * mb, 1),
    }


def summary(times: list[float]) -> dict[str, float]:
    return {
        "min": round(min(times), 3),
        "median": round(statistics.median(times), 3),
        "runs": [round(t, 3) for t in times],
    }


def save(name: str, section: str, result: dict[str, Any]) -> Path:
    """Merge one section into outputs/bench/<name>.json (other sections are kept)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = json.loads(path.read_text()) if path.exists() else {}
    document["machine"] = machine()
    document[section] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
