"""What a document costs: its fields with every fragment expanded, aliases each counted."""

from __future__ import annotations

from graphql import parse

from services.api.limits import field_count


def test_fields_and_nested_fields_each_count() -> None:
    assert field_count(parse("{ a { b c { d } } }"), 100) == 4


def test_aliases_count_each_time() -> None:
    aliased = " ".join(f"a{n}: __typename" for n in range(50))
    assert field_count(parse(f"{{ {aliased} }}"), 100) == 50


def test_fragments_multiply_as_they_are_spread() -> None:
    document = parse(
        "query { ...F3 }\n"
        "fragment F1 on Query { __typename }\n"
        f"fragment F2 on Query {{ {' '.join(['...F1'] * 10)} }}\n"
        f"fragment F3 on Query {{ {' '.join(['...F2'] * 10)} }}\n"
    )
    assert field_count(document, 10_000) == 100


def test_a_fragment_cycle_or_an_unknown_fragment_counts_nothing() -> None:
    document = parse(
        "query { a ...A ...Missing }\nfragment A on Query { b ...B }\nfragment B on Query { ...A }"
    )
    assert field_count(document, 100) == 2


def test_counting_stops_past_the_cap() -> None:
    many = " ".join(f"a{n}: __typename" for n in range(1000))
    assert 10 < field_count(parse(f"{{ {many} }}"), 10) < 1000
