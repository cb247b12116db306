"""How much one request may ask for, judged on its document before anything runs.

The schema has no recursive types, so nesting is bounded by it; what can still grow without
bound is breadth: aliases (``a1: getRunsPaginated ... a2: ...``) and fragments spread into
fragments, which multiply (ten spreads of a fragment of ten spreads of ...). ``field_count``
counts the fields a document would resolve with every fragment expanded (each fragment counted
once and reused, a cycle counting nothing: validation refuses it anyway). The real client's
largest document (``mcli util``) has about 70.
"""

from __future__ import annotations

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)


def field_count(document: DocumentNode, cap: int) -> int:
    """The fields of every operation in ``document``, fragments expanded; counting stops a
    little past ``cap`` (the caller only compares)."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    sizes: dict[str, int] = {}
    visiting: set[str] = set()

    def of(selections: SelectionSetNode | None) -> int:
        total = 0
        for selection in selections.selections if selections is not None else ():
            if total > cap:
                break
            if isinstance(selection, FieldNode):
                total += 1 + of(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                total += of(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += fragment(selection.name.value)
        return total

    def fragment(name: str) -> int:
        if name not in sizes:
            if name in visiting or name not in fragments:
                return 0
            visiting.add(name)
            sizes[name] = of(fragments[name].selection_set)
            visiting.discard(name)
        return sizes[name]

    return sum(
        of(d.selection_set) for d in document.definitions if isinstance(d, OperationDefinitionNode)
    )
