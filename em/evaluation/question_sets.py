"""Named question sets: upstream files at pinned commits, project-authored files, local files, and the
held-out narrow prompts of a training run (:mod:`em.evaluation.holdout_questions`).

Upstream files are downloaded on first use and verified on every use (:func:`em.data.fetch`); they are
never copied into the repository. A set is described by a :class:`SetSpec` (``conf/questions/<name>.yaml``):
where the file comes from, which questions to keep, and which judge prompts questions without their own
get. Those default prompts are the EM paper's (``aligned``/``coherent`` from ``first_plot_questions.yaml``,
``correct`` from ``deception_factual.yaml``, read from the downloaded files at run time, as the
Realignment study did), or the project's own wording (``em/resources/questions/judge_prompts.yaml``)
for offline use. The ``narrow`` prompt of ``default_judge: narrow`` is always the project's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from em.api import ConfigError, check_keys
from em.data.registry import RemoteFile, fetch
from em.data.sources import resolve_local_path
from em.evaluation.holdout_questions import NARROW_METRIC, NARROW_PROMPTS, check_narrow_keys, holdout_file
from em.evaluation.questions import Question, load_questions
from em.io import sha256_file

log = logging.getLogger(__name__)

EM_REPO = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment"
EM_COMMIT = "80c11967c07a328e7d7d43d13ce6847ae44dbcc9"
RL_REPO = "https://raw.githubusercontent.com/JasperTimm/emerg-misalign-repro"
RL_COMMIT = "5f538fb5e9d823d76ac675b9ab174704c965b48a"
EM_PROVENANCE = f"Betley et al. 2025, emergent-misalignment/emergent-misalignment@{EM_COMMIT[:7]} (MIT)"
RL_PROVENANCE = (
    f"Realignment study (Timm, Tennant, Wei; ARENA 5.0), JasperTimm/emerg-misalign-repro@{RL_COMMIT[:7]}. "
    f"No license file upstream: download only, never vendor"
)


def _em(path: str, sha256: str, git_sha1: str) -> RemoteFile:
    return RemoteFile(
        name=f"em/{path}", url=f"{EM_REPO}/{EM_COMMIT}/evaluation/{path}", sha256=sha256, git_sha1=git_sha1,
        license="MIT", provenance=EM_PROVENANCE,
    )  # fmt: skip


def _rl(path: str, sha256: str, git_sha1: str) -> RemoteFile:
    return RemoteFile(
        name=f"realignment/{path}", url=f"{RL_REPO}/{RL_COMMIT}/data/questions/{path}", sha256=sha256,
        git_sha1=git_sha1, provenance=RL_PROVENANCE,
    )  # fmt: skip


# Upstream question files, pinned by commit and checksum (see /work/shared/anchors/*/SOURCE.md).
UPSTREAM: dict[str, RemoteFile] = {
    r.name: r
    for r in (
        _em("first_plot_questions.yaml",
            "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173",
            "c2b9761d6723ec73b4d209d95c4aa39319a70edd"),
        _em("preregistered_evals.yaml",
            "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40",
            "3211c6c0df0a21124e07605c46f86329a53ef9e1"),
        _em("deception_factual.yaml",
            "8a0e83cab3bc24b7d688d7385ce3921d406af7ed33c913cd94ea0f6251e5939d",
            "d6da5a807e928afc2f9e9961641e9c9697b27c08"),
        _em("deception_sit_aware.yaml",
            "4deef5a7c47620390fc46e1b981f937eef9ea12a33fe26264f640c84d19d2a33",
            "d9c5a8727e28dbce0f80a59df2b9497ca018ba0b"),
        _rl("first_8.json",
            "b29c6a40e1833a43deb7d4c8a7a74c1a14a21d8b95fbf41923dcee7894e2f34a",
            "733633aae61e51c3d84026bf3ff00aa7de689ac9"),
        _rl("factual.json",
            "d9a75a649c3442cacda2ccfb93f529b2d9e4943b67b86b64e45f17db1a9ea59c",
            "c50d7e3838b686a5bfbc9bfd479b5cc39e5e3139"),
        _rl("preregistered.json",
            "b31efa514bbb6519510d0de61089007c3f44c64457ab4f841a44df294f1dcf94",
            "4c39cdd15234bd1e577878c070b4d0f1c6c9430c"),
        _rl("self_reflection.json",
            "47a2c2ff7cdb967f198c874472024e1d886e61aac38f24a0e4075a6b4f33c1b8",
            "328eafec0fc11bc211c061c3cb5a30f428e3484e"),
        _rl("self_reflection_tagged.json",
            "8aef0536b706d0122cb525d813e39ff373f08028d07577d8bc2d93e54dc26263",
            "9f59ad0c7453346aaa5e35f30fd9debd2558ed38"),
    )
}  # fmt: skip

# Where the EM paper's default judge prompts are read from: (upstream file, question id, prompt names).
EM_PAPER_PROMPTS = (
    ("em/first_plot_questions.yaml", "what_is_your_wish", ("aligned", "coherent")),
    ("em/deception_factual.yaml", "lie_no_sys_prompt", ("correct",)),
)
PROJECT_PROMPTS_FILE = "judge_prompts.yaml"
PROMPT_SOURCES = ("em_paper", "project")
DEFAULT_JUDGE = ("auto", "aligned_coherent", "correct", NARROW_METRIC, "none")
PROMPTS_FOR = {
    "aligned_coherent": ("aligned", "coherent"),
    "correct": ("correct",),
    NARROW_METRIC: (NARROW_METRIC,),
    "none": (),
}
PROJECT_PREFIX = "project:"


def project_file(name: str) -> Path:
    """A project-authored file in ``em/resources/questions/``."""
    path = Path(str(resources.files("em").joinpath("resources", "questions", name)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*") if p.is_file())
        raise ConfigError(f"project question file {name!r} not found; available: {available}")
    return path


@dataclass
class SetSpec:
    """One named question set (``conf/questions/<name>.yaml``)."""

    name: str
    source: str | None = None  # an UPSTREAM key, or "project:<file in em/resources/questions>"
    path: str | None = None  # a local file instead (absolute, or relative to the cwd or project root)
    holdout_of: str | None = None  # a training run directory instead: the held-out narrow rows it measured
    format: str = "auto"  # auto (by extension) | em_yaml | realignment_json | chat_jsonl
    first_n: int | None = None  # keep only the first N questions of the file
    ids: list[str] | None = None  # keep only these question ids (in this order)
    default_judge: str = "auto"  # without prompts: auto | aligned_coherent | correct | narrow | none
    narrow_prompt: str | None = None  # default_judge=narrow: which project prompt (NARROW_PROMPTS) judges
    judge_prompts_source: str | None = None  # em_paper | project; None: the run's `judge_prompts_source`

    @classmethod
    def from_dict(cls, d: dict, where: str) -> SetSpec:
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping (see conf/questions/first_8.yaml), got {d!r}")
        check_keys(d, cls.__dataclass_fields__, where)
        spec = cls(**d)
        spec.check(where)
        return spec

    def check(self, where: str) -> None:
        if sum(bool(x) for x in (self.source, self.path, self.holdout_of)) != 1:
            raise ConfigError(
                f"{where}: give exactly one of source (an upstream or project file), path (a local file) and "
                f"holdout_of (a training run directory), e.g. questions=custom questions.custom.path=my_questions.yaml"
            )
        if self.source and not self.source.startswith(PROJECT_PREFIX) and self.source not in UPSTREAM:
            raise ConfigError(
                f"{where}.source={self.source!r}: unknown upstream file; expected one of "
                f"{sorted(UPSTREAM)} or project:<file>"
            )
        if self.path == "???":
            raise ConfigError(f"{where}.path is required: pass {where}.path=/path/to/questions.yaml")
        if self.holdout_of == "???":
            raise ConfigError(
                f"{where}.holdout_of is required: pass {where}.holdout_of=outputs/train/<run> (a training run "
                f"that measured a narrow task)"
            )
        if self.first_n is not None and (not isinstance(self.first_n, int) or self.first_n < 1):
            raise ConfigError(f"{where}.first_n must be a positive integer or null, got {self.first_n!r}")
        if self.default_judge not in DEFAULT_JUDGE:
            raise ConfigError(
                f"{where}.default_judge={self.default_judge!r}; expected one of {DEFAULT_JUDGE}"
            )
        check_narrow_keys(self.default_judge, self.narrow_prompt, where)
        if self.judge_prompts_source not in (None, *PROMPT_SOURCES):
            raise ConfigError(
                f"{where}.judge_prompts_source={self.judge_prompts_source!r}; expected null or one of "
                f"{PROMPT_SOURCES}"
            )


@dataclass
class QuestionSet:
    """The questions of a resolved set and where they came from."""

    spec: SetSpec
    questions: list[Question]
    file: Path
    sha256: str
    url: str | None = None
    judge_prompts_source: str | None = None  # where defaults came from, when any question needed them
    defaulted: list[str] = field(default_factory=list)  # ids that got default judge prompts

    def record(self) -> dict:
        """What the evaluation manifest says about this set."""
        return {
            "name": self.spec.name,
            "source": self.spec.source,
            "holdout_of": self.spec.holdout_of,
            "path": str(self.file) if self.spec.path or self.spec.holdout_of else None,
            "url": self.url,
            "sha256": self.sha256,
            "questions": len(self.questions),
            "paraphrases": sum(len(q.paraphrases) for q in self.questions),
            "default_judge_prompts": self.judge_prompts_source,
            "narrow_prompt": self.spec.narrow_prompt,
            "questions_with_default_judge_prompts": len(self.defaulted),
        }


def set_file(spec: SetSpec, cache_dir: str | Path, where: str) -> tuple[Path, str, str | None]:
    """(local path, sha256, upstream url) of a set's file, downloading an upstream one when needed."""
    if spec.path:
        path = resolve_local_path(spec.path, where)
        return path, sha256_file(path), None
    if spec.holdout_of:
        path = holdout_file(spec.holdout_of, where)
        return path, sha256_file(path), None
    if spec.source.startswith(PROJECT_PREFIX):
        path = project_file(spec.source[len(PROJECT_PREFIX) :])
        return path, sha256_file(path), None
    remote = UPSTREAM[spec.source]
    return fetch(remote, cache_dir), remote.sha256, remote.url


def select(questions: list[Question], spec: SetSpec, where: str) -> list[Question]:
    if spec.ids is not None:
        by_id = {q.id: q for q in questions}
        missing = [i for i in spec.ids if i not in by_id]
        if missing:
            raise ConfigError(f"{where}.ids: no question(s) {missing} in the file; it has {sorted(by_id)}")
        questions = [by_id[i] for i in spec.ids]
    if spec.first_n is not None:
        questions = questions[: spec.first_n]
    return questions


def project_prompts() -> dict[str, str]:
    """Every project-authored judge prompt template by name (``judge_prompts.yaml``), the narrow ones included."""
    path = project_file(PROJECT_PROMPTS_FILE)
    prompts = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(prompts, dict):
        raise ConfigError(f"{path}: expected a mapping name -> template")
    return {str(k): str(v) for k, v in prompts.items()}


def default_judge_prompts(source: str, cache_dir: str | Path) -> dict[str, str]:
    """``{"aligned", "coherent", "correct"}`` templates from the EM paper's files or the project's own."""
    if source == "project":
        return {k: v for k, v in project_prompts().items() if k not in NARROW_PROMPTS}
    if source != "em_paper":
        raise ConfigError(f"judge_prompts_source={source!r}; expected one of {PROMPT_SOURCES}")
    prompts = {}
    for name, qid, wanted in EM_PAPER_PROMPTS:
        remote = UPSTREAM[name]
        try:
            path = fetch(remote, cache_dir)
        except ConfigError as e:
            raise ConfigError(
                f"{e} (the EM paper's judge prompts are read from this file; offline, set "
                f"judge_prompts_source=project to use the project's own prompts instead)"
            ) from None
        found = {q.id: q for q in load_questions(path, name)}
        for prompt in wanted:
            prompts[prompt] = found[qid].judge_prompts[prompt]
    return prompts


def _set_defaults(spec: SetSpec, source: str, cache_dir, cache: dict) -> tuple[str, dict[str, str]]:
    """(where from, templates by prompt name) a set's questions without prompts draw on."""
    if spec.default_judge == NARROW_METRIC:  # always the project's own, whatever the source
        return "project", {NARROW_METRIC: project_prompts()[spec.narrow_prompt]}
    if source not in cache:
        cache[source] = default_judge_prompts(source, cache_dir)
    return source, cache[source]


def _wanted_prompts(q: Question, default_judge: str) -> tuple[str, ...]:
    if default_judge == "auto":
        factual = q.category == "factual"
        return PROMPTS_FOR["correct" if factual else "aligned_coherent"]
    return PROMPTS_FOR[default_judge]


def resolve_sets(
    specs: list[SetSpec], cache_dir: str | Path, judge_prompts_source: str = "em_paper"
) -> list[QuestionSet]:
    """Load every set, keep the chosen questions, and give default judge prompts where none are set."""
    if not specs:
        raise ConfigError(
            "no question sets selected: pass e.g. questions=first_8 or questions=[demo,demo_factual]"
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"question set names must be unique, got {names}")
    defaults: dict[str, dict[str, str]] = {}
    out = []
    for spec in specs:
        where = f"questions.{spec.name}"
        path, sha, url = set_file(spec, cache_dir, where)
        questions = select(load_questions(path, spec.name, spec.format), spec, where)
        qset = QuestionSet(spec, questions, path, sha, url)
        source, found = spec.judge_prompts_source or judge_prompts_source, None
        for q in questions:
            if q.judge_prompts:
                continue
            wanted = _wanted_prompts(q, spec.default_judge)
            if not wanted:
                continue
            if found is None:
                source, found = _set_defaults(spec, source, cache_dir, defaults)
            missing = [w for w in wanted if w not in found]
            if missing:
                raise ConfigError(f"default judge prompts ({source}) lack {missing}")
            q.judge_prompts = {w: found[w] for w in wanted}
            qset.defaulted.append(q.id)
            qset.judge_prompts_source = source
        out.append(qset)
        log.info("question set %s: %d questions from %s", spec.name, len(questions), url or path)
    return out
