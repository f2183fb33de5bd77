"""A small renderer for the subset of Go's text/template that Ollama chat templates use (no
tests in here): text, `{{- ... -}}` trim markers, `range`, `if` / `else if` / `else` / `end`,
variables (`$x := v` declares, `$x = v` assigns, as Go 1.11+ allows inside range), field
access on the dot (`.Role`) and on `$` (`$.System`), string literals and `eq` / `ne` / `and` /
`or` / `not` / `len`. Truthiness is Go's: empty strings, lists and false are false.

Anything outside the subset raises, so a template that drifts beyond it fails its test rather
than rendering something Go would not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_WORD = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+')


@dataclass
class _Node:
    kind: str  # text | print | assign | if | range
    value: Any = None
    branches: list = field(default_factory=list)  # if: [(cond, body)], range: [(expr, body)]
    orelse: list = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            out.append(("text", text))
        out.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = src[pos:].lstrip() if trim_next else src[pos:]
    if tail:
        out.append(("text", tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[_Node], int, str]:
    body: list[_Node] = []
    while i < len(tokens):
        kind, text = tokens[i]
        head = text.split(None, 1)[0] if kind == "action" and text.strip() else ""
        if kind == "text":
            body.append(_Node("text", text))
        elif head in stop:
            return body, i, text
        elif head == "if":
            node = _Node("if")
            cond = text[3:]
            while True:
                branch, i, ended = _parse(tokens, i + 1, ("else", "end"))
                node.branches.append((cond, branch))
                if ended.startswith("else if "):
                    cond = ended[len("else if "):]
                    continue
                if ended == "else":
                    node.orelse, i, ended = _parse(tokens, i + 1, ("end",))
                break
            body.append(node)
        elif head == "range":
            inner, i, _ = _parse(tokens, i + 1, ("end",))
            body.append(_Node("range", text[6:], [(text[6:], inner)]))
        elif re.match(r"^\$\w+\s*:?=", text):
            name, expr = re.split(r"\s*:?=\s*", text, maxsplit=1)
            body.append(_Node("assign", (name, expr)))
        else:
            body.append(_Node("print", text))
        i += 1
    if stop:
        raise ValueError(f"template ends before {{{{ {stop[-1]} }}}}")
    return body, i, ""


def _truthy(v: Any) -> bool:
    return bool(v)


_FUNCS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a),
          "and": lambda *a: all(map(_truthy, a)), "or": lambda *a: any(map(_truthy, a)),
          "len": len}


def _eval(words: list[str], dot: Any, root: Any, vars_: dict[str, Any]) -> Any:
    def atom(w: str) -> Any:
        if w.startswith('"'):
            return bytes(w[1:-1], "utf-8").decode("unicode_escape")
        if w == ".":
            return dot
        if w.startswith("$."):
            return _field(root, w[2:])
        if w.startswith("$"):
            if w not in vars_:
                raise KeyError(f"undefined variable {w}")
            return vars_[w]
        if w.startswith("."):
            return _field(dot, w[1:])
        raise ValueError(f"unsupported template word {w!r}")

    stack: list[list] = [[]]
    for w in words:  # parentheses group a call
        if w == "(":
            stack.append([])
        elif w == ")":
            inner = stack.pop()
            stack[-1].append(("call", inner))
        else:
            stack[-1].append(w)
    args = stack[0]

    def value(item: Any) -> Any:
        if isinstance(item, tuple):
            return call(item[1])
        return atom(item)

    def call(items: list) -> Any:
        head = items[0]
        if isinstance(head, str) and head in _FUNCS:
            return _FUNCS[head](*[value(x) for x in items[1:]])
        if len(items) != 1:
            raise ValueError(f"unsupported pipeline {items!r}")
        return value(head)

    return call(args)


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _run(nodes: list[_Node], dot: Any, root: Any, vars_: dict[str, Any], out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.value)
        elif n.kind == "print":
            v = _eval(_WORD.findall(n.value), dot, root, vars_)
            out.append("" if v is None else str(v))
        elif n.kind == "assign":
            name, expr = n.value
            vars_[name] = _eval(_WORD.findall(expr), dot, root, vars_)
        elif n.kind == "if":
            for cond, body in n.branches:
                if _truthy(_eval(_WORD.findall(cond), dot, root, vars_)):
                    _run(body, dot, root, vars_, out)
                    break
            else:
                _run(n.orelse, dot, root, vars_, out)
        elif n.kind == "range":
            (expr, body), = n.branches
            for item in _eval(_WORD.findall(expr), dot, root, vars_):
                _run(body, item, root, vars_, out)


def render(template: str, data: dict[str, Any]) -> str:
    nodes, _, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, data, data, {}, out)
    return "".join(out)
