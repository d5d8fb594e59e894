"""Run every benchmark in sequence and rewrite the results section of docs/performance.md.

    python benchmarks/run_all.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # smoke run; add --no-write to leave the docs alone

Each benchmark prints a markdown block on stdout; this script collects them, adds the date,
the machine and the commands, and puts the lot between the ``results`` markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import BENCH_DIR, ROOT, log

SCRIPTS = [
    "gateway_overhead.py",
    "http_protocol_overhead.py",
    "embedded_chat.py",
    "embeddings.py",
    "startup.py",
]
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
BUSY_OTHERS = 0.10  # share of the CPU used by other processes that makes a run preliminary


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def our_cpu_s() -> float:
    """CPU-seconds used by this process and its finished (reaped) descendants."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{nproc} cores (`nproc`), {model}, {mem_kb / 2**20:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line for line in git("status", "--porcelain", "src").splitlines() if line]
    return f"commit `{commit}`" + (" plus uncommitted changes in src/" if dirty else "")


def run(script: str, quick: bool) -> tuple[str, float]:
    """Run one benchmark; return its markdown and the share of CPU others used meanwhile."""
    argv = [sys.executable, str(BENCH_DIR / script), *(["--quick"] if quick else [])]
    log(f"== {script}")
    busy, ours, started = busy_cpu_s(), our_cpu_s(), time.monotonic()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=1200, cwd=ROOT)
        out = done.stdout.strip() + "\n"
        if done.returncode != 0:
            out = f"### {script}\n\nFailed with exit code {done.returncode}; see its stderr.\n"
    except subprocess.TimeoutExpired:
        out = f"### {script}\n\nTimed out after 1200 s.\n"
    others = (busy_cpu_s() - busy) - (our_cpu_s() - ours)
    share = max(0.0, others) / ((time.monotonic() - started) * (os.cpu_count() or 1))
    log(f"   other processes used {share:.0%} of the machine meanwhile")
    return out, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode for every benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the docs")
    parser.add_argument("--note", default="", help="a line to add, e.g. why a run is preliminary")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    version = code_version()
    started = time.monotonic()
    outcomes = {script: run(script, args.quick) for script in SCRIPTS}
    blocks = [block for block, _ in outcomes.values()]
    others = ", ".join(f"{name} {share:.0%}" for name, (_, share) in outcomes.items())
    busiest = max(share for _, share in outcomes.values())
    minutes = (time.monotonic() - started) / 60

    mode = "quick (smoke) mode" if args.quick else "full mode"
    header = [
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')}, {mode}, {minutes:.1f} min in all.",
        "",
        f"- Machine: {machine()}.",
        f"- Code: {version} (when the run started).",
        f"- 1-minute load average before the run: {load_before:.2f}.",
        f"- Share of the machine's CPU used by processes other than the benchmarks: {others}.",
        f"- Command: `python benchmarks/run_all.py{' --quick' if args.quick else ''}` "
        "(each section names its own command).",
    ]
    reasons = ["smoke-mode numbers"] if args.quick else []
    if busiest > BUSY_OTHERS:
        reasons.append(f"other processes used over {BUSY_OTHERS:.0%} of the CPU during the run")
    if reasons:
        header.append(f"- **Preliminary**: {'; '.join(reasons)}.")
    if args.note:
        header.append(f"- Note: {args.note}")
    results = "\n".join(header) + "\n\n" + "\n".join(blocks)
    print(results)
    if not args.no_write:
        text = DOC.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{results}\n{END}{tail}")
        log(f"wrote the results into {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
