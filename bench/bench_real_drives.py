"""Real drives as a user runs them: `import-log` (no flags), then `up --log`, per log; and a
simulated single vehicle through `up`. Prints, per run, the error at each horizon of the
served answers beside CV, CTRV and CA over 30-60 s and over the last 30 s, the worst rolling
30 s window of served / best physics, and the share of frames each predictor answered.

    .venv/bin/python bench/bench_real_drives.py [--logs DIR] [--sim-duration-s 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOGS = ROOT.parent / "shared" / "data" / "real"
PREDICTORS = ("served", "cv", "ctrv", "ca")


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, check=True)


def up(run_dir: Path, *args: str) -> dict:
    cli("up", "--run-dir", str(run_dir), "--broker-port", "0", *args)
    (path,) = run_dir.glob("*/report/report.json")
    return json.loads(path.read_text())


def table(name: str, report: dict) -> str:
    acc = report["accuracy"]
    lines = [f"## {name}: {acc['scored']} of {acc['frames']} frames scored"]
    for phase, rows in acc["phases"].items():
        horizons = list(rows["served"])
        lines.append(
            f"  {phase:<9s} (n={rows['frames']})  " + " ".join(f"{h:>6s}" for h in horizons)
        )
        for p in PREDICTORS:
            lines.append(
                f"    {p:<8s}" + " " * 10 + " ".join(f"{rows[p][h]:6.2f}" for h in horizons)
            )
    best = min(acc["cv"]["fde_m"], acc["ctrv"]["fde_m"])
    lines.append(
        f"  whole log FDE@3s: served {acc['served']['fde_m']:.2f} m, best physics {best:.2f} m "
        f"({100 * (acc['served']['fde_m'] / best - 1):+.1f} %)"
    )
    worst = acc["rolling_fde"]["worst_ratio"]
    lines.append(
        "  worst 30 s window after 30 s, served / best physics: "
        + ("n/a (log too short)" if worst is None else f"{worst:.3f}")
    )
    shares = ", ".join(f"{p} {100 * r['share']:.1f} %" for p, r in acc["predictors"].items())
    lines.append(f"  answered by: {shares}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=DEFAULT_LOGS)
    parser.add_argument("--sim-duration-s", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write every report here")
    args = parser.parse_args()
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(args.logs.glob("*.csv")):
            log = Path(tmp) / f"{src.stem}.parquet"
            cli("import-log", str(src), "--out", str(log))
            out[src.stem] = up(Path(tmp) / src.stem, "--log", str(log))
        sim = Path(tmp) / "sim"
        out["simulated single vehicle"] = up(
            sim, "--vehicles", "1", "--duration-s", str(args.sim_duration_s)
        )
    for name, report in out.items():
        print(table(name, report))
    if args.json:
        args.json.write_text(json.dumps({k: v["accuracy"] for k, v in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
