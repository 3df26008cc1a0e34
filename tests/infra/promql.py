"""The metric names a PromQL expression reads, without a Prometheus server.

Enough of PromQL for our rules and dashboards: label matchers, range and subquery brackets,
string literals and numbers are skipped; identifiers followed by ``(`` are functions or
aggregations; the label lists of ``by``/``without``/``on``/``ignoring``/``group_left``/
``group_right`` are skipped; keywords and aggregation operators
(``sum by (le) (…)``) are not names.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<matcher>\{[^}]*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?
                  |[iI]nf|NaN)\b)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                 "bottomk", "topk", "quantile", "limitk", "limit_ratio"}  # fmt: skip
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", *_LABEL_LIST_KEYWORDS,
             *_AGGREGATIONS}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Names of the series (metrics or recording rules) that ``expr`` selects."""
    tokens = [
        (m.lastgroup or "", m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string")
    ]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and text in _LABEL_LIST_KEYWORDS and following == "(":
            depth, i = 0, i + 1  # skip the parenthesised label list
            while i < len(tokens):
                depth += {"(": 1, ")": -1}.get(tokens[i][1], 0)
                i += 1
                if depth == 0:
                    break
            continue
        if kind == "name" and text not in _KEYWORDS and following != "(":
            names.add(text)
        i += 1
    return names
