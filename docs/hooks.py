"""MkDocs hooks: the notes, the API reference and the source pages, and citations as links.

The site is built from the repository as it is, without copying anything into ``docs/``:

* ``on_config`` appends the "Derivations" and "API reference" sections to the nav, one entry per
  note in ``derivations/`` and per public module of ``genjax`` (every ``.py`` file of the package
  tree whose path has no ``_``-prefixed part).
* ``on_files`` adds the notes (``derivations/*.md``), ``benchmarks/README.md`` and its results
  pages, one reference page per public module (a ``:::`` mkdocstrings block), and one rendered
  source page per ``.py`` file of ``genjax/``, ``tests/`` and ``benchmarks/`` (Pygments HTML with
  an anchor per line, ``L-<n>``, and one per top-level function or class and per method,
  ``<name>`` / ``<Class>.<method>``).
* ``on_page_markdown`` maps relative links written from the repository's layout
  (``../docs/figures/x.png`` in a note, ``../benchmarks/README.md`` in a results page) to the
  site's, and turns a backticked citation into a cross-reference (mkdocs-autorefs):
  ``tests/test_x.py::test_y`` to that test in its source page, a path (``genjax/nn/attention.py``,
  ``genjax/diffusion``, ``derivations/05-vae.md``, ``05-vae.md``) to its page, and a public name
  (``genjax.vae.sample``, ``scaled_dot_product_attention``, ``q_sample(key, ...)``) to its
  API-reference entry. A bare name exported by several modules resolves to the first of them
  that the page itself names (``genjax/diffusion``, ``genjax.diffusion``, ...), else stays code.
* ``on_page_content`` registers the file-level identifiers (a path links to its page's first
  heading) and the function anchors of the source pages with autorefs, which resolves every
  cross-reference after all pages are rendered and, under ``--strict``, fails on any it cannot.
* ``RstDocstrings`` is a griffe extension (``extensions:`` in mkdocs.yml) that rewrites the
  docstrings' reStructuredText into the Markdown mkdocstrings renders: ``:math:`x``` to ``$x$``,
  ``.. math::`` blocks to ``$$ ... $$``, ``:func:`name``` and the other roles to optional
  cross-references resolved in the docstring's own scope, and ``Derivation: derivations/...``
  and ````tests/...::test_y```` citations to links.
"""

from __future__ import annotations

import ast
import functools
import html
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import griffe
from mkdocs.structure.files import File, Files
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("genjax", "tests", "benchmarks")
NOTES_DIR = "derivations"
MARKDOWN_EXTRAS = ("benchmarks/README.md", "benchmarks/results/*.md")


# --------------------------------------------------------------------------------------------
# The repository's index: modules, their exports, source files and their definitions
# --------------------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def public_modules() -> tuple[str, ...]:
    """Dotted names of the public modules: no path part starts with ``_`` (``__init__`` aside)."""
    names = []
    for path in sorted((ROOT / "genjax").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return tuple(names)


def module_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return node.value
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return node.value
    return None


def exports(module: str) -> list[str]:
    """The literal ``__all__`` of a module (empty when it has none or it is computed)."""
    value = _assigned(_tree(module_file(module)), "__all__")
    if isinstance(value, ast.List | ast.Tuple) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ):
        return [e.value for e in value.elts]
    return []


def lazy_package(module: str) -> bool:
    """A package whose ``__all__`` names its submodules (loaded on first use): no members."""
    return _assigned(_tree(module_file(module)), "_SUBMODULES") is not None


def _class_def(module: str, name: str) -> ast.ClassDef | None:
    """The ``class name`` statement, in the module or the module it imports the name from."""
    tree = _tree(module_file(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genjax"):
            if any((a.asname or a.name) == name for a in node.names):
                source = module_file(node.module)
                if source.exists():
                    return next(
                        (
                            n
                            for n in _tree(source).body
                            if isinstance(n, ast.ClassDef) and n.name == name
                        ),
                        None,
                    )
    return None


@functools.cache
def api_index() -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
    """The API-reference identifiers (modules, their exports, exported classes' public methods)
    and, for each exported name, the identifiers that carry it, in module order."""
    ids: set[str] = set()
    by_name: dict[str, list[str]] = defaultdict(list)
    for module in public_modules():
        ids.add(module)
        if lazy_package(module):
            continue
        for name in exports(module):
            ids.add(f"{module}.{name}")
            by_name[name].append(f"{module}.{name}")
            cls = _class_def(module, name)
            for node in cls.body if cls else ():
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                    ids.add(f"{module}.{name}.{node.name}")
    return frozenset(ids), {k: tuple(v) for k, v in by_name.items()}


@functools.cache
def source_files() -> tuple[str, ...]:
    """Repository paths of the Python files that get a rendered source page."""
    return tuple(
        _rel(p) for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py")) if p.is_file()
    )


@functools.cache
def definitions(rel: str) -> dict[str, int]:
    """Anchor name -> first line (its first decorator) of each top-level function and class and
    each method, ``Class.method``, in a source file."""
    anchors: dict[str, int] = {}

    def first_line(node: ast.AST) -> int:
        return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])

    defs = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    for node in _tree(ROOT / rel).body:
        if isinstance(node, defs):
            anchors.setdefault(node.name, first_line(node))
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, defs):
                    anchors.setdefault(f"{node.name}.{item.name}", first_line(item))
    return anchors


def source_page(rel: str) -> str:
    """The site path of a file's rendered source page."""
    return f"source/{rel}.md"


@functools.cache
def markdown_pages() -> dict[str, str]:
    """Repository path -> site path of every Markdown page: docs/, the notes, the benchmarks'."""
    pages = {f"docs/{_rel(p)[5:]}": _rel(p)[5:] for p in (ROOT / "docs").rglob("*.md")}
    pages |= {_rel(p): _rel(p) for p in sorted((ROOT / NOTES_DIR).glob("*.md"))}
    for pattern in MARKDOWN_EXTRAS:
        pages |= {_rel(p): _rel(p) for p in sorted(ROOT.glob(pattern))}
    return pages


@functools.cache
def file_identifiers() -> dict[str, tuple[str, str | None]]:
    """Citation identifier -> (site path, anchor; ``None`` for the page's first heading)."""
    idents: dict[str, tuple[str, str | None]] = {}
    for rel in source_files():
        page = source_page(rel)
        idents[rel] = (page, None)
        if rel.count("/") > 1 and rel.endswith("/__init__.py"):  # genjax/diffusion, not genjax
            idents[rel.removesuffix("/__init__.py")] = (page, None)
        for name in definitions(rel):
            idents[f"{rel}::{name.replace('.', '::')}"] = (page, name)
    for rel, page in markdown_pages().items():
        idents[rel] = (page, None)
        if rel.startswith(f"{NOTES_DIR}/"):
            idents[rel.removeprefix(f"{NOTES_DIR}/")] = (page, None)
    return idents


# --------------------------------------------------------------------------------------------
# Citations
# --------------------------------------------------------------------------------------------

_CALL = re.compile(r"^([A-Za-z_][\w.]*)\(.*\)$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def file_citation(span: str) -> str | None:
    """The identifier a path citation refers to (``tests/x.py::test_y[param]`` included)."""
    span = span.strip().rstrip("/")
    ident = re.sub(r"\[[^\]]*\]$", "", span)  # a parametrized test's id names the function
    return ident if ident in file_identifiers() else None


def api_citation(span: str, context: Sequence[str]) -> str | None:
    """The API identifier of a backticked name or call, or ``None``."""
    match = _CALL.match(span.strip())
    name = match.group(1) if match else span.strip()
    if not _NAME.match(name):
        return None
    ids, by_name = api_index()
    if "." in name:
        return next((c for c in (name, f"genjax.{name}") if c in ids), None)
    candidates = by_name.get(name, ())
    if len(candidates) == 1:
        return candidates[0]
    for module in context:
        if f"{module}.{name}" in candidates:
            return f"{module}.{name}"
    return None


def cited_modules(spans: Iterable[str]) -> list[str]:
    """The public modules a page names, in order of first mention, from its code spans."""
    modules = set(public_modules())
    found: list[str] = []
    for span in spans:
        span = span.strip().rstrip("/")
        dotted = span.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted.startswith("genjax.") and dotted not in found:
            found.append(dotted)
    return found


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<![`\\])`([^`]+?)`(?!`)")
_LINK_TARGET = re.compile(r"(\]\()([^)\s]+)")
_LINKED = re.compile(r"\[[^\]\n]*\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_HEADING = re.compile(r"^#{1,6} .*$", re.MULTILINE)


def _segments(markdown: str) -> Iterable[tuple[bool, str]]:
    """Split Markdown into (is fenced code, text) pieces, fences kept whole."""
    lines = markdown.splitlines(keepends=True)
    prose: list[str] = []
    fence: list[str] = []
    marker = None
    for line in lines:
        match = _FENCE.match(line)
        if marker is None and match:
            if prose:
                yield False, "".join(prose)
                prose = []
            marker = match.group(1)
            fence = [line]
        elif marker is not None:
            fence.append(line)
            if (
                line.strip().startswith(marker[0] * len(marker))
                and line.strip().strip(marker[0]) == ""
            ):
                yield True, "".join(fence)
                marker = None
        else:
            prose.append(line)
    if marker is not None:
        yield True, "".join(fence)
    if prose:
        yield False, "".join(prose)


def _site_target(target: str, page_repo_path: str, page_src_uri: str) -> str:
    """A relative link written from the page's place in the repository, as the site's."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
        return target
    path, hash_, anchor = target.partition("#")
    repo = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo_path), path))
    if repo in markdown_pages():
        site = markdown_pages()[repo]
    elif repo.startswith("docs/"):
        site = repo.removeprefix("docs/")
    elif repo in file_identifiers():
        site = file_identifiers()[repo][0]
        anchor = re.sub(r"^L(\d+)$", r"L-\1", anchor)  # GitHub's line anchors, as Pygments'
    else:
        return target
    return posixpath.relpath(site, posixpath.dirname(page_src_uri) or ".") + hash_ + anchor


_INDENTED_DISPLAY = re.compile(r"(^|\n[ \t]*\n) {1,3}(?=\$\$)")


def link_citations(markdown: str, page_repo_path: str, page_src_uri: str) -> str:
    """Rewrite a page's relative links to the site's layout and its citations into links.

    A display block indented by 1-3 spaces after a blank line (a paragraph, for Markdown) is
    moved to the margin, where arithmatex recognises it as display maths."""
    context = cited_modules(m.group(1) for m in _CODE_SPAN.finditer(markdown))
    out = []
    for fenced, text in _segments(markdown):
        if fenced:
            out.append(text)
            continue
        text = _INDENTED_DISPLAY.sub(r"\1", text)
        protected = [m.span() for m in _LINKED.finditer(text)]
        protected += [m.span() for m in _HEADING.finditer(text)]
        pieces, last = [], 0
        for m in _CODE_SPAN.finditer(text):
            pieces.append(
                _LINK_TARGET.sub(
                    lambda t: t.group(1) + _site_target(t.group(2), page_repo_path, page_src_uri),
                    text[last : m.start()],
                )
            )
            span = m.group(1)
            ident = None
            if not any(a <= m.start() < b for a, b in protected):
                ident = file_citation(span) or api_citation(span, context)
            pieces.append(f"[`{span}`][{ident}]" if ident else m.group(0))
            last = m.end()
        pieces.append(
            _LINK_TARGET.sub(
                lambda t: t.group(1) + _site_target(t.group(2), page_repo_path, page_src_uri),
                text[last:],
            )
        )
        out.append("".join(pieces))
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Generated pages
# --------------------------------------------------------------------------------------------


def _tests_of(module: str) -> str | None:
    rel = f"tests/test_{module.rpartition('.')[2]}.py"
    return rel if (ROOT / rel).exists() else None


def reference_markdown(module: str) -> str:
    rel = _rel(module_file(module))
    links = [f"source: [`{rel}`][{rel}]"]
    if tests := _tests_of(module):
        links.append(f"tests: [`{tests}`][{tests}]")
    options = ""
    if lazy_package(module):  # its members are its submodules, each on its own page
        options = "\n    options:\n      members: false"
        children = [m for m in public_modules() if m.rpartition(".")[0] == module]
        links.append("modules: " + ", ".join(f"[`{m}`][{m}]" for m in children))
    return f"# `{module}` {{ #top }}\n\n{' · '.join(links)}\n\n::: {module}{options}\n"


_SOURCE_SLOT = '<div class="genjax-source"></div>'


def source_markdown(rel: str) -> str:
    """A source page: title, links to the module's reference and tests, and a slot that
    ``on_page_content`` fills with the highlighted code (kept out of Markdown and search: a
    page of raw HTML lines would only slow both down)."""
    links = []
    module = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    if module in public_modules():
        links.append(f"API reference: [`{module}`][{module}]")
        if tests := _tests_of(module):
            links.append(f"tests: [`{tests}`][{tests}]")
    header = f"---\nsearch:\n  exclude: true\n---\n\n# `{rel}` {{ #top }}\n\n"
    return header + (" · ".join(links) + "\n\n" if links else "") + _SOURCE_SLOT + "\n"


def source_html(rel: str) -> str:
    """The file highlighted by Pygments, an anchor per line (``L-<n>``) and per definition."""
    formatter = HtmlFormatter(linenos="inline", lineanchors="L", anchorlinenos=True, wrapcode=True)
    body = highlight((ROOT / rel).read_text(encoding="utf-8"), PythonLexer(), formatter)
    for name, line in definitions(rel).items():
        marker = f'<a id="L-{line}" name="L-{line}"></a>'
        body = body.replace(marker, f'<span id="{html.escape(name)}"></span>{marker}', 1)
    return f'<div class="genjax-source">\n{body}</div>'


def source_index_markdown() -> str:
    lines = ["# Source", "", "Every Python file of the repository, rendered with line anchors.", ""]
    for folder in SOURCE_DIRS:
        lines += [f"## `{folder}/` {{ #dir-{folder} }}", ""]
        lines += [f"- [`{rel}`][{rel}]" for rel in source_files() if rel.startswith(folder)]
        lines.append("")
    return "\n".join(lines)


def _note_title(path: Path) -> str:
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
    return first.lstrip("#").strip() if first.startswith("#") else path.stem


# --------------------------------------------------------------------------------------------
# MkDocs events
# --------------------------------------------------------------------------------------------

_REPO_PATH: dict[str, str] = {}  # site path -> repository path, for the pages that have one


def _nav_paths(nav) -> Iterable[str]:
    for item in nav:
        if isinstance(item, dict):
            yield from _nav_paths(item.values())
        elif isinstance(item, list):
            yield from _nav_paths(item)
        else:
            yield item


def on_config(config):
    for cached in (public_modules, _tree, api_index, source_files, definitions):
        cached.cache_clear()  # `mkdocs serve` rebuilds in the same process
    markdown_pages.cache_clear()
    file_identifiers.cache_clear()
    notes = [
        {_note_title(p): f"{NOTES_DIR}/{p.name}"} for p in sorted((ROOT / NOTES_DIR).glob("*.md"))
    ]
    reference = [{f"{m}": f"reference/{m}.md"} for m in public_modules()]
    nav = list(config.nav or [])
    listed = set(_nav_paths(nav))
    if unlisted := [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in listed]:
        nav.append({"More": unlisted})  # a page added to docs/ but not yet to mkdocs.yml's nav
    config.nav = [
        *nav,
        {"Derivations": notes},
        {"API reference": reference},
        {"Source": "source/index.md"},
    ]
    return config


def on_files(files: Files, config) -> Files:
    _REPO_PATH.clear()
    for rel, site in markdown_pages().items():
        _REPO_PATH[site] = rel
        if not rel.startswith("docs/"):
            files.append(File.generated(config, site, abs_src_path=str(ROOT / rel)))
    for module in public_modules():
        files.append(
            File.generated(config, f"reference/{module}.md", content=reference_markdown(module))
        )
    for rel in source_files():
        _REPO_PATH[source_page(rel)] = rel
        files.append(File.generated(config, source_page(rel), content=source_markdown(rel)))
    files.append(File.generated(config, "source/index.md", content=source_index_markdown()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    return link_citations(markdown, _REPO_PATH.get(src, f"docs/{src}"), src)


def on_page_content(html_: str, page, config, files) -> str:
    if _SOURCE_SLOT in html_:
        rel = _REPO_PATH[page.file.src_uri]
        html_ = html_.replace(_SOURCE_SLOT, source_html(rel), 1)
        if page.present_anchor_ids is not None:  # for MkDocs' check of links to these anchors
            lines = len((ROOT / rel).read_text(encoding="utf-8").splitlines())
            page.present_anchor_ids |= {f"L-{n}" for n in range(1, lines + 1)}
            page.present_anchor_ids |= set(definitions(rel))
    autorefs = config.plugins["autorefs"]
    top = page.toc.items[0].id if page.toc.items else None
    for ident, (site, anchor) in file_identifiers().items():
        if site == page.file.src_uri:
            autorefs.register_anchor(page, ident, anchor or top)
    module = page.file.src_uri.removeprefix("reference/").removesuffix(".md")
    if page.file.src_uri.startswith("reference/") and module in public_modules():
        autorefs.register_anchor(page, module, top)
    return html_


# --------------------------------------------------------------------------------------------
# Docstrings: reStructuredText to Markdown (a griffe extension)
# --------------------------------------------------------------------------------------------

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):`~?([^`]+)`")
_MATH_BLOCK = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")
_LITERAL = re.compile(r"``([^`]+)``")
_NOTE_PATH = re.compile(rf"(?<![\w/`\[])({NOTES_DIR}/\d\d-[\w-]+\.md)")


def _resolve_in_scope(obj: griffe.Object, name: str) -> str | None:
    """The path that ``name`` denotes inside ``obj``'s scope (its members, its parents')."""
    name = name.removesuffix("()")
    if name.startswith("genjax."):
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        member = scope.members.get(head) if (scope.is_module or scope.is_class) else None
        if member is not None:
            path = member.target_path if member.is_alias else member.path
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return None


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _MATH_BLOCK.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, first = match.groups()
        body = [first] if first.strip() else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            if lines[i].strip():
                body.append(lines[i].strip())
            i += 1
        out += ["", f"{indent}$$", *(indent + _tex_roles(b) for b in body), f"{indent}$$", ""]
    return "\n".join(out)


def _tex_roles(tex: str) -> str:
    """A role inside maths (``\\text{:func:`f`}``) as typewriter text: no link fits there."""
    return _XREF_ROLE.sub(lambda m: r"\texttt{" + m.group(1).replace("_", r"\_") + "}", tex)


def rst_to_markdown(text: str, obj: griffe.Object) -> str:
    """A docstring's reStructuredText maths, roles, literals and note paths as Markdown."""
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${_tex_roles(m.group(1).strip())}$", text)

    def xref(m: re.Match) -> str:
        name = m.group(1)
        target = _resolve_in_scope(obj, name)
        if target is None:
            return f"`{name}`"
        code = f"<code>{html.escape(name)}</code>"
        return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'

    text = _XREF_ROLE.sub(xref, text)

    def literal(m: re.Match) -> str:
        ident = file_citation(m.group(1))
        return f"[`{m.group(1)}`][{ident}]" if ident else m.group(0)

    text = _LITERAL.sub(literal, text)
    text = _NOTE_PATH.sub(
        lambda m: (
            f"[{m.group(1)}][{m.group(1)}]" if m.group(1) in file_identifiers() else m.group(1)
        ),
        text,
    )
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)  # "as follows::" + literal block


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring of the loaded package from reStructuredText to Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        def visit(obj: griffe.Object) -> None:
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value, obj)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
