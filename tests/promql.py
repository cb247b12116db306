"""A small PromQL parser: enough to check an expression's syntax and find the metrics it reads.

It follows Prometheus's grammar for what dashboards write: selectors with label matchers,
range and subquery brackets, ``offset``, function calls, aggregations with ``by``/``without``
(before or after their arguments), binary operators with ``bool``, ``on``/``ignoring`` and
``group_left``/``group_right``, numbers, strings and parentheses. A Grafana variable (``$name``,
``${name}``) stands where a duration, a number or a label value may. Anything else raises
``PromQLError``: an unknown function, a stray token, unbalanced brackets.
"""

from __future__ import annotations

import re

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "double_exponential_smoothing",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "ln",
        "log2",
        "log10",
        "minute",
        "month",
        "predict_linear",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sort_by_label",
        "sort_by_label_desc",
        "sqrt",
        "time",
        "timestamp",
        "vector",
        "year",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "quantile_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "present_over_time",
        "mad_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "cos",
        "cosh",
        "sin",
        "sinh",
        "tan",
        "tanh",
        "deg",
        "pi",
        "rad",
    ]
)
BINARY = ("==", "!=", ">=", "<=", ">", "<", "+", "-", "*", "/", "%", "^")
SET_OPERATORS = frozenset({"and", "or", "unless", "atan2"})
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[A-Za-z_][\w:.]*\}|\$[A-Za-z_]\w*)
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+|(?:[Ii]nf|NaN)\b)
    | (?P<name>[A-Za-z_][\w:]*)
    | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:])
    )""",
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


def _tokens(expr: str) -> list[tuple[str, str]]:
    found, at = [], 0
    expr = expr.rstrip()
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None or match.end() == at:
            raise PromQLError(f"cannot read {expr[at:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        found.append((kind, match.group(kind)))
        at = match.end()
    return found


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokens(expr)
        self.at = 0
        self.metrics: set[str] = set()

    def peek(self, offset: int = 0) -> tuple[str, str]:
        at = self.at + offset
        return self.tokens[at] if at < len(self.tokens) else ("end", "")

    def take(self, *values: str) -> str:
        kind, value = self.peek()
        if values and value not in values:
            raise PromQLError(f"expected {' or '.join(values)}, found {value or 'the end'!r}")
        if kind == "end":
            raise PromQLError(f"unexpected end of {self.expr!r}")
        self.at += 1
        return value

    def parse(self) -> set[str]:
        self.expression()
        if self.peek()[0] != "end":
            raise PromQLError(f"unexpected {self.peek()[1]!r} in {self.expr!r}")
        return self.metrics

    def expression(self) -> None:
        self.unary()
        while self.peek()[1] in BINARY or self.peek()[1] in SET_OPERATORS:
            self.take()
            if self.peek()[1] == "bool":
                self.take()
            if self.peek()[1] in ("on", "ignoring"):
                self.take()
                self.labels()
                if self.peek()[1] in ("group_left", "group_right"):
                    self.take()
                    if self.peek()[1] == "(":
                        self.labels()
            self.unary()

    def unary(self) -> None:
        while self.peek()[1] in ("-", "+"):
            self.take()
        self.primary()
        if self.peek()[1] == "[":
            self.take("[")
            self.duration()
            if self.peek()[1] == ":":
                self.take(":")
                if self.peek()[1] != "]":
                    self.duration()
            self.take("]")
        if self.peek()[1] == "offset":
            self.take()
            if self.peek()[1] == "-":
                self.take()
            self.duration()

    def duration(self) -> None:
        kind, value = self.peek()
        if kind not in ("duration", "variable"):
            raise PromQLError(f"expected a duration, found {value or 'the end'!r}")
        self.take()

    def primary(self) -> None:
        kind, value = self.peek()
        if kind in ("number", "string", "variable"):
            self.take()
        elif value == "(":
            self.take("(")
            self.expression()
            self.take(")")
        elif value == "{":
            self.matchers()
        elif kind == "name" and value in AGGREGATIONS:
            self.aggregation()
        elif kind == "name" and self.peek(1)[1] == "(":
            if value not in FUNCTIONS:
                raise PromQLError(f"unknown function {value!r} in {self.expr!r}")
            self.take()
            self.arguments()
        elif kind == "name":
            self.metrics.add(self.take())
            if self.peek()[1] == "{":
                self.matchers()
        else:
            raise PromQLError(f"unexpected {value or 'the end'!r} in {self.expr!r}")

    def aggregation(self) -> None:
        self.take()
        if self.peek()[1] in ("by", "without"):
            self.take()
            self.labels()
        self.arguments()
        if self.peek()[1] in ("by", "without"):
            self.take()
            self.labels()

    def arguments(self) -> None:
        self.take("(")
        if self.peek()[1] != ")":
            self.expression()
            while self.peek()[1] == ",":
                self.take(",")
                self.expression()
        self.take(")")

    def labels(self) -> None:
        self.take("(")
        while self.peek()[1] != ")":
            if self.peek()[0] != "name":
                raise PromQLError(f"expected a label name, found {self.peek()[1]!r}")
            self.take()
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")

    def matchers(self) -> None:
        self.take("{")
        while self.peek()[1] != "}":
            if self.peek()[0] != "name":
                raise PromQLError(f"expected a label name, found {self.peek()[1]!r}")
            self.take()
            self.take("=", "!=", "=~", "!~")
            if self.peek()[0] not in ("string", "variable"):
                raise PromQLError(f"expected a label value, found {self.peek()[1]!r}")
            self.take()
            if self.peek()[1] == ",":
                self.take(",")
        self.take("}")


def metrics_of(expr: str) -> set[str]:
    """The metric names ``expr`` reads (as series are named: ``x_total``, ``x_bucket``);
    raises ``PromQLError`` if it is not PromQL."""
    return _Parser(expr).parse()
