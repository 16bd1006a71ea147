"""An experiment's plan: its steps, their identities and order, then running them (``python -m em.pipeline``
is the entry, em.tasks.pipeline the task that calls this).

An experiment (``conf/experiment/<name>.yaml``) is a chain of stages, e.g. base -> misaligned -> realigned.
Each stage may train (possibly from the previous stage's adapter or fine-tuned model), then evaluates and
judges. Every step runs as its own ``train.py`` / ``evaluate.py`` / ``judge.py`` process with explicit
overrides, exactly the commands a researcher could type. Before any runs, every step's config is composed and
its identity taken (em.identity): with a store (``stages_dir``), the step runs in the store's directory of that
identity, shared with every plan that needs the same step, and ``<pipeline run dir>/<stage>/<step>`` links to
it; without, it runs in ``<pipeline run dir>/<stage>/<step>``. A step whose run directory already holds a
complete manifest is skipped, so rerunning the command after a failure resumes where it stopped; a step that
fails stops the chain with the command to reproduce it. The chain ends with the side-by-side report.

Placeholders in stage overrides: ``@<stage>`` is the train run directory of that stage (for
``init_from=@misaligned``), ``@<stage>/<step>`` that stage's evaluate or judge run directory (for
``mitigation.direction_from=@misaligned/judge``), ``@train``, ``@evaluate`` the current stage's own directories.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.plan_status import link_steps, plan_rows, print_plan, summary_line, write_plan
from em.schedule import Step, StepFailed, check_graph, check_jobs, run_steps

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
STEPS = ("train", "evaluate", "judge")
STEP_COST = {"train": 3.0, "evaluate": 1.0, "judge": 1.0}  # rough relative run times, for the order of jobs>1


@dataclass
class Stage:
    name: str
    train: list[str] | None = None  # None: no training (evaluate the base model or a given run)
    evaluate: list[str] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    label: str | None = None  # shown in reports (base / misaligned / realigned)


@dataclass
class PipelinePlan:
    name: str
    out_dir: Path
    stages: list[Stage]
    common: dict[str, list[str]] = field(default_factory=dict)  # overrides for every stage's step
    logger: str | None = None  # conf/logger choice for every step (None: each step's own default)
    group: str | None = None  # W&B group of every step's run (None: the experiment name)
    # Where steps live. None: <out_dir>/<stage>/<step>, private to this plan. A folder: each step in
    # <store>/<step>/<name>-<identity>, shared by every plan that needs the same step (em.identity), with
    # <out_dir>/<stage>/<step> a link to it.
    store: Path | None = None
    identities: dict[str, dict] = field(default_factory=dict)  # "<stage>/<step>" -> identity (resolve_plan)
    digests: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)  # "<stage>/<step>" -> run directory in the store


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def plan_from_dict(name: str, out_dir: Path, pipeline: dict) -> PipelinePlan:
    """Build a typed plan from the ``pipeline`` node of an experiment config."""
    if not pipeline or not pipeline.get("stages"):
        raise ConfigError(
            f"experiment {name!r}: `pipeline.stages` is empty; expected a list of stages "
            f"with a `name` and optional `train`, `evaluate`, `judge` override lists"
        )
    common = {step: _as_list((pipeline.get("common") or {}).get(step)) for step in STEPS}
    stages, seen = [], set()
    for i, raw in enumerate(pipeline["stages"]):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise ConfigError(f"experiment {name!r}: pipeline.stages[{i}] needs a `name`")
        if raw["name"] in seen:
            raise ConfigError(f"experiment {name!r}: stage name {raw['name']!r} is used twice")
        unknown = set(raw) - {"name", "train", "evaluate", "judge", "label"}
        if unknown:
            raise ConfigError(f"experiment {name!r}: pipeline.stages[{i}] has unknown keys {sorted(unknown)}")
        seen.add(raw["name"])
        train = raw.get("train")
        stages.append(
            Stage(
                name=raw["name"],
                train=None if train is None else _as_list(train),
                evaluate=_as_list(raw.get("evaluate")),
                judge=_as_list(raw.get("judge")),
                label=raw.get("label") or raw["name"],
            )
        )
    return PipelinePlan(name=name, out_dir=Path(out_dir), stages=stages, common=common)


def step_dir(plan: PipelinePlan, stage: Stage, step: str) -> Path:
    if plan.store is None:
        return plan.out_dir / stage.name / step
    key = f"{stage.name}/{step}"
    if key not in plan.dirs:  # resolve_plan goes in the order of needs: this is a bug, not bad input
        raise RuntimeError(f"experiment {plan.name!r}: the run directory of {key} is used before it is known")
    return plan.dirs[key]


def _reference(
    plan: PipelinePlan, stage: Stage, arg: str, *, key_only: bool = False
) -> tuple[str, Path | None]:
    """The step key and run directory an ``@`` placeholder names (see the module docstring)."""
    ref = arg.split("=@", 1)[1]
    if ref in STEPS:
        return f"{stage.name}/{ref}", None if key_only else step_dir(plan, stage, ref)
    name, _, step = ref.partition("/")
    target = next((s for s in plan.stages if s.name == name), None)
    if target is None or (step and step not in STEPS) or (step == "train" and target.train is None):
        raise ConfigError(
            f"experiment {plan.name!r}, stage {stage.name!r}: `{arg}` refers to unknown stage or step {ref!r} "
            f"(stages: {sorted(s.name for s in plan.stages)}; steps: {list(STEPS)})"
        )
    step = step or "train"
    return f"{name}/{step}", None if key_only else step_dir(plan, target, step)


def _substitute(args: list[str], plan: PipelinePlan, stage: Stage) -> list[str]:
    return [f"{a.split('=@', 1)[0]}={_reference(plan, stage, a)[1]}" if "=@" in a else a for a in args]


def step_command(plan: PipelinePlan, stage: Stage, step: str) -> list[str] | None:
    """The exact command line of one step (None when the stage has no such step)."""
    args = _overrides(plan, stage, step)
    if args is None:
        return None
    return [sys.executable, str(REPO / f"{step}.py"), *args, f"hydra.run.dir={step_dir(plan, stage, step)}"]


def _overrides(plan: PipelinePlan, stage: Stage, step: str) -> list[str] | None:
    """A step's overrides but its run directory (which, with a store, its identity decides)."""
    if step == "train" and stage.train is None:
        return None
    own = {"train": stage.train or [], "evaluate": stage.evaluate, "judge": stage.judge}[step]
    args = list(plan.common.get(step, [])) + list(own)
    if step == "evaluate" and stage.train is not None:
        args.append(f"run={step_dir(plan, stage, 'train')}")
    if step == "judge":
        args.append(f"answers={step_dir(plan, stage, 'evaluate')}")
    args = _substitute(args, plan, stage)
    args += [
        f"run_name={plan.name}-{stage.name}-{step}",
        f"experiment_name={plan.name}",
        f"++stage_label={stage.label}",  # W&B tags and groups every step's run by it; reports show it
    ]
    if plan.logger:
        args.append(f"logger={plan.logger}")
    if plan.group:
        args.append(f"++logger.group={plan.group}")
    return args


def _needs(plan: PipelinePlan, stage: Stage, step: str) -> tuple[str, ...]:
    """What a step reads: its own stage's previous step, and every run an ``@`` placeholder names."""
    own = {"train": stage.train or [], "evaluate": stage.evaluate, "judge": stage.judge}[step]
    needs = []
    if step == "evaluate" and stage.train is not None:
        needs.append(f"{stage.name}/train")
    if step == "judge":
        needs.append(f"{stage.name}/evaluate")
    for arg in [*plan.common.get(step, []), *own]:
        if "=@" in arg:
            key = _reference(plan, stage, arg, key_only=True)[0]
            if key != f"{stage.name}/{step}" and key not in needs:
                needs.append(key)
    return tuple(needs)


def plan_steps(plan: PipelinePlan) -> list[Step]:
    """Every step of the plan in stage order, with the steps it needs (see em.schedule)."""
    steps = []
    for stage in plan.stages:
        for step in STEPS:
            cmd = step_command(plan, stage, step)
            if cmd is not None:
                key, target = f"{stage.name}/{step}", step_dir(plan, stage, step)
                steps.append(Step(key, cmd, target, _needs(plan, stage, step), STEP_COST[step]))
    return steps


def _needs_order(plan: PipelinePlan) -> list[tuple[Stage, str]]:
    """Every step, each after the steps it reads (a step's run directory names theirs); refuses a cycle."""
    steps = {f"{st.name}/{step}": (st, step) for st in plan.stages for step in STEPS
             if step != "train" or st.train is not None}  # fmt: skip
    needs = {key: _needs(plan, *where) for key, where in steps.items()}
    check_graph([Step(key, [], Path(), needs[key]) for key in steps])
    order: list[str] = []
    while len(order) < len(steps):  # plan order among the steps whose needs are placed (acyclic: checked)
        order.append(next(k for k in steps if k not in order and set(needs[k]) <= set(order)))
    return [steps[k] for k in order]


def resolve_plan(plan: PipelinePlan) -> list[Step]:
    """Compose every step's config as its command would (Hydra's compose API) before anything runs, each after
    the steps it reads, and take its identity (em.identity), which with a store decides its run directory.
    A wrong config name, key, type or override in any stage fails here, naming the stage and the step, not
    after the stages before it spent GPU time or judge money."""
    from contextlib import nullcontext

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from em.config import SCHEMAS, check_schema
    from em.identity import digest, resolved, step_identity, store_dir

    inside = GlobalHydra.instance().is_initialized()  # in `python -m em.pipeline`: conf/ is its config dir
    with nullcontext() if inside else initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for stage, step in _needs_order(plan):  # a step's command names the run directories of what it reads
            args, key = _overrides(plan, stage, step), f"{stage.name}/{step}"
            try:
                composed = compose(config_name=step, overrides=args)
                if step in SCHEMAS:
                    check_schema(composed, SCHEMAS[step])
                config = resolved(composed)
            except (HydraException, OmegaConfBaseException, ConfigError) as e:
                pretty = "python " + " ".join([f"{step}.py", *args])
                raise ConfigError(
                    f"experiment {plan.name!r}, stage {stage.name!r}, step {step!r}: its config does not "
                    f"compose, so nothing was run: {e}\n  the step's command: {pretty}"
                ) from None
            plan.identities[key] = step_identity(step, config)
            plan.digests[key] = digest(plan.identities[key])
            if plan.store is not None:
                plan.dirs[key] = store_dir(plan.store, step, stage.name, plan.digests[key])
    return plan_steps(plan)


def run_plan(
    plan: PipelinePlan,
    *,
    dry_run: bool = False,
    env: dict | None = None,
    jobs: int = 1,
    status_every_s: float = 30.0,
) -> list[Path]:
    """Run (or, with ``dry_run``, print) every step, ``jobs`` at a time as their needs allow (em.schedule);
    return the judge run directories in stage order."""
    check_jobs(jobs)
    steps = resolve_plan(plan)
    rows = plan_rows(plan, steps)
    path = write_plan(plan, rows)
    if dry_run:
        print_plan(rows, jobs)
        print(f"plan: {path}")
    else:
        log.info("%s (plan: %s)", summary_line(rows), path)
        if plan.store is not None:
            link_steps(plan, steps)
        try:
            run_steps(
                steps,
                jobs=jobs,
                env=env,
                log_dir=plan.out_dir / "logs",
                status_every_s=status_every_s,
                cwd=REPO,
            )
        except StepFailed as e:
            stage, step = e.step.key.split("/")
            where = f"{e.log_path} and {e.step.target}" if e.log_path else str(e.step.target)
            raise RuntimeError(
                f"experiment {plan.name!r}: stage {stage!r} step {step!r} failed (exit {e.code}); see {where} "
                f"for its log. Fix the cause and rerun the same command: finished steps are skipped. "
                f"To rerun this step alone:\n  {e.step.pretty}"
            ) from e
    return [s.target for s in steps if s.key.endswith("/judge")]
