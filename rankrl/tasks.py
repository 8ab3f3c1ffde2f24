"""Text-level tasks: the embedded ``default`` and ``arith`` tasks, local files, and hub datasets.

A :class:`Task` holds untokenised :class:`Example` rows in ``train``/``eval`` (and ``test`` when the source
has one); tokenisation happens in the trainers. :func:`load_task` is the single entry point::

    load_task("default")                      # embedded sentiment task, offline, identical everywhere
    load_task("arith")                        # embedded "12+7=" -> "19" causal-LM task
    load_task("../shared/data/trec_qc", labels="fine")
    load_task("glue:sst2")                    # hub dataset "name[:config]", refused when offline

Malformed local files raise :class:`TaskFormatError` naming ``file:line`` and what was expected.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KINDS: tuple[str, ...] = ("classification", "causal_lm")
SPLITS: tuple[str, ...] = ("train", "eval", "test")


class TaskFormatError(ValueError):
    """A task source is missing, empty or malformed; the message names the file and 1-based line."""


@dataclass(frozen=True)
class Example:
    """One row of a task.

    Attributes:
        text: classification input, or the causal-LM prompt.
        label: class index into ``Task.label_names`` (classification only).
        target: expected completion, e.g. ``"19"`` or GSM8K's final number (causal LM only).
    """

    text: str
    label: int | None = None
    target: str | None = None


@dataclass(frozen=True)
class Task:
    """A named set of splits of one kind.

    Attributes:
        name: short name (``"default"``, ``"arith"``, a file/directory stem or the hub spec).
        kind: ``"classification"`` or ``"causal_lm"``.
        splits: ``"train"`` and ``"eval"`` always, ``"test"`` when the source has one.
        label_names: class names, index = label (classification only).
    """

    name: str
    kind: str
    splits: dict[str, tuple[Example, ...]]
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if unknown := sorted(set(self.splits) - set(SPLITS)):
            raise ValueError(f"{where}: unknown splits {unknown}, allowed: {SPLITS}")
        if not (self.splits.get("train") and self.splits.get("eval")):
            raise ValueError(f"{where}: splits 'train' and 'eval' must both be present and non-empty")
        if (self.kind == "classification") != bool(self.label_names) or len(self.label_names) == 1:
            raise ValueError(f"{where}: classification needs >= 2 label_names, causal_lm none")
        for split, rows in self.splits.items():
            for i, ex in enumerate(rows):
                if self.kind == "classification" and not (
                    isinstance(ex.label, int) and 0 <= ex.label < len(self.label_names)
                ):
                    raise ValueError(f"{where} {split}[{i}]: label must be an int in [0, {self.num_labels}),"
                                     f" got {ex.label!r}")  # fmt: skip
                if self.kind == "causal_lm" and not isinstance(ex.target, str):
                    raise ValueError(f"{where} {split}[{i}]: causal_lm rows need a str target")

    @property
    def num_labels(self) -> int:
        """Number of classes (0 for causal-LM tasks)."""
        return len(self.label_names)


# ---------------------------------------------------------------------------------------------------------
# Embedded tasks. A fixed RNG seed makes "default" the same rows on every machine and for every run seed;
# load_task's ``seed`` only affects the max_train/max_eval subsamples.

_GEN_SEED = 20240601
_DEFAULT_SIZES = {"train": 3000, "eval": 600, "test": 600}
_ARITH_SIZES = {"train": 4000, "eval": 500, "test": 500}

_SUBJECTS = (
    "the acting", "this film", "the movie", "the soundtrack", "the plot", "the script", "the dialogue",
    "the ending", "the cast", "the lead performance", "the cinematography", "the pacing", "the direction",
    "the story", "the humor", "the editing", "the score", "the screenplay", "the final act", "the opening",
    "the villain", "the sequel", "this documentary", "the animation", "the premise", "the romance",
    "the climax", "the camera work", "the finale", "the twist", "the characters", "the visuals",
    "the special effects", "the jokes", "the action scenes", "the songs",
)  # fmt: skip
_POS_ADJ = (
    "wonderful", "brilliant", "charming", "delightful", "gripping", "moving", "clever", "superb", "engaging",
    "beautiful", "funny", "memorable", "touching", "refreshing", "excellent", "stunning", "witty", "smart",
    "compelling", "enjoyable", "heartfelt", "impressive", "inventive", "powerful", "thrilling", "captivating",
    "elegant", "entertaining", "fantastic", "great", "good", "lovely",
)  # fmt: skip
_NEG_ADJ = (
    "boring", "dull", "awful", "tedious", "clumsy", "bland", "predictable", "terrible", "forgettable", "weak",
    "shallow", "messy", "lifeless", "painful", "confusing", "tiresome", "disappointing", "flat", "bad",
    "dreadful", "pointless", "lazy", "stale", "uninspired", "mediocre", "annoying", "sloppy", "pretentious",
    "cheap", "poor", "silly", "grating",
)  # fmt: skip
_POS_VERB = (("loved", "love"), ("enjoyed", "enjoy"), ("adored", "adore"), ("admired", "admire"),
             ("liked", "like"), ("appreciated", "appreciate"), ("relished", "relish"))  # fmt: skip
_NEG_VERB = (("hated", "hate"), ("disliked", "dislike"), ("loathed", "loathe"), ("despised", "despise"),
             ("resented", "resent"), ("detested", "detest"), ("regretted", "regret"))  # fmt: skip
_WHO = ("i", "we", "my wife", "my friends", "the audience", "the critics", "my brother", "everyone i know")
# Repeated "" weights the plain form; intensifiers and prefixes carry no polarity, only surface variety.
_INTENS = ("", "", "", "", "really ", "truly ", "very ", "quite ", "incredibly ", "remarkably ", "rather ",
           "utterly ", "genuinely ", "so ", "pretty ")  # fmt: skip
_PREFIX = ("", "", "", "", "", "honestly , ", "overall , ", "in the end , ", "frankly , ", "to be fair , ",
           "for me , ", "all in all , ")  # fmt: skip
_END = ("", " .", " .", " !")


def _clause(rng: random.Random, polarity: int, negate: bool) -> str:
    """One clause whose sentiment is ``polarity`` XOR ``negate`` (0 = negative, 1 = positive)."""
    # Every polar word appears under negation and as the distractor clause of a contrast, so no single word
    # decides the label (unigram logistic regression reaches ~57 %, frozen MiniLM embeddings + LR ~79 %):
    # the learner has to read negation scope and which clause carries the verdict.
    if rng.random() < 0.3:
        past, base = rng.choice(_POS_VERB if polarity else _NEG_VERB)
        who, subj = rng.choice(_WHO), rng.choice(_SUBJECTS)
        if not negate:
            return f"{who} {past} {subj}"
        neg = rng.choice(("did not", "didn't", "did n't", "never"))
        return f"{who} {neg} {past if neg == 'never' else base} {subj}"
    subj = rng.choice(_SUBJECTS)
    adj = rng.choice(_POS_ADJ if polarity else _NEG_ADJ)
    was, is_ = ("were", "are") if subj.endswith("s") else ("was", "is")
    if not negate:
        return f"{subj} {rng.choice((was, was, is_, 'felt', 'seemed'))} {rng.choice(_INTENS)}{adj}"
    verb = rng.choice((f"{was} not", f"{was} not", f"{was}n't", f"{is_} not", f"{was} never", f"{was} hardly",
                       f"{was} far from", "did not feel", "never seemed", f"{was} not at all"))  # fmt: skip
    return f"{subj} {verb} {adj}"


def _review(rng: random.Random, label: int) -> str:
    """A review sentence with sentiment ``label``: one clause, or a contrast whose main clause decides."""
    r = rng.random()
    if r < 0.55:
        neg = rng.random() < 0.4
        return f"{rng.choice(_PREFIX)}{_clause(rng, label ^ neg, neg)}{rng.choice(_END)}"
    n1, n2 = rng.random() < 0.3, rng.random() < 0.3
    other, main = _clause(rng, (1 - label) ^ n1, n1), _clause(rng, label ^ n2, n2)
    if r < 0.8:
        return f"{other} , but {main}{rng.choice(_END)}"
    if r < 0.9:
        return f"although {other} , {main}{rng.choice(_END)}"
    return f"{main} , even though {other}{rng.choice(_END)}"


@functools.lru_cache(maxsize=1)
def _default_splits() -> dict[str, tuple[Example, ...]]:
    rng, seen, splits = random.Random(_GEN_SEED), set(), {}
    for split, size in _DEFAULT_SIZES.items():
        rows = []
        for i in range(size):
            label = i % 2  # alternate so every split is exactly balanced
            text = _review(rng, label)
            while text in seen:  # no exact duplicate anywhere, so eval/test measure generalisation
                text = _review(rng, label)
            seen.add(text)
            rows.append(Example(text, label=label))
        splits[split] = tuple(rows)
    return splits


@functools.lru_cache(maxsize=1)
def _arith_splits() -> dict[str, tuple[Example, ...]]:
    # Every problem once, shuffled with a fixed seed and sliced, so splits are disjoint. Subtractions keep
    # a >= b: tiny models learn non-negative answers first, and the reward stays a plain string match.
    problems = [(a, "+", b) for a in range(100) for b in range(100)]
    problems += [(a, "-", b) for a in range(100) for b in range(a + 1)]
    random.Random(_GEN_SEED).shuffle(problems)
    splits, start = {}, 0
    for split, size in _ARITH_SIZES.items():
        chunk, start = problems[start : start + size], start + size
        splits[split] = tuple(Example(f"{a}{op}{b}=", target=str(a + b if op == "+" else a - b))
                              for a, op, b in chunk)  # fmt: skip
    return splits


# ---------------------------------------------------------------------------------------------------------
# Local files. Parsers return _Raw rows that remember "file:line", so label mapping, which runs after every
# split is read (names come from train), can still point at the offending line.


@dataclass(frozen=True)
class _Raw:
    text: str
    label: str | None = None  # raw label text; indices are assigned once all splits are read
    target: str | None = None
    where: str = ""


_TREC_LINE = re.compile(r"^([A-Z]+):(\S+) (.*\S.*)$")
_SST_LINE = re.compile(r"^(\d+) (.*\S.*)$")
_GSM8K_ANSWER = re.compile(r"####\s*(-?[\d,\.]+)\s*$")
_SST_NAMES = ("negative", "positive")  # data/sst2 README: 0 = negative, 1 = positive
_SCHEMAS = (("prompt", "completion"), ("question", "answer"), ("text", "label"), ("sentence", "label"))
_SCHEMA_HELP = "'text'/'sentence' and 'label', 'prompt' and 'completion', or 'question' and 'answer' fields"


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; an empty file is an error."""
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise TaskFormatError(f"{path}:{line}: expected {encoding} text ({err.reason})") from None
    if not text.strip():
        raise TaskFormatError(f"{path}: file is empty")
    # split("\n"), not splitlines(): latin-1 byte 0x85 (NEL) and friends would otherwise start new "lines".
    yield from ((n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip())


def _sniff(path: Path) -> str:
    """The format of ``path``: by extension, else by its first lines."""
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json", ".tsv", ".csv"):
        return {".json": "jsonl"}.get(ext, ext[1:])
    head = [line for _, (_, line) in zip(range(20), _lines(path, "latin-1"), strict=False)]
    if head[0].lstrip().startswith("{"):
        return "jsonl"
    # Vote over the first lines so that one malformed early line still gets its own line-level error.
    trec, sst = (sum(bool(rx.match(line)) for line in head) for rx in (_TREC_LINE, _SST_LINE))
    if trec or sst:
        return "trec" if trec > sst else "sst"
    if "\t" in head[0] or "," in head[0]:
        return "tsv" if "\t" in head[0] else "csv"
    raise TaskFormatError(
        f'{path}:1: cannot tell the format; expected JSONL, TSV/CSV with a header, "<label> <text>" (SST-2) '
        f'or "COARSE:fine <text>" (TREC) lines, got {head[0][:80]!r}'
    )


def _parse_sst(path: Path) -> list[_Raw]:
    rows = []
    for n, line in _lines(path):
        parts = line.rstrip("\n").split(" ", 1)
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].strip():
            msg = f'expected "<label> <text>" with an integer label, got {line[:80]!r}'
            raise TaskFormatError(f"{path}:{n}: {msg}")
        rows.append(_Raw(parts[1], parts[0], where=f"{path}:{n}"))
    return rows


def _parse_trec(path: Path, labels: str) -> list[_Raw]:
    # The original files are latin-1 (TREC.train has a few non-ASCII bytes); a UTF-8 re-encoded copy must not
    # be turned into mojibake, so UTF-8 wins whenever the bytes decode as UTF-8.
    encoding = "utf-8" if _is_utf8(path) else "latin-1"
    rows = []
    for n, line in _lines(path, encoding):
        m = _TREC_LINE.match(line)
        if not m:
            raise TaskFormatError(f'{path}:{n}: expected "COARSE:fine <question>", got {line[:80]!r}')
        label = m.group(1) if labels == "coarse" else line.split(" ", 1)[0]
        rows.append(_Raw(m.group(3), label, where=f"{path}:{n}"))
    return rows


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_jsonl(path: Path) -> list[_Raw]:
    records = []
    for n, line in _lines(path):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"{path}:{n}: expected one JSON object per line ({err.msg})") from None
        if not isinstance(rec, dict):
            raise TaskFormatError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        records.append((f"{path}:{n}", rec))
    return _from_records(records)


def _parse_table(path: Path, delimiter: str) -> list[_Raw]:
    # GLUE-style TSVs have bare quotes inside sentences, so only CSV honours quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    if not _is_utf8(path):
        raise TaskFormatError(f"{path}: expected UTF-8 text")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise TaskFormatError(f"{path}: file is empty")
        if _schema(header) is None:
            raise TaskFormatError(f"{path}:1: expected a header with {_SCHEMA_HELP}, got {header}")
        records = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise TaskFormatError(f"{path}:{reader.line_num}: expected {len(header)} fields like the "
                                      f"header {header}, got {len(row)}")  # fmt: skip
            records.append((f"{path}:{reader.line_num}", dict(zip(header, row, strict=True))))
    if not records:
        raise TaskFormatError(f"{path}: no rows after the header")
    return _from_records(records)


def _schema(keys: Iterable[str]) -> tuple[str, str] | None:
    """(input field, output field) for a record's keys, or None when nothing fits."""
    keys = set(keys)
    for text, out in _SCHEMAS:
        if {text, out} <= keys:
            return text, out
    return None


def _from_records(records: list[tuple[str, dict]]) -> list[_Raw]:
    """Rows from (where, record) pairs; the first record fixes the schema for all."""
    if not records:
        raise TaskFormatError("no rows")
    schema = _schema(records[0][1])
    rows = []
    for where, rec in records:
        if schema is None or not set(schema) <= set(rec):
            raise TaskFormatError(f"{where}: expected a row with {_SCHEMA_HELP}, got keys {sorted(rec)}")
        text, out = rec[schema[0]], rec[schema[1]]
        if not isinstance(text, str) or not text.strip():
            raise TaskFormatError(f"{where}: expected a non-empty string in {schema[0]!r}, got {text!r}")
        if schema[1] == "label":
            if out is None or isinstance(out, (list, dict, float)) or not str(out).strip():
                raise TaskFormatError(f"{where}: expected an int or string 'label', got {out!r}")
            rows.append(_Raw(text, str(out).strip(), where=where))
        elif schema[1] == "answer":
            m = _GSM8K_ANSWER.search(str(out))
            if not m:
                raise TaskFormatError(f"{where}: expected the 'answer' to end in '#### <number>' (GSM8K)")
            rows.append(_Raw(text, target=m.group(1).replace(",", ""), where=where))
        elif isinstance(out, str):
            rows.append(_Raw(text, target=out, where=where))
        else:
            raise TaskFormatError(f"{where}: expected a string 'completion', got {out!r}")
    return rows


_ROLE_WORDS = {"train": "train", "training": "train", "dev": "eval", "valid": "eval", "val": "eval",
               "validation": "eval", "eval": "eval", "test": "test"}  # fmt: skip


def _split_files(directory: Path) -> dict[str, Path]:
    """Map train/eval/test to the files of ``directory`` whose names say so (README and the like ignored)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        roles = {_ROLE_WORDS[w] for w in re.split(r"[._\-]", p.name.lower()) if w in _ROLE_WORDS}
        if p.is_file() and not p.name.startswith(".") and len(roles) == 1:
            found.setdefault(roles.pop(), []).append(p)
    for role, paths in found.items():
        if len(paths) > 1:
            raise TaskFormatError(f"{directory}: several {role} files {[p.name for p in paths]}; pass a file")
    if "train" not in found:
        raise TaskFormatError(f"{directory}: no train file (expected a file name containing 'train')")
    return {role: paths[0] for role, paths in found.items()}


def _finish(name: str, raw: dict[str, list[_Raw]], names: tuple[str, ...] | None, *, seed: int,
            eval_fraction: float, binary_names: tuple[str, ...] | None = None) -> Task:  # fmt: skip
    """Map labels to indices, carve an eval split when missing, and build the Task.

    Integer labels are kept as indices (names ``"0"``, ``"1"``, ... or ``binary_names`` for 0/1 labels).
    String labels get sorted names taken from train; an eval/test label unseen in train is an error rather
    than a silently grown head.
    """
    if len({r.target is None for rows in raw.values() for r in rows}) > 1:
        raise TaskFormatError(f"task {name!r}: splits mix classification and causal-LM rows")
    if raw["train"][0].target is not None:
        splits = {s: [Example(r.text, target=r.target) for r in rows] for s, rows in raw.items()}
        kind, names = "causal_lm", ()
    else:
        kind, every = "classification", [r for rows in raw.values() for r in rows]
        if names is None and all(re.fullmatch(r"\d+", r.label) for r in every):
            top = max(int(r.label) for r in every)
            names = binary_names if binary_names and top <= 1 else tuple(map(str, range(max(top, 1) + 1)))
        numeric = names is not None  # raw labels are indices ("0", "1", ...), not names
        names = names or tuple(sorted({r.label for r in raw["train"]}))
        index = {(str(i) if numeric else n): i for i, n in enumerate(names)}
        for r in every:
            if r.label not in index:
                raise TaskFormatError(f"{r.where}: label {r.label!r} does not occur in the train split "
                                      f"(train labels: {', '.join(names)})")  # fmt: skip
        splits = {s: [Example(r.text, label=index[r.label]) for r in rows] for s, rows in raw.items()}
    if "eval" not in splits:
        splits["train"], splits["eval"] = _carve(splits["train"], eval_fraction, seed)
    return Task(name, kind, {s: tuple(splits[s]) for s in SPLITS if s in splits}, names)


def _carve(rows: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of ``rows`` as eval, stratified by label, keeping source order in both."""
    if len(rows) < 2:
        raise TaskFormatError(f"cannot carve an eval split out of {len(rows)} train row(s)")
    rng, groups = random.Random(seed), {}
    for i, ex in enumerate(rows):
        groups.setdefault(ex.label, []).append(i)
    chosen: set[int] = set()
    for key in sorted(groups, key=str):
        rng.shuffle(groups[key])
        chosen.update(groups[key][: round(len(groups[key]) * fraction)])
    chosen = chosen or {rng.randrange(len(rows))}  # eval must not be empty ...
    if len(chosen) == len(rows):  # ... and neither may train
        chosen.remove(min(chosen))
    train = [ex for i, ex in enumerate(rows) if i not in chosen]
    return train, [ex for i, ex in enumerate(rows) if i in chosen]


def _load_local(path: Path, *, labels: str, seed: int, eval_fraction: float) -> Task:
    files = _split_files(path) if path.is_dir() else {"train": path}
    parsers = {"sst": _parse_sst, "jsonl": _parse_jsonl, "trec": lambda p: _parse_trec(p, labels),
               "tsv": lambda p: _parse_table(p, "\t"), "csv": lambda p: _parse_table(p, ",")}  # fmt: skip
    raw, formats = {}, set()
    for role, file in files.items():
        fmt = _sniff(file)
        formats.add(fmt)
        raw[role] = parsers[fmt](file)
    name = path.name if path.is_dir() else path.stem
    binary = _SST_NAMES if formats == {"sst"} else None
    return _finish(name, raw, None, seed=seed, eval_fraction=eval_fraction, binary_names=binary)


# ---------------------------------------------------------------------------------------------------------
# Hub datasets.

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(:[\w.\-]+)?$")
_FILE_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".txt", ".train", ".dev", ".test")
_HUB_SPLITS = {"train": "train", "validation": "eval", "valid": "eval", "dev": "eval", "test": "test"}


def _looks_like_hub(spec: str) -> bool:
    if not _HUB_NAME.match(spec) or spec.lower().endswith(_FILE_SUFFIXES):
        return False
    # "sst2/missing" whose first part is a local directory is a mistyped path, not a hub dataset.
    return not ("/" in spec and Path(spec.split("/", 1)[0]).is_dir())


def _load_hub(spec: str, *, seed: int, eval_fraction: float) -> Task:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        # Fail before datasets does: its offline error is a long traceback that never says "pass a path".
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise TaskFormatError(f"task {spec!r} is not a local file and the hub is offline ({var}=1): "
                                  "download it first or pass a local path")  # fmt: skip
    import datasets  # lazy: importing datasets is slow and most callers never need it

    name, _, config = spec.partition(":")
    dsd = datasets.load_dataset(name, config or None)
    raw: dict[str, list[_Raw]] = {}
    names: tuple[str, ...] | None = None
    for hub_split, role in _HUB_SPLITS.items():
        if hub_split not in dsd or role in raw:
            continue
        feature = dsd[hub_split].features.get("label")
        if isinstance(feature, datasets.ClassLabel):
            names = tuple(feature.names)
        records = [(f"{spec}[{hub_split}][{i}]", rec) for i, rec in enumerate(dsd[hub_split])]
        if role == "test" and all(rec.get("label") == -1 for _, rec in records):
            continue  # GLUE hides test labels as -1: such a split cannot score anything
        raw[role] = _from_records(records)
    if "train" not in raw:
        raise TaskFormatError(f"task {spec!r}: hub dataset has no 'train' split (splits: {list(dsd)})")
    return _finish(spec, raw, names, seed=seed, eval_fraction=eval_fraction)


# ---------------------------------------------------------------------------------------------------------


def _subsample(rows: tuple[Example, ...], limit: int | None, rng: random.Random) -> tuple[Example, ...]:
    if limit is None or limit >= len(rows):
        return rows
    return tuple(rows[i] for i in sorted(rng.sample(range(len(rows)), limit)))  # source order kept


def load_task(spec: str | os.PathLike[str], *, seed: int = 0, labels: str = "coarse",
              max_train: int | None = None, max_eval: int | None = None, eval_fraction: float = 0.1,
              ) -> Task:  # fmt: skip
    """Load a task by name, local path or hub dataset name.

    Args:
        spec: ``"default"`` (embedded sentiment, 3000/600/600 rows), ``"arith"`` (embedded ``"12+7="`` ->
            ``"19"``, 4000/500/500 rows), a file or directory (SST-2 ``"<label> <text>"``, TREC
            ``"COARSE:fine <text>"``, TSV/CSV with a header, JSONL with text/label, prompt/completion or
            GSM8K question/answer), or a hub dataset ``"name[:config]"`` such as ``"glue:sst2"``. A single
            file is the train split; a directory's files are matched by name (train, dev/valid/validation,
            test).
        seed: seeds the eval carve-out and the ``max_train``/``max_eval`` subsamples; the embedded tasks'
            rows do not depend on it.
        labels: TREC label granularity, ``"coarse"`` (6 classes) or ``"fine"`` (50 classes).
        max_train: keep at most this many train rows (seeded sample, source order kept).
        max_eval: keep at most this many eval rows; ``test`` is never subsampled.
        eval_fraction: share of train carved out (stratified) as eval when the source has no eval split.

    Returns:
        The task with ``train``, ``eval`` and, when the source has one, ``test`` splits.

    Raises:
        TaskFormatError: missing, empty or malformed source (the message names ``file:line``), or a hub
            name while ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set.
        ValueError: invalid arguments.
    """
    if labels not in ("coarse", "fine"):
        raise ValueError(f"labels must be 'coarse' or 'fine', got {labels!r}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    for arg, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be >= 1 or None, got {value}")
    spec = os.fspath(spec)
    path = Path(spec).expanduser()
    if spec == "default":
        task = Task("default", "classification", _default_splits(), _SST_NAMES)
    elif spec == "arith":
        task = Task("arith", "causal_lm", _arith_splits())
    elif path.exists():
        task = _load_local(path, labels=labels, seed=seed, eval_fraction=eval_fraction)
    elif _looks_like_hub(spec):
        task = _load_hub(spec, seed=seed, eval_fraction=eval_fraction)
    else:
        raise TaskFormatError(f"task {spec!r}: no such file or directory, and it is not a hub dataset name")
    if max_train is None and max_eval is None:
        return task
    rng = random.Random(seed)
    splits = {**task.splits, "train": _subsample(task.splits["train"], max_train, rng)}
    splits["eval"] = _subsample(task.splits["eval"], max_eval, rng)
    return Task(task.name, task.kind, splits, task.label_names)
