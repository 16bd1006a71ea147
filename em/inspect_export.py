"""Export a judged run (judge.py's run directory) as an Inspect eval log, so ``inspect view`` browses it.

Invariant: the log holds one sample per scored answer (one per ``id`` of scores.jsonl), and every value in it
is read from the run's files (scores.jsonl, summary.json, manifest.json, the evaluate run's answers.jsonl);
nothing is invented or recomputed. A metric with no number keeps the judge's label (e.g. ``CODE``) as its
value, or is an unscored (NaN) Score with the reason when there is neither.

Runs in the Inspect environment (``make setup-inspect``)::

    .venv-inspect/bin/python -m em.inspect_export outputs/judge/<run> [more runs...] [--out DIR]

This module writes the log file and is the CLI; the run's files are read by :mod:`em.inspect_source`, the
log is built by :mod:`em.inspect_log`. None of them imports inspect_ai at the top (nor openai, nor anything
em's Inspect environment lacks): bad input is refused before inspect_ai is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from em.contracts import SCORES
from em.inspect_log import log_file_name, to_log
from em.inspect_source import ExportError, load_answers, load_run


def export_run(
    judge_run_dir: str | Path, out_dir: str | Path | None = None, allow_partial: bool = False
) -> Path:
    """Write the judge run as one Inspect ``.eval`` log into ``out_dir`` (default ``<run>/inspect/``)."""
    run_dir = Path(judge_run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory (expected a judge run directory)")
    run = load_run(run_dir, allow_partial)  # before importing inspect_ai (seconds): bad input fails at once
    from inspect_ai.log import write_eval_log

    try:
        eval_log = to_log(run, load_answers(run))
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a row or file of an unexpected shape
        raise ExportError(f"{run_dir / SCORES}: unexpected content ({type(e).__name__}: {e})") from e
    out = Path(out_dir) if out_dir is not None else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    path = out / log_file_name(eval_log.eval.task, eval_log.eval.eval_id)
    tmp = out / f".{path.name}.tmp"  # written whole, then renamed: the viewer never lists a half-written log
    try:
        write_eval_log(eval_log, str(tmp), format="eval")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m em.inspect_export", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="judge run directories (with scores.jsonl)")
    parser.add_argument("--out", type=Path, help="where to write the logs (default <run>/inspect/)")
    parser.add_argument(
        "--allow-partial", action="store_true", help="export unfinished judge runs as they stand"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    dirs = []
    for run_dir in args.runs:
        try:
            path = export_run(run_dir, args.out, args.allow_partial)
        except (ExportError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ImportError as e:
            print(f"error: {e}; run `make setup-inspect`, then .venv-inspect/bin/python -m em.inspect_export",
                  file=sys.stderr)  # fmt: skip
            return 2
        print(f"wrote {path}")
        dirs += [path.parent] if path.parent not in dirs else []
    viewer = Path(sys.executable).parent / "inspect"  # this environment's viewer, which may not be on PATH
    for d in dirs:
        print(f"browse: {viewer if viewer.exists() else 'inspect'} view --log-dir {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
