"""The zoo's pretrained entries, torchvision-style: each weight carries its data, preprocessing, recipe and metrics.

An entry is named `arch.tag`. What it is (data, recipe, description) is static and lives with its architecture, in
the model files' `TAGS` (`rocl_zoo.models._cfg.Tag`); what was measured and published (sha256, metrics) is the
release's record, `weights/registry.json`, read on first use, never at import. Its weights live in the Hub repo
`hf_hub_id`; entries small enough ship inside the package (`rocl_zoo/weights/<name>/`) so they load with no
network. `sha256` is None until the entry has been made and released; loading such an entry raises an error
naming the command that makes it.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import warnings
from collections import UserDict
from dataclasses import dataclass, field
from pathlib import Path

from .data import DATASETS
from .errors import IntegrityError, ModelNotFoundError
from .models import convnet, resnet, wide_resnet
from .models._cfg import PACKAGE_WEIGHTS_DIR, WEIGHTS_DIR, WEIGHTS_FILE, default_tags, hf_hub_id  # noqa: F401

REGISTRY_NAME = "registry.json"  # written by `python -m training.release`: each shipped entry's sha256 and metrics


@dataclass(frozen=True)
class ZooEntry:
    name: str                      # "arch.tag"
    dataset: str                   # a key of rocl_zoo.data.DATASETS
    recipe: str | None             # `python -m training.pretrain --recipe <recipe>` (or training.supervised); None:
                                   # made by several steps of training/matrix.py
    description: str
    sha256: str | None = None      # of model.safetensors; None = not published yet
    # measured on `split`: clean_acc, pgd20_acc, autoattack_acc (percent), eps, norm, n_examples, results (path);
    # check: clean and PGD-20 accuracy (percent) on a fixed test subset, recomputed by the tests
    metrics: dict = field(default_factory=dict)
    filename: str = WEIGHTS_FILE
    default: bool = False          # the tag `create_model(arch, pretrained=True)` picks

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def hf_hub_id(self) -> str:
        return hf_hub_id(self.name)

    @property
    def info(self):
        return DATASETS[self.dataset]

    @property
    def input_size(self) -> tuple:
        return self.info.input_size

    @property
    def label_names(self) -> tuple:
        return self.info.classes

    @property
    def mean(self) -> tuple:
        return self.info.mean

    @property
    def std(self) -> tuple:
        return self.info.std

    @property
    def embedded_dir(self) -> Path:
        return WEIGHTS_DIR / self.name

    @property
    def published(self) -> bool:
        return self.sha256 is not None

    @property
    def command(self) -> str:
        """What makes this entry, from training to release (every entry is an item of training/matrix.py)."""
        return f"python -m training.reproduce {self.name}"

    def model_kwargs(self) -> dict:
        """Constructor arguments that make the architecture fit these weights."""
        return dict(num_classes=len(self.label_names), in_chans=self.input_size[0], mean=self.mean, std=self.std)


def _defined() -> dict[str, ZooEntry]:
    """Every entry the model files define, in their order."""
    tags = {**convnet.TAGS, **resnet.TAGS, **wide_resnet.TAGS}
    defaults = default_tags(tags)
    return {name: ZooEntry(name=name, **{**dataclasses.asdict(tag), "default": name in defaults})
            for name, tag in tags.items()}


_REGISTRY_PROBLEM: list[str] = []  # why the registry could not be read, reported on use (never at import)


def _published(entries: dict[str, ZooEntry]) -> dict[str, ZooEntry]:
    """The entries with the checksums and metrics the release step recorded. A registry that cannot be used
    leaves every entry unpublished, warns, and makes `get_entry` raise IntegrityError saying why."""
    path = WEIGHTS_DIR / REGISTRY_NAME
    _REGISTRY_PROBLEM.clear()
    try:
        registry = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(registry, dict) or not all(isinstance(r, dict) for r in registry.values()):
            raise ValueError("it is not an object of {entry name: record}")
        unknown = set(registry) - set(entries)
        if unknown:
            raise ValueError(f"it names entries that no model file's TAGS define: {sorted(unknown)}")
        return {n: dataclasses.replace(e, **registry[n]) if n in registry else e for n, e in entries.items()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        _REGISTRY_PROBLEM.append(f"{path} cannot be used ({e}). Reinstall rocl-zoo, or rewrite the registry with "
                                 f"`python -m training.release`.")
        warnings.warn(_REGISTRY_PROBLEM[0], RuntimeWarning, stacklevel=2)
        return dict(entries)


class _Zoo(UserDict):
    """{name: ZooEntry}, read from the model files and the registry on first use (importing never reads a file)."""

    def __init__(self):  # no UserDict.__init__: `data` is read lazily
        self._data = None

    @property
    def data(self) -> dict:
        if self._data is None:
            self._data = _published(_defined())
        return self._data

    @data.setter
    def data(self, value: dict) -> None:
        self._data = value


ZOO = _Zoo()


def refresh() -> None:
    """Read the registry again (a release in this process changed it), in place: every holder of ZOO sees it."""
    ZOO.data = None


def get_entry(name: str) -> ZooEntry:
    """The entry for `arch.tag`, or for `arch` its default tag. Raises ModelNotFoundError with close matches."""
    entry = ZOO.get(name)  # the first use reads the registry, and records any problem with it
    if _REGISTRY_PROBLEM:
        raise IntegrityError(_REGISTRY_PROBLEM[0])
    if entry is not None:
        return entry
    for entry in ZOO.values():
        if entry.architecture == name and entry.default:
            return entry
    close = difflib.get_close_matches(name, list(ZOO) + sorted({e.architecture for e in ZOO.values()}), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(f"No zoo entry named {name!r}.{hint} `rocl_zoo.list_models(pretrained=True)` lists them.")


def list_entries(pattern: str | None = None, published_only: bool = False) -> list[str]:
    names = [n for n, e in ZOO.items() if e.published or not published_only]
    return sorted(n for n in names if pattern is None or fnmatch.fnmatch(n, pattern))


def _pct(value) -> str:
    return "" if value is None else f"{value:.2f}"


def zoo_table_markdown() -> str:
    """The README's zoo table: every entry, its data, recipe, measured accuracy and whether weights exist."""
    rows = ["| name | dataset | recipe | clean % | PGD-20 % | AutoAttack % | threat model | weights |",
            "|---|---|---|---|---|---|---|---|"]
    for e in ZOO.values():
        m = e.metrics
        threat = f"{m['norm']} eps={m['eps']:g}, {m['n_examples']} {m['split']} images" if "norm" in m else ""
        status = "embedded" if (e.embedded_dir / e.filename).is_file() else ("Hub" if e.published else
                                                                             "not trained yet")
        aa = _pct(m.get("autoattack_acc"))
        if aa and m.get("autoattack_n_examples"):
            aa += f" (n={m['autoattack_n_examples']})"
        recipe = f"`{e.recipe}`" if e.recipe else "steps of `training/matrix.py`"
        rows.append(f"| `{e.name}` | {e.dataset} | {recipe} | {_pct(m.get('clean_acc'))} | "
                    f"{_pct(m.get('pgd20_acc'))} | {aa} | {threat} | {status} |")
    return "\n".join(rows)
