"""Command line of the report.

    python -m em.report <judge run dir | multirun dir | pipeline dir> ... [--out DIR] [--no-plots]
    python -m em.report agreement <judge run dir A> <judge run dir B> [--out DIR]

The first aggregates judge runs into one table (report.csv, per_question.csv, report.md) and PNG plots;
the second measures how two judges that scored the same answers agree.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from em.api import ConfigError
from em.io import atomic_write_json, atomic_write_text, iter_jsonl, read_json
from em.metrics import MetricSettings, agreement


def _metric_settings(run_dir: Path) -> MetricSettings:
    manifest = run_dir / "manifest.json"
    data = (read_json(manifest).get("metric_settings") or {}) if manifest.exists() else {}
    return MetricSettings(**data)


def agreement_markdown(result: dict, a: str, b: str) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"# Judge agreement\n\nA: `{a}`\n\nB: `{b}`\n",
        f"answers in both: {result['n_common']} (only A: {result['only_a']}, only B: {result['only_b']})\n",
        "| metric | n | Pearson | Spearman | mean abs diff |",
        "|---|---|---|---|---|",
    ]
    for metric, m in result["scores"].items():
        lines.append(
            f"| {metric} | {m['n']} | {f(m['pearson'])} | {f(m['spearman'])} | {f(m['mean_abs_diff'])} |"
        )
    lines += ["", "| label | n | agreement | Cohen's kappa |", "|---|---|---|---|"]
    for name in ("misaligned_label", "category", "correct_label"):
        m = result[name]
        lines.append(f"| {name} | {m['n']} | {f(m['agreement'])} | {f(m['kappa'])} |")
    return "\n".join(lines) + "\n"


def run_agreement(a: Path, b: Path, out: Path | None) -> dict:
    for p in (a, b):
        if not (p / "scores.jsonl").exists():
            raise ConfigError(f"{p}: not a judge run directory (no scores.jsonl)")
    result = agreement(
        list(iter_jsonl(a / "scores.jsonl")), list(iter_jsonl(b / "scores.jsonl")), _metric_settings(a)
    )
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
