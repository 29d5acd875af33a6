"""YAML with positions: every key and item keeps its line and column, so errors can point at them.

Invariants: a duplicate mapping key is an error (PyYAML would silently keep the last one); positions are
1-based; ``Located.position(path)`` falls back to the nearest enclosing node that has a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["Located", "load_yaml"]

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """A parsed YAML document and the position of every node in it."""

    data: Any
    path: Path
    text: str
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Path_) -> tuple[int | None, int | None]:
        """(line, column) of the node at ``loc`` or of its nearest ancestor."""
        loc = tuple(loc)
        while loc:
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return self.positions.get((), (None, None))

    def error(self, loc: Path_, message: str, hint: str | None = None) -> ConfigError:
        line, column = self.position(loc)
        return ConfigError(message, path=str(self.path), line=line, column=column, hint=hint)


def load_yaml(path: Path) -> Located:
    """Parse ``path``; malformed YAML, a missing file or a duplicate key raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path), hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", path=str(path)) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty", path=str(path), line=1, hint="a suite needs at least name, "
                              "models, cases and metrics")
        located = Located(data=None, path=path, text=text)
        _walk(node, (), located)
        located.data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "malformed YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(f"malformed YAML: {problem}", path=str(path),
                          line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None,
                          hint="check indentation and quoting around this position") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", path=str(path)) from None
    finally:
        loader.dispose()
    return located


def _walk(node: yaml.Node, loc: Path_, located: Located) -> None:
    located.positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise ConfigError(f"duplicate key {key!r} (first defined on line {seen[key]})",
                                  path=str(located.path), line=line, column=key_node.start_mark.column + 1,
                                  hint="remove one of them")
            seen[key] = line
            child = (*loc, key)
            located.positions[child] = (line, key_node.start_mark.column + 1)
            _walk(value_node, child, located)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), located)
