"""Write docs/api.md, the API reference, from geo_ws's public docstrings.

    python scripts/api_docs.py            # rewrite docs/api.md
    python scripts/api_docs.py --check    # exit 1 if docs/api.md is out of date

What is public: every name of ``geo_ws.__all__``, then the ``__all__`` of the modules
that users import by name (:data:`MODULES`). The source is read with :mod:`ast`, not
imported, so the output depends on nothing but the source: no monkey-patching, no
optional dependencies, the same text on every machine. ``tests/test_docs.py`` fails
when docs/api.md and the docstrings disagree.

Docstrings are reST with Google-style sections (``Args:``, ``Returns:``, ``Raises:``);
this turns them into Markdown: ````x```` into `` `x` ``, ``::`` and ``.. code-block::``
blocks into fenced code, sections into lists, and ``:class:`` / ``:meth:`` / ``:func:``
/ ``:attr:`` / ``:data:`` / ``:mod:`` roles into links when the target is documented.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "geo_ws"
OUTPUT = ROOT / "docs" / "api.md"

#: Modules users import by name, documented after ``geo_ws`` itself (their ``__all__``).
#: A module that does not exist (yet) is left out.
MODULES = (
    "geo_ws.client",
    "geo_ws.testing",
    "geo_ws.server.legacy",
    "geo_ws.gunicorn",
    "geo_ws.gunicorn_hooks",
    "geo_ws.locust",
    "geo_ws.flask.metrics",
)
#: Classes documented without their methods (they override a library's hooks).
WITHOUT_MEMBERS = {"geo_ws.gunicorn.Worker"}

HEADER = """\
# API reference

Generated from the docstrings by `python scripts/api_docs.py` (do not edit it by hand:
`tests/test_docs.py` checks that it is up to date). Everything in the first section is
importable from the package itself (`from geo_ws import WebSocket`); the other modules
are imported by name (`from geo_ws.client import connect`).
"""

SECTIONS = ("Args", "Arguments", "Keyword Args", "Attributes", "Raises")
PROSE_SECTIONS = ("Returns", "Yields", "Example", "Examples", "Note", "Notes", "Warning")
ENUM_BASES = {"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"}
ROLE = re.compile(r":(class|meth|func|attr|data|mod|exc|obj):`([^`]+)`")
LITERAL = re.compile(r"``(.+?)``")
ENTRY = re.compile(r"^(\*{0,2}[\w.]+)(?:\s*\(([^)]*)\))?:\s*(.*)$")


# -- reading the source ----------------------------------------------------------------


@dataclass
class Module:
    """One module's syntax tree and what it defines, imports and exports."""

    name: str
    path: Path
    source: str
    tree: ast.Module
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    exports: list[str] = field(default_factory=list)

    @property
    def docstring(self) -> str:
        return ast.get_docstring(self.tree) or ""

    @property
    def lines(self) -> list[str]:
        return self.source.splitlines()

    @cached_property
    def _encoded_lines(self) -> list[bytes]:
        return [line.encode() + b"\n" for line in self.source.split("\n")]

    def text(self, node: ast.expr) -> str:
        """An expression as written in the source, on one line."""
        if node.end_lineno is None or node.end_col_offset is None:
            return ast.unparse(node)
        lines = self._encoded_lines[node.lineno - 1 : node.end_lineno]
        # Column offsets count UTF-8 bytes; cut the end first, in case it is one line.
        lines[-1] = lines[-1][: node.end_col_offset]
        lines[0] = lines[0][node.col_offset :]
        segment = b"".join(lines).decode()
        return " ".join(line.strip() for line in segment.splitlines())


_modules: dict[str, Module | None] = {}


def module(name: str) -> Module | None:
    """Parse ``geo_ws.x`` (once); ``None`` if there is no such file."""
    if name not in _modules:
        relative = Path(*name.split("."))
        path = ROOT / relative / "__init__.py"
        if not path.exists():
            path = ROOT / relative.with_suffix(".py")
        if not path.exists():
            _modules[name] = None
            return None
        source = path.read_text(encoding="utf-8")
        mod = Module(name, path, source, ast.parse(source))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in mod.tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                mod.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        mod.defs[target.id] = node
                        if target.id == "__all__":
                            mod.exports = list(ast.literal_eval(node.value))  # type: ignore[arg-type]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source_module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    mod.imports[alias.asname or alias.name] = (source_module, alias.name)
        _modules[name] = mod
    return _modules[name]


def lazy_exports(package: Module) -> dict[str, str]:
    """``geo_ws/__init__.py``'s ``_EXPORTS``: public name -> module, in its order."""
    node = package.defs.get("_EXPORTS")
    if not isinstance(node, ast.Assign):
        return {}
    table: dict[str, str] = ast.literal_eval(node.value)
    return {name: f"{package.name}.{source}" for name, source in table.items()}


def find(module_name: str, name: str) -> tuple[Module, ast.stmt] | None:
    """Where ``name`` of ``module_name`` is defined, following ``from .x import name``."""
    mod = module(module_name)
    if mod is None:
        return None
    if name in mod.defs:
        return mod, mod.defs[name]
    if name in mod.imports:
        return find(*mod.imports[name])
    return None


def comment_doc(mod: Module, node: ast.stmt) -> str:
    """The ``#:`` comment lines just above ``node``."""
    doc: list[str] = []
    line = node.lineno - 2
    while line >= 0 and mod.lines[line].strip().startswith("#:"):
        doc.insert(0, mod.lines[line].strip()[2:].strip())
        line -= 1
    return "\n".join(doc)


def attribute_docs(body: list[ast.stmt], mod: Module, on_self: bool) -> list[tuple[str, str]]:
    """Documented attributes: an assignment followed by a string, or after ``#:``."""
    found: list[tuple[str, str]] = []
    for index, node in enumerate(body):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if on_self:
                if not (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    continue
                name = target.attr
            elif isinstance(target, ast.Name):
                name = target.id
            else:
                continue
            if name.startswith("_"):
                continue
            following = body[index + 1] if index + 1 < len(body) else None
            doc = comment_doc(mod, node)
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = inspect_clean(following.value.value)
            if doc:
                found.append((name, doc))
    return found


def inspect_clean(text: str) -> str:
    """Like :func:`inspect.cleandoc`: the first line as is, the rest dedented."""
    first, _, rest = text.strip("\n").partition("\n")
    return (first.strip() + "\n" + textwrap.dedent(rest)).strip()


# -- signatures ------------------------------------------------------------------------


def parameters(mod: Module, args: ast.arguments, skip_first: bool) -> list[str]:
    """The parameters of a ``def`` as source text, ``self``/``cls`` left out."""

    def one(arg: ast.arg, default: ast.expr | None) -> str:
        text = arg.arg
        if arg.annotation is not None:
            text += f": {mod.text(arg.annotation)}"
            if default is not None:
                text += f" = {mod.text(default)}"
        elif default is not None:
            text += f"={mod.text(default)}"
        return text

    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    params = [one(arg, default) for arg, default in zip(positional, defaults, strict=True)]
    if args.posonlyargs:
        params.insert(len(args.posonlyargs), "/")
    if skip_first and positional:
        params.pop(0)
    if args.vararg is not None:
        params.append("*" + one(args.vararg, None))
    elif args.kwonlyargs:
        params.append("*")
    params += [one(arg, d) for arg, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg is not None:
        params.append("**" + one(args.kwarg, None))
    return params


def signature(prefix: str, params: list[str] | None, returns: str | None = None) -> str:
    """``prefix(params) -> returns``, one parameter a line when it is too long."""
    tail = f" -> {returns}" if returns is not None else ""
    if params is None:
        return prefix + tail
    line = f"{prefix}({', '.join(params)}){tail}"
    if len(line) <= 88:
        return line
    body = "".join(f"    {param},\n" for param in params)
    return f"{prefix}(\n{body}){tail}"


def decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.add(ast.unparse(target).rpartition(".")[2])
    return names


def dataclass_fields(mod: Module, node: ast.ClassDef) -> list[str] | None:
    """A dataclass's constructor parameters, from its annotated fields."""
    decorators = [d for d in node.decorator_list if "dataclass" in ast.unparse(d)]
    if not decorators:
        return None
    keyword_only = any(
        isinstance(d, ast.Call)
        and any(k.arg == "kw_only" and ast.unparse(k.value) == "True" for k in d.keywords)
        for d in decorators
    )
    params = ["*"] if keyword_only else []
    for item in node.body:
        if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
            continue
        annotation = mod.text(item.annotation)
        if annotation.startswith("ClassVar"):
            continue
        text = f"{item.target.id}: {annotation}"
        if item.value is not None:
            value = item.value
            if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field"):
                keywords = {k.arg: k.value for k in value.keywords}
                if "init" in keywords and ast.unparse(keywords["init"]) == "False":
                    continue
                if "default" in keywords:
                    text += f" = {mod.text(keywords['default'])}"
                elif "default_factory" in keywords:
                    text += f" = {mod.text(keywords['default_factory'])}()"
            else:
                text += f" = {mod.text(value)}"
        params.append(text)
    return params


def constructor(mod: Module, node: ast.ClassDef) -> tuple[list[str] | None, Module, ast.ClassDef]:
    """The parameters of a class's ``__init__`` (inherited within geo_ws too)."""
    fields_ = dataclass_fields(mod, node)
    if fields_ is not None:
        return fields_, mod, node
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            documented = ast.get_docstring(item) or re.search(
                r"^\s*(Args|Arguments):$", ast.get_docstring(node) or "", re.M
            )
            if not documented:
                return None, mod, node  # not meant to be called by users
            return parameters(mod, item.args, skip_first=True), mod, node
    for base in node.bases:
        found = find(mod.name, ast.unparse(base))
        if found is not None and isinstance(found[1], ast.ClassDef):
            params, _, _ = constructor(found[0], found[1])
            if params is not None:
                return params, mod, node
    return None, mod, node


# -- docstrings to Markdown ------------------------------------------------------------


@dataclass
class Context:
    """Where a docstring is: to resolve relative cross-references."""

    module: str
    cls: str | None = None


class Renderer:
    """Turns the public objects into Markdown, with links between them."""

    def __init__(self) -> None:
        self.anchors: dict[str, str] = {}
        """Qualified names (where defined, and where public) -> heading anchor."""
        self._slugs: dict[str, int] = {}
        self.out: list[str] = []

    # -- anchors ---------------------------------------------------------------------

    def slug(self, heading: str) -> str:
        """The anchor GitHub gives a heading (``-1``, ``-2`` for repeats)."""
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = self._slugs.get(base, 0)
        self._slugs[base] = count + 1
        return base if count == 0 else f"{base}-{count}"

    def resolve(self, target: str, context: Context) -> str | None:
        target = target.lstrip(".")
        candidates = [target, f"{context.module}.{target}", f"{PACKAGE}.{target}"]
        if context.cls:
            candidates.insert(1, f"{context.module}.{context.cls}.{target}")
        for candidate in candidates:
            if candidate in self.anchors:
                return self.anchors[candidate]
        ends = {
            anchor
            for key, anchor in self.anchors.items()
            if key.endswith("." + target) and not key.startswith("module ")
        }
        return ends.pop() if len(ends) == 1 else None

    # -- inline markup ---------------------------------------------------------------

    def inline(self, text: str, context: Context) -> str:
        def role(match: re.Match[str]) -> str:
            kind, target = match.groups()
            short = target.startswith("~")
            target = target.lstrip("~")
            shown = target.rpartition(".")[2] if short else target.lstrip(".")
            if kind in ("func", "meth"):
                shown += "()"
            if kind == "mod":
                path = Path(*target.split("."))
                file = path / "__init__.py" if (ROOT / path).is_dir() else path.with_suffix(".py")
                if (ROOT / file).exists():
                    return f"[`{shown}`](../{file.as_posix()})"
                return f"`{shown}`"
            anchor = self.resolve(target, context)
            return f"[`{shown}`](#{anchor})" if anchor else f"`{shown}`"

        text = LITERAL.sub(lambda m: f"`{m.group(1)}`", text)
        return ROLE.sub(role, text)

    # -- blocks ----------------------------------------------------------------------

    def markdown(self, doc: str, context: Context) -> list[str]:
        """A docstring as Markdown lines."""
        lines = doc.splitlines()
        out: list[str] = []
        index = 0
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if stripped.startswith(".. code-block::"):
                language = stripped.partition("::")[2].strip()
                block, index = indented(lines, index + 1, indent)
                out += fence(block, language)
                continue
            header = stripped[:-1] if stripped.endswith(":") else ""
            if header in SECTIONS + PROSE_SECTIONS:
                block, index = indented(lines, index + 1, indent)
                out += ["", f"**{header}:**", ""]
                if header in SECTIONS:
                    out += self.entries(block, context)
                else:
                    out += self.markdown("\n".join(block), context)
                out.append("")
                continue
            if stripped.endswith("::"):
                text = line.rstrip()[:-1]
                if text.strip() != ":":
                    out.append(self.inline(text, context))
                block, index = indented(lines, index + 1, indent)
                out += fence(block, "python" if is_python(block) else "")
                continue
            out.append(self.inline(line, context))
            index += 1
        return tidy(out)

    def entries(self, block: list[str], context: Context) -> list[str]:
        """``name: what`` entries (continued on deeper lines) as a list."""
        items: list[list[str]] = []
        for line in block:
            if line and not line[0].isspace():
                items.append([line.strip()])
            elif items and line.strip():
                items[-1].append(line.strip())
        out = []
        for item in items:
            text = " ".join(item)
            match = ENTRY.match(text)
            if match:
                name, kind, what = match.groups()
                kind = f" ({kind})" if kind else ""
                out.append(f"- `{name}`{kind}: {self.inline(what, context)}")
            else:
                out.append(f"- {self.inline(text, context)}")
        return out

    # -- objects ---------------------------------------------------------------------

    def heading(self, level: int, text: str, *keys: str) -> None:
        anchor = self.slug(text)
        for key in keys:
            self.anchors.setdefault(key, anchor)
        self.out += ["", "#" * level + " " + text, ""]

    def docstring(self, node: ast.AST, context: Context) -> None:
        doc = ast.get_docstring(node) if isinstance(node, DOCUMENTED) else None
        if doc:
            self.out += self.markdown(doc, context)

    def code(self, text: str) -> None:
        self.out += ["```python", text, "```", ""]


DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def indented(lines: list[str], index: int, base: int) -> tuple[list[str], int]:
    """The block indented deeper than ``base`` from ``index`` on, dedented."""
    block: list[str] = []
    while index < len(lines):
        line = lines[index]
        if line.strip() and len(line) - len(line.lstrip()) <= base:
            break
        block.append(line)
        index += 1
    while block and not block[0].strip():
        block.pop(0)
    while block and not block[-1].strip():
        block.pop()
    return textwrap.dedent("\n".join(block)).splitlines(), index


def fence(block: list[str], language: str) -> list[str]:
    return ["", f"```{language}", *block, "```", ""]


def is_python(block: list[str]) -> bool:
    try:
        ast.parse("\n".join(block))
    except SyntaxError:
        return False
    return True


def tidy(lines: list[str]) -> list[str]:
    """No runs of blank lines, none at either end."""
    out: list[str] = []
    for line in lines:
        line = line.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return out


# -- the reference ---------------------------------------------------------------------


@dataclass
class Entry:
    """One public name: how users spell it, and where it is defined."""

    public: str
    module: Module
    node: ast.stmt


def public_entries() -> list[tuple[Module, list[Entry]]]:
    """The documented modules and their public names, in order."""
    package = module(PACKAGE)
    assert package is not None
    order = lazy_exports(package)
    names = [name for name in order if name in package.exports]
    names += [name for name in package.exports if name not in order and name != "__version__"]
    sections = []
    entries = []
    for name in names:
        found = find(order.get(name, PACKAGE), name)
        if found is None:
            raise SystemExit(f"api_docs: cannot find the definition of {PACKAGE}.{name}")
        entries.append(Entry(f"{PACKAGE}.{name}", *found))
    sections.append((package, entries))
    for module_name in MODULES:
        mod = module(module_name)
        if mod is None:
            continue
        entries = []
        for name in mod.exports:
            found = find(module_name, name)
            if found is None:
                raise SystemExit(f"api_docs: cannot find the definition of {module_name}.{name}")
            entries.append(Entry(f"{module_name}.{name}", *found))
        sections.append((mod, entries))
    return sections


def short(entry: Entry, section: Module) -> str:
    """The heading of an entry: ``WebSocket`` in ``geo_ws``, else the dotted name."""
    return entry.public.removeprefix(PACKAGE + ".") if section.name == PACKAGE else entry.public


def members(node: ast.ClassDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Public methods and properties, the last definition of each name (overloads)."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if item.name.startswith("_") or "overload" in decorator_names(item):
                continue
            if "setter" in decorator_names(item) or "deleter" in decorator_names(item):
                continue
            found[item.name] = item
    return list(found.values())


def render_class(r: Renderer, entry: Entry, title: str, context: Context) -> None:
    node = entry.node
    assert isinstance(node, ast.ClassDef)
    params, _, _ = constructor(entry.module, node)
    bases = [ast.unparse(b) for b in node.bases if ast.unparse(b) not in ("object", "Generic")]
    if {b.rpartition(".")[2] for b in bases} & ENUM_BASES:
        r.code(f"class {entry.public}({', '.join(bases)})")
    else:
        r.code(signature(f"class {entry.public}", params))
    if bases:
        shown = ", ".join(r.inline(f":class:`~{b}`", context) for b in bases)
        r.out += [f"*Bases:* {shown}", ""]
    r.docstring(node, context)
    if {b.rpartition(".")[2] for b in bases} & ENUM_BASES:
        rows: list[tuple[str, str, str]] = []
        for item in node.body:
            if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                name = item.targets[0].id
                if not name.startswith("_"):
                    doc = comment_doc(entry.module, item)
                    rows.append((name, entry.module.text(item.value), doc))
        if any(doc for _, _, doc in rows):
            r.out += ["", "| member | value | meaning |", "|---|---|---|"]
            r.out += [f"| `{name}` | `{value}` | {doc} |" for name, value, doc in rows]
        else:
            r.out += ["", "| member | value |", "|---|---|"]
            r.out += [f"| `{name}` | `{value}` |" for name, value, _ in rows]
        return
    qualified = f"{entry.module.name}.{node.name}"
    if qualified in WITHOUT_MEMBERS:
        return
    attributes = attribute_docs(node.body, entry.module, on_self=False)
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            attributes += attribute_docs(item.body, entry.module, on_self=True)
    if attributes:
        r.out += ["", "**Attributes:**", ""]
        for name, doc in attributes:
            text = " ".join(line.strip() for line in r.markdown(doc, context))
            r.out.append(f"- `{name}`: {text}")
    for item in members(node):
        decorators = decorator_names(item)
        title_member = f"{node.name}.{item.name}"
        r.heading(4, title_member, f"{qualified}.{item.name}", f"{entry.public}.{item.name}")
        prefix = "async " if isinstance(item, ast.AsyncFunctionDef) else ""
        if decorators & {"property", "cached_property"}:
            annotation = f": {entry.module.text(item.returns)}" if item.returns else ""
            r.code(f"{title_member}{annotation}")
            r.out += ["*property*", ""]
        else:
            static = "staticmethod" in decorators or "classmethod" in decorators
            params = parameters(entry.module, item.args, "staticmethod" not in decorators)
            returns = entry.module.text(item.returns) if item.returns else None
            r.code(signature(f"{prefix}{title_member}", params, returns))
            if static:
                r.out += [f"*{'static' if 'staticmethod' in decorators else 'class'} method*", ""]
        r.docstring(item, context)


def render_entry(r: Renderer, entry: Entry, section: Module) -> None:
    title = short(entry, section)
    node = entry.node
    context = Context(entry.module.name, node.name if isinstance(node, ast.ClassDef) else None)
    source = entry.module.path.relative_to(ROOT).as_posix()
    if isinstance(node, ast.ClassDef):
        render_class(r, entry, title, context)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        prefix = "async " if isinstance(node, ast.AsyncFunctionDef) else ""
        params = parameters(entry.module, node.args, skip_first=False)
        returns = entry.module.text(node.returns) if node.returns else None
        r.code(signature(f"{prefix}{entry.public}", params, returns))
        if "fixture" in decorator_names(node):
            r.out += ["*pytest fixture*", ""]
        r.docstring(node, context)
    else:
        assert isinstance(node, (ast.Assign, ast.AnnAssign))
        module_ = entry.module
        annotation = f": {module_.text(node.annotation)}" if isinstance(node, ast.AnnAssign) else ""
        value = module_.text(node.value) if node.value is not None else ""
        shown = f" = {value}" if value and len(value) <= 60 else ""
        r.code(f"{entry.public}{annotation}{shown}")
        body = entry.module.tree.body
        docs = dict(attribute_docs(body, entry.module, on_self=False))
        name = entry.public.rpartition(".")[2]
        if name in docs:
            r.out += r.markdown(docs[name], context)
    r.out += ["", f"Defined in [{source}](../{source}).", ""]


def generate() -> str:
    """The text of docs/api.md."""
    sections = public_entries()
    anchors: dict[str, str] = {}
    # Twice: the first pass finds the anchors, so that links may point forward.
    for _ in range(2):
        r = Renderer()
        r.anchors = dict(anchors)
        r.out.append(HEADER.rstrip("\n"))
        r.out.append("")
        for section, entries in sections:
            links = ", ".join(
                f"[{e.public.rpartition('.')[2]}](#{anchors.get(e.public, '')})" for e in entries
            )
            section_anchor = anchors.get(f"module {section.name}", "")
            r.out.append(f"- [`{section.name}`](#{section_anchor}): {links}")
        for section, entries in sections:
            # Not a link target for roles: :mod: links to the source file.
            r.heading(2, section.name, f"module {section.name}")
            if section.docstring:
                r.out += r.markdown(section.docstring, Context(section.name))
            for entry in entries:
                key = f"{entry.module.name}.{getattr(entry.node, 'name', '')}"
                r.heading(3, short(entry, section), entry.public, key)
                render_entry(r, entry, section)
        anchors = r.anchors
    return "\n".join(tidy(r.out)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args()
    text = generate()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/api_docs.py")
            return 1
        return 0
    if current != text:
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
