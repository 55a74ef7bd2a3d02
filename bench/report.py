"""What ``bench/run.py`` prints: the machine, the worker's settings, and one table per row."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rows import Contender, Row

# --- printing ------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio_cell(row: Row, contender: Contender, result: Mapping[str, Any]) -> str:
    """The ratios printed on this contender's line, then the targets they (or its median) are held to."""
    cells = []
    for ratio in row.ratios:
        if ratio.shown_on == contender.id:
            value = result["ratios"][ratio.key]
            cells.append(ratio.tag + ("n/a" if value is None else f"{value:.2f}x"))
    for target, judged in zip(row.targets, result.get("targets", []), strict=True):
        shown_on = next((r.shown_on for r in row.ratios if r.key == target.source), target.source)
        if shown_on == contender.id:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[judged["met"]]
            cells.append(f"target {target.text}: {verdict}")
    return ", ".join(cells)


def print_row(row: Row, result: Mapping[str, Any]) -> None:
    cpu_label = row.cpu_label if row.cpu_per > 1 else "CPU s"
    runs = "1 run" if row.runs == 1 else f"{row.runs} runs, interleaved"
    width = max(40, *(len(c.label) + 1 for c in row.contenders))
    print(f"\n{row.title}; {runs}")
    head = f"  {'contender':<{width}}{row.unit + ' median':>15}{'min':>8}{'max':>8}{cpu_label:>11}"
    print(f"{head}{'RSS MiB':>9}  ratio")
    for contender in row.contenders:
        s = result["contenders"][contender.id]
        cpu = s.get("median_cpu_s_per_file", s["median_cpu_s"])
        cpu_text = "-" if cpu is None else f"{cpu:.4f}" if row.cpu_per > 1 else f"{cpu:.2f}"
        failed = f"  ({s['runs'] - s['ok_runs']} run(s) FAILED)" if s["ok_runs"] < s["runs"] else ""
        ratio = _ratio_cell(row, contender, result)
        line = (
            f"  {contender.label:<{width}}{_num(s['median']):>15}{_num(s['min']):>8}{_num(s['max']):>8}"
            f"{cpu_text:>11}{_num(s['median_peak_rss_mib']):>9}  {ratio}{failed}"
        )
        print(line.rstrip())
    print(f"  ratio = {row.ratio_text}")
    submit = result["contenders"].get("worker", {}).get("median_submit_s")
    if submit is not None:
        print(f"  asset-worker submit of every key, before run (not in {row.unit}): {_num(submit)} s")
    for line in row.footer(result) if row.footer else ():
        print(f"  {line}")


# --- the machine, the programs, the settings -----------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, SHA instructions (what sha256 speed hinges on), kernel, Python, load."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or "?",
        "cores": os.cpu_count(),
        "sha_instructions": sorted(flags & {"sha_ni", "sha2"}),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def print_machine(info: Mapping[str, Any]) -> None:
    sha = ", ".join(info["sha_instructions"]) or "none"
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, SHA instructions: {sha}, kernel {info['kernel']}, "
        f"Python {info['python']}, load average {info['load_average_start']} at start"
    )


def print_settings(settings: Mapping[str, str]) -> None:
    changed = " ".join(f"{k}={v}" for k, v in settings.items())
    print(f"asset-worker settings: {changed}")
    print(
        "  and per run a fresh ASSET_WORKER_STORE=sqlite:///RUNDIR/store.db, ASSET_WORKER_DEST=RUNDIR/assets;"
        " every other setting at its default (this shell's ASSET_WORKER_*, CLOUDLAYER_*, LAYERS_* dropped)"
    )


def print_programs(versions: Mapping[str, str]) -> None:
    print("peers: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
