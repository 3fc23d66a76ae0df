"""Save the README's dashboard picture: a finished run's rows replayed into the dashboard, as an SVG.

    python benchmarks/dashboard_picture.py RUN_DIR [--out docs/dashboard.svg] [--width 140] [--height 42]
    python benchmarks/dashboard_picture.py --make-run [--max-images 60000]   # makes the run first (no Ray)
    python benchmarks/dashboard_picture.py RUN_DIR --until-step 120 --out docs/dashboard_warning.svg

The picture is the dashboard exactly as the terminal draws it at the run's last row, or at the
last row of step `--until-step` (e.g. the step a warning fired, from the run's events) (rich's console
recording, `Console.save_svg`), so it changes whenever the dashboard does: regenerate it rather than
editing the SVG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from stream_monitor.dashboard.app import DashboardView
from stream_monitor.dashboard.state import DashboardState
from stream_monitor.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]


def replay(run: RunDirectory, until_step: int | None = None) -> DashboardState:
    """Fold a run directory's step, probe and event rows into a dashboard state, in the loop's order
    (those of steps up to `until_step`; None: all)."""
    info = run.info()
    tagged = []
    for order, (name, apply) in enumerate((("steps", "apply_step"), ("probes", "apply_probe"),
                                           ("events", "apply_event"))):
        tagged += [(row["step"], order, apply, row) for row in run.rows(name)
                   if until_step is None or row["step"] <= until_step]
    state = DashboardState().apply_start(info, wall_time=min((r[3]["wall_time"] for r in tagged), default=0.0))
    for _, _, apply, row in sorted(tagged, key=lambda item: item[:2]):
        state = getattr(state, apply)(row)
    return state


def make_run(max_images: int, out: Path) -> Path:
    """A run of the embedded default, in-process, with the labels the picture shows as truth."""
    subprocess.run([sys.executable, "-m", "stream_monitor", "run", "--max-images", str(max_images),
                    "--out", str(out), "--no-dashboard", "--set", "runtime.use_ray=false"], check=True)
    return next(path for path in out.iterdir() if path.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--make-run", action="store_true", help="make a run of the embedded default first")
    parser.add_argument("--max-images", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.svg")
    parser.add_argument("--width", type=int, default=140)
    parser.add_argument("--height", type=int, default=42)
    parser.add_argument("--until-step", type=int, default=None, help="replay the rows up to this step")
    args = parser.parse_args()
    if (args.run_dir is None) == (not args.make_run):
        parser.error("give a RUN_DIR or --make-run (one of the two)")
    run_dir = args.run_dir or make_run(args.max_images, Path(tempfile.mkdtemp(prefix="dashboard-picture-")))
    state = replay(RunDirectory(run_dir), args.until_step)
    console = Console(record=True, width=args.width, height=args.height, force_terminal=True,
                      color_system="truecolor", file=open("/dev/null", "w"))
    console.print(DashboardView(state), height=args.height)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(args.out), title="stream-monitor")
    print(f"wrote {args.out} from {run_dir}")


if __name__ == "__main__":
    main()
