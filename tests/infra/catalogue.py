"""Metrics as the code defines them and as docs/metrics.md documents them.

Definitions are read from the source (AST), not by importing components, so a component's
metrics are known as soon as its code is on the branch. Names are compared as exported:
a counter ``x`` (or ``x_total``) is exported as ``x_total``, a histogram ``h`` as
``h_bucket``/``h_sum``/``h_count``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = (REPO / "control_plane" / "backbeat", REPO / "functions")
GENERATED_DIR = REPO / "control_plane" / "backbeat" / "v1"

_CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
}


@dataclass(frozen=True)
class MetricDefinition:
    name: str  #: family name: counters without ``_total``
    kind: str  #: counter, gauge, histogram, summary, or untyped (name found, constructor not)
    where: str  #: file:line
    buckets: tuple[float, ...] | None = None  #: histogram bucket bounds, when literal

    @property
    def query_name(self) -> str:
        """The name one writes in PromQL for the whole metric (``x_total`` for counters)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def exported(self) -> set[str]:
        """Every sample name this metric exports."""
        if self.kind == "counter":
            return {f"{self.name}_total", f"{self.name}_created"}
        if self.kind == "histogram":
            return {f"{self.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        if self.kind == "summary":
            return {self.name, f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created"}
        if self.kind == "untyped":
            return {self.name, *(f"{self.name}_{s}" for s in ("total", "bucket", "sum", "count"))}
        return {self.name}


def _constant_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literal_buckets(node: ast.expr | None, tree: ast.Module) -> tuple[float, ...] | None:
    """A ``buckets=`` literal, or a module-level constant it names."""
    if isinstance(node, ast.Name):
        for statement in tree.body:
            if isinstance(statement, ast.Assign):
                targets, value = statement.targets, statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                targets, value = [statement.target], statement.value
            else:
                continue
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                node = value
                break
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return tuple(float(v) for v in value)


_METRIC_NAME = re.compile(r"backbeat_[a-z][a-z0-9_]*")


def defined_metrics() -> dict[str, MetricDefinition]:
    """Every metric constructed with a literal name in the project's code, by family name.

    A ``backbeat_*`` string literal that is not a constructor's name argument (a name kept in
    a table and passed on later) is a metric too, of unknown type.
    """
    found: dict[str, MetricDefinition] = {}
    literals: dict[str, str] = {}
    for root in SOURCE_DIRS:
        for path in sorted(root.rglob("*.py")):
            if GENERATED_DIR in path.parents:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if _METRIC_NAME.fullmatch(node.value):
                        where = f"{path.relative_to(REPO)}:{node.lineno}"
                        literals.setdefault(node.value, where)
                    continue
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                ctor = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if ctor not in _CONSTRUCTORS:
                    continue
                keywords = {k.arg: k.value for k in node.keywords if k.arg}
                name = _constant_str(node.args[0] if node.args else keywords.get("name"))
                if name is None:
                    continue
                prefix = "_".join(
                    part
                    for part in (
                        _constant_str(keywords.get("namespace")),
                        _constant_str(keywords.get("subsystem")),
                    )
                    if part
                )
                full = f"{prefix}_{name}" if prefix else name
                kind = _CONSTRUCTORS[ctor]
                if kind == "counter":
                    full = full.removesuffix("_total")
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                buckets = _literal_buckets(keywords.get("buckets"), tree)
                found[full] = MetricDefinition(full, kind, where, buckets)
    known = {name for d in found.values() for name in (d.name, d.query_name)}
    for name, where in literals.items():
        if name not in known:
            found[name] = MetricDefinition(name, "untyped", where)
    return found


def exported_names(definitions: dict[str, MetricDefinition]) -> set[str]:
    return {name for d in definitions.values() for name in d.exported()}


@dataclass(frozen=True)
class CatalogueEntry:
    name: str  #: as written in PromQL (``_total`` for counters)
    kind: str
    labels: tuple[str, ...]
    command: str  #: the ``backbeat`` subcommand whose process exports it
    line: int


METRICS_DOC = REPO / "docs" / "metrics.md"
_SECTION = re.compile(r"^##+ .*?`backbeat ([a-z][a-z-]*)`")
_ROW = re.compile(
    r"^\|\s*`(?P<name>backbeat_[a-z0-9_]+)`\s*\|\s*(?P<kind>counter|gauge|histogram|summary)\s*"
    r"\|\s*(?P<labels>[^|]*)\|"
)


def documented_metrics() -> list[CatalogueEntry]:
    """The rows of the tables in docs/metrics.md, each under its component's heading."""
    entries: list[CatalogueEntry] = []
    command = ""
    for number, line in enumerate(METRICS_DOC.read_text(encoding="utf-8").splitlines(), 1):
        section = _SECTION.match(line)
        if section:
            command = section.group(1)
            continue
        row = _ROW.match(line)
        if row:
            labels = tuple(re.findall(r"`([a-z_]+)`", row.group("labels")))
            entries.append(
                CatalogueEntry(row.group("name"), row.group("kind"), labels, command, number)
            )
    return entries
