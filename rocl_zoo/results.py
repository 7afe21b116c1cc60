"""Results files: where each one lives, its unit, and the one reader that every table, claim and card uses.

A results file is what `python -m rocl_zoo.evaluate` (or `rocl_zoo.finetune`) writes: RobustBench's keys plus
every attack's config. Schema `rocl_zoo.eval/2` states every accuracy in percent; files of schema 1 (accuracies
of the "attacks" block as fractions) are upgraded as they are read, so no caller ever guesses a unit. (The
"sanity" block is the gradient-masking checks' own record: its values stay fractions, as their tolerances are.)

The zoo's files sit at one path per measurement (`relpath`):

    results/<model>/<protocol>[.<dataset>]/<threat model>/<suite>-n<examples>.json
    e.g. results/cnn4_rocl.fmnist_at/none/Linf-0.1/autoattack-n1000.json

(`.<dataset>` only for data other than the model's own, e.g. fine-tuning on digits). `results/index.json` lists
them all with their accuracies (`python -m rocl_zoo.results results/` rewrites it; a test checks it is current).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError
from .threat import CORRUPTIONS, THREAT_MODELS, eps_str
from .utils import write_json

SCHEMA = "rocl_zoo.eval/2"
INDEX_NAME = "index.json"
INDEX_SCHEMA = "rocl_zoo.index/1"  # not a results file
_SCHEMA_PREFIX = "rocl_zoo.eval/"


def threat_name(norm: str, eps: float | None) -> str:
    """A threat model as a path segment: Linf-0.1, Linf-8_255, L2-1.5, or corruptions (which has no budget)."""
    if norm.lower() == CORRUPTIONS:
        return CORRUPTIONS
    return f"{THREAT_MODELS[norm.lower()]}-{eps_str(eps).replace('/', '_')}"


def relpath(model: str, protocol: str, threat: str, suite: str, n: int, dataset: str | None = None) -> Path:
    """Where a measurement lives under results/; `dataset` only when it is not the model's own."""
    segment = f"{protocol}.{dataset}" if dataset else protocol
    parts = [model, segment, threat, f"{suite}-n{n}.json"]
    return Path(*(re.sub(r"[^A-Za-z0-9._+=-]+", "-", p) for p in parts))


_THREAT_SEGMENT = re.compile(rf"^((Linf|L2)-[0-9._]+|{CORRUPTIONS})$")


def folder_name(path) -> str:
    """The name a results file gets inside a model folder (export, release), where all lie side by side:
    results_<protocol>_<threat model>_<suite>-n<examples>.json for a file of this layout (its path below the
    model's folder), else its own name with a results_ prefix (none if it has one)."""
    p = Path(path)
    if p.name.startswith("results"):
        return p.name
    if len(p.parts) >= 3 and _THREAT_SEGMENT.match(p.parent.name):
        return "results_" + "_".join(p.parts[-3:])
    return f"results_{p.name}"


def wilson(acc_pct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy measured on n examples, in percent."""
    if n <= 0:
        return (0.0, 100.0)
    p = acc_pct / 100
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


@dataclass(frozen=True)
class Accuracy:
    pct: float  # percent
    n: int      # examples it was measured on

    def interval(self) -> tuple[float, float]:
        return wilson(self.pct, self.n)

    def __str__(self) -> str:
        return f"{self.pct:.1f}"

    def with_interval(self) -> str:
        lo, hi = self.interval()
        return f"{self.pct:.1f} [{lo:.1f}, {hi:.1f}]"


def upgrade(data: dict) -> dict:
    """A results dict of any schema version in the current one (accuracies in percent), as a new dict."""
    schema = str(data.get("schema", ""))
    if not schema.startswith(_SCHEMA_PREFIX):
        raise DataError(f"not a rocl_zoo results file (schema {schema!r}); write one with python -m rocl_zoo.evaluate.")
    if schema == SCHEMA:
        return data
    if schema != f"{_SCHEMA_PREFIX}1":
        raise DataError(f"results schema {schema!r} is newer than this rocl_zoo ({SCHEMA}); upgrade rocl-zoo.")
    attacks = {name: {**a, "acc": None if a.get("acc") is None else 100 * a["acc"]}
               for name, a in (data.get("attacks") or {}).items()}
    return {**data, "schema": SCHEMA, "attacks": attacks}


class Result:
    """One results file, read: its identity (model, protocol, dataset, threat model, n) and its accuracies."""

    def __init__(self, data: dict, path: Path | None = None):
        self.data = upgrade(data)
        self.path = path

    model = property(lambda self: self.data.get("model") or self.data.get("architecture"))
    protocol = property(lambda self: self.data.get("protocol") or "none")
    dataset = property(lambda self: self.data.get("dataset"))
    threat_model = property(lambda self: self.data.get("threat_model"))
    eps = property(lambda self: self.data.get("eps"))
    n = property(lambda self: self.data.get("n_examples", 0))
    attacks = property(lambda self: self.data.get("attacks") or {})

    def accuracy(self, attack: str, *, threat: str | None = None, eps: float | None = None,
                 transfer_from: str | None = None) -> Accuracy | None:
        """The accuracy under `attack` (its name in the file before any @EPS; "clean" matches any threat), if
        this file measured it in that threat model (default: the file's own) from that transfer source."""
        threat = threat or self.threat_model
        eps = self.eps if eps is None else eps
        for name, a in self.attacks.items():
            cfg = a.get("config") or {}
            if name.split("@")[0] != attack or a.get("acc") is None or cfg.get("transfer_from") != transfer_from:
                continue
            if cfg.get("attack") != "clean" and (cfg.get("threat_model") != threat or (
                    eps is not None and abs(cfg.get("eps", -1) - eps) > 1e-9)):  # corruptions have no eps
                continue
            return Accuracy(a["acc"], a.get("n_examples", self.n))  # AutoAttack may have run on a subset
        return None

    @property
    def threat(self) -> str:
        """The threat model as tables show it: Linf 0.1, L2 1.5, corruptions."""
        if self.eps is None and self.threat_model == CORRUPTIONS:
            return CORRUPTIONS
        return f"{self.threat_model} {self.data.get('eps_str') or self.eps}"

    def relpath(self, suite: str, own_dataset: str | None = None) -> Path:
        """Where this file belongs under results/ (the module's `relpath`), its dataset named in the path unless it
        is `own_dataset`, the model's own."""
        dataset = None if self.dataset == own_dataset else self.dataset
        return relpath(self.model, self.protocol, threat_name(self.threat_model, self.eps), suite, self.n, dataset)

    def summary(self) -> dict:
        """The index's line for this file."""
        return {"model": self.model, "protocol": self.protocol, "dataset": self.dataset,
                "threat": self.threat, "n_examples": self.n,
                "accuracy": {name: round(a["acc"], 2) for name, a in self.attacks.items() if a.get("acc") is not None}}


def read(path) -> Result:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"no results file {path}; write one with python -m rocl_zoo.evaluate --out {path}.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e}).") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} holds no results object.")
    return Result(data, path)


def read_results(paths) -> list[tuple[str, dict]]:
    """[(name in a model folder, results dict in the current schema)] for results files; refuses unreadable ones and
    two files that would take the same name."""
    out = [(folder_name(p), read(p).data) for p in paths]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"results files with the same name {names}; rename them (results_<threat>.json).")
    return out


def is_results_file(path: Path) -> bool:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(_SCHEMA_PREFIX)


def read_all(root) -> list[Result]:
    """Every results file under `root`, recursively, in path order (other JSON files are skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder of results files.")
    return [read(p) for p in sorted(root.rglob("*.json")) if p.name != INDEX_NAME and is_results_file(p)]


LINEAR_READ_OUTS = ("linear", "robust-linear")  # the protocols that train a head on a frozen encoder (SLF, ALF)
FINETUNE = "finetune-"  # rocl_zoo.finetune's protocols (finetune-<mode>), filed under the encoder they start from


def of_shipped_weights(results: list[Result],
                       finetuned: dict[tuple[str, str], str] | None = None) -> list[Result]:
    """The results that describe what the zoo ships. Of a released entry, on its dataset, a file of the protocol
    its registry metrics come from that names other weights than the shipped ones (`weights_sha256`: a new run's
    classifier measured before its release) is left out, and so is a linear read-out (`linear`, `robust-linear`)
    that names another encoder than the shipped one's (`encoder_sha256`: the ALF head of a new encoder), and, on
    any dataset, a fine-tuning (`finetune-*`) that started from another encoder (`start_encoder_sha256`); files
    from before results named their weights stay. `finetuned` maps (encoder, protocol) to the zoo entry such a
    fine-tuning ships as (RoCL+AT: ("cnn4_rocl.fmnist", "finetune-at")); on that entry's dataset, a fine-tuning
    whose classifier is not the released entry's (a new run before its release) is left out too."""
    from . import zoo
    from .eval_progress import encoder_digest, weights_digest
    from .hub import load

    shipped: dict[str, tuple[str, str | None]] = {}

    def digests(name: str) -> tuple[str, str | None]:
        if name not in shipped:
            model = load(name)
            shipped[name] = (weights_digest(model), encoder_digest(model))
        return shipped[name]

    def measures_other_weights(r: Result) -> bool:
        entry = zoo.ZOO.get(r.model)
        if not (entry and entry.sha256):
            return False
        ships_as = zoo.ZOO.get((finetuned or {}).get((r.model, r.protocol)))
        if ships_as and ships_as.sha256 and r.dataset == ships_as.dataset and "weights_sha256" in r.data \
                and r.data["weights_sha256"] != digests(ships_as.name)[0]:
            return True
        if r.protocol.startswith(FINETUNE) and "start_encoder_sha256" in r.data:
            return r.data["start_encoder_sha256"] != digests(r.model)[1]
        if r.dataset != entry.dataset:
            return False
        if r.protocol == entry.metrics.get("protocol") and "weights_sha256" in r.data:
            return r.data["weights_sha256"] != digests(r.model)[0]
        if r.protocol in LINEAR_READ_OUTS and "encoder_sha256" in r.data:
            return r.data["encoder_sha256"] != digests(r.model)[1]
        return False

    return [r for r in results if not measures_other_weights(r)]


def lookup(results, model: str, attack: str, *, protocol=None, dataset: str | None = None, threat: str = "Linf",
           eps: float | None = None, transfer_from: str | None = None) -> Accuracy | None:
    """The named model's accuracy under `attack` from the matching file with the most examples (the first of
    equals). `protocol`: one name or a tuple of them; `dataset`, `eps`: None matches any."""
    protocols = (protocol,) if isinstance(protocol, str) else protocol
    found = []
    for r in results:
        if r.model != model or (dataset and r.dataset != dataset) or (protocols and r.protocol not in protocols):
            continue
        if eps is None and r.threat_model != threat:
            continue
        a = r.accuracy(attack, threat=threat, eps=r.eps if eps is None else eps, transfer_from=transfer_from)
        if a is not None:
            found.append(a)
    return most_examples(*found)


def most_examples(*numbers: Accuracy | None) -> Accuracy | None:
    """The number measured on the most examples (the first of equals); None if none was measured."""
    return max((n for n in numbers if n), key=lambda n: n.n, default=None)


def file_result(path, root, suite: str, own_dataset: str | None = None) -> Path:
    """Copy a results file (e.g. rocl_zoo.finetune's results.json) to its place under `root`, in the current
    schema; returns where it went."""
    r = read(path)
    dest = Path(root) / r.relpath(suite, own_dataset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, r.data)
    return dest


_ORDER = {"clean": 0, "fgsm": 1, "pgd": 2, "autoattack": 4, "corruptions": 5}


def _column_key(cfg: dict):
    transfer = "transfer_from" in cfg
    return (transfer, _ORDER.get(cfg["attack"], 3), cfg.get("norm", "linf") != "linf", cfg.get("steps", 0),
            cfg["name"])


def _cell(a: Accuracy, n: int) -> str:
    """68.00 [64.3, 71.5]: the accuracy and its 95 % Wilson interval; (n=...) when measured on fewer images."""
    lo, hi = a.interval()
    return f"{a.pct:.2f} <sub>[{lo:.1f}, {hi:.1f}]</sub>" + (f" (n={a.n})" if a.n != n else "")


def render_table(results: list[Result]) -> str:
    """A markdown table of results files (`read_all`): one row per file, one column per attack."""
    if not results:
        return "_No results files._\n"

    def column(name: str, cfg: dict) -> str:  # a transfer attack from another source is another column
        return f"{name} from {cfg['transfer_from']}" if cfg.get("transfer_from") else name

    by_column = [{column(name, a["config"]): a for name, a in r.attacks.items()
                  if a["config"].get("attack") != "corruption"} for r in results]  # one corruption: its mean only
    columns = {n: a["config"] for row in by_column for n, a in row.items()}
    names = sorted(columns, key=lambda n: _column_key(columns[n]))
    label = {n: ("Clean" if columns[n]["attack"] == "clean" else "AutoAttack" if n in ("autoattack", "aa") else
                 n.upper() if n in ("fgsm", "cw") else "Corruptions (mean)" if n == "corruptions" else n)
             for n in names}
    head = ["Model", "Dataset", "Protocol", "Threat model"] + [label[n] for n in names] + ["n", "Sanity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(names) + 1) + [":---:"]) + "|"]
    # models on their own data first, transfer (fine-tuning) results after
    order = sorted(range(len(results)), key=lambda i: (
        results[i].protocol.startswith("finetune"), str(results[i].dataset), str(results[i].model),
        results[i].protocol, results[i].threat_model or "", results[i].eps or 0, -results[i].n))
    for i in order:
        r = results[i]
        cells = [f"`{r.model}`", str(r.dataset or "–"), r.protocol, r.threat]
        for n in names:
            a = by_column[i].get(n)
            cells.append("–" if a is None else _cell(Accuracy(a["acc"], a.get("n_examples", r.n)), r.n))
        cells.append(str(r.data.get("n_examples", "–")))
        s = r.data.get("sanity")
        cells.append("–" if not s else "ok" if s.get("passed") else "⚠ " + ", ".join(s.get("flags", [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAccuracy in % (higher is more robust) on `n` test examples, in brackets its 95 % " \
                              "Wilson interval. Columns name the " \
                              "attack (`pgd20-l2` = PGD-20 in l2; `transfer-* from M` = black-box, made on M; " \
                              "`Corruptions (mean)` = the mean accuracy over 15 common corruptions x 5 severities). " \
                              "Protocol " \
                              "`none`: a classifier as it is; `linear` / `robust-linear`: a linear head on the " \
                              "frozen encoder (SLF / ALF), trained by that run or before it; `finetune-*`: " \
                              "`rocl_zoo.finetune` on that dataset.\n"


def build_index(root) -> dict:
    """results/index.json's content: every results file under root with what it measured."""
    root = Path(root)
    return {"schema": INDEX_SCHEMA, "results": {str(r.path.relative_to(root)): r.summary() for r in read_all(root)}}


def write_index(root) -> Path:
    path = Path(root) / INDEX_NAME
    write_json(path, build_index(root))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rocl_zoo.results", description="Rewrite (or --check) the index "
                                "of a results folder: every results file with what it measured.")
    p.add_argument("root", nargs="?", default="results", help="the results folder (default results/)")
    p.add_argument("--check", action="store_true", help="exit 1 if the index is not current")
    args = p.parse_args(argv)
    try:
        if args.check:
            path = Path(args.root) / INDEX_NAME
            current = path.is_file() and json.loads(path.read_text()) == build_index(args.root)
            if not current:
                print(f"{path} is stale: run python -m rocl_zoo.results {args.root}", file=sys.stderr)
            return 0 if current else 1
        print(f"wrote {write_index(args.root)}")
        return 0
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
