"""Command line of the report.

    python -m em.report <judge run dir | multirun dir | pipeline dir> ... [--out DIR] [--no-plots]
    python -m em.report agreement <judge run dir A> <judge run dir B> [--out DIR]

The first aggregates judge runs into tables (report.csv: a line per run and condition; pooled.csv: runs
that differ only in seed pooled, with n_seeds; per_question.csv; report.md) and PNG plots; the second
measures how two judges that scored the same answers agree (it refuses pairs whose answer texts differ).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from em.api import ConfigError
from em.contracts import MANIFEST, SCORES, SUMMARY
from em.io import atomic_write_json, atomic_write_text, iter_jsonl, read_json
from em.metrics import MetricSettings, metric_settings
from em.report.agreement import agreement, agreement_markdown, check_same_answers


def _metric_settings(run_dir: Path) -> MetricSettings:
    """The run's own settings: summary.json, else manifest.json, else the defaults."""
    for name in (SUMMARY, MANIFEST):
        if (run_dir / name).exists():
            data = read_json(run_dir / name).get("metric_settings")
            if data:
                return metric_settings(data, f"{run_dir / name}: metric_settings")
    return MetricSettings()


def run_agreement(a: Path, b: Path, out: Path | None) -> dict:
    for p in (a, b):
        if not (p / SCORES).exists():
            raise ConfigError(f"{p}: not a judge run directory (no scores.jsonl)")
    rows_a, rows_b = list(iter_jsonl(a / SCORES)), list(iter_jsonl(b / SCORES))
    check_same_answers(rows_a, rows_b, str(a), str(b))
    result = agreement(rows_a, rows_b, _metric_settings(a))
    if result["n_common"] == 0:
        raise ConfigError(f"{a} and {b} share no answer ids: did they judge the same answers.jsonl?")
    text = agreement_markdown(result, str(a), str(b))
    print(text)
    if out is not None:
        atomic_write_json(out / "agreement.json", result)
        atomic_write_text(out / "agreement.md", text)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "agreement":
            p = argparse.ArgumentParser(
                prog="python -m em.report agreement",
                description="Agreement of two judges on the same answers.",
            )
            p.add_argument("a", type=Path)
            p.add_argument("b", type=Path)
            p.add_argument("--out", type=Path, default=None, help="also write agreement.json/.md here")
            args = p.parse_args(argv[1:])
            run_agreement(args.a, args.b, args.out)
            return 0
        p = argparse.ArgumentParser(
            prog="python -m em.report",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("paths", nargs="+", type=Path, help="judge run dirs, or folders holding them")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help="output folder (default: <path>/report for one path, else outputs/report)",
        )
        p.add_argument("--no-plots", action="store_true")
        args = p.parse_args(argv)
        out = args.out or (args.paths[0] / "report" if len(args.paths) == 1 else Path("outputs/report"))
        from em.report import build_report

        print(build_report(args.paths, out, plots=not args.no_plots))
        print(f"\nReport: {out}/report.md")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
