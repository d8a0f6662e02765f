"""HTML -> Markdown-flavoured text for pretraining.

Kept: headings (`#`), paragraphs, lists (`- ` / `1. `), tables (Markdown, header row first,
nested tables flattened), code blocks (fenced, with the language when the page names it, the
whitespace exactly as in the page), equations as `$..$` / `$$..$$` (MathJax scripts, KaTeX
annotations, MathML via its TeX annotation or phi4ray.data.curate.mathml; `\\(..\\)` text stays as
is), forum threads (each post as `**author** (date) wrote:` + its body, quotes as `> ` lines).
Dropped, counted in `boilerplate_chars`: chrome tags (nav, footer, aside, form, ...), elements
whose class/id/role names chrome (menus, sidebars, cookie banners, ads, share bars, ...), hidden
elements, and link-heavy blocks (navigation is mostly links). Ancestors of the main content are
never dropped, so a wrapper named "content-sidebar-wrap" or an ASP.NET page-wide <form> survives.

How: one lxml parse; two linear passes that measure each element's text and link text, mark
chrome by markup, and find the main content (an explicit <main>/role=main/.content marker and the
element holding the most paragraph text outside chrome); then one recursive render, guarded by
ExtractConfig.max_depth. libxml2 stops parsing at nesting depth 256 and would return a silently
truncated tree; such a page is set aside as "too deep". extract() never raises: every failure is
an Extraction with an empty text and a reason.
"""
from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass

import lxml.html
from lxml import etree

from phi4ray.data.curate import mathml
from phi4ray.run.errors import ConfigError

__all__ = ["DROP_TAGS", "BOILERPLATE_PATTERN", "ExtractConfig", "Extraction", "decode_html", "extract"]

DROP_TAGS = tuple(
    "nav header footer aside form script style noscript iframe svg button select input textarea "
    "object embed canvas template dialog audio video map".split())
# matched against each class token and the id, as a whole word between '-' / '_' separators
BOILERPLATE_PATTERN = (
    r"(?:^|[-_])(?:nav\w*|menu|menubar|sidebar|sphinxsidebar\w*|footer|breadcrumbs?"
    r"|cookies?|consent|gdpr|banner|ads?|advert\w*|sponsor\w*|promo\w*|share|sharing|social|related"
    r"|comment-?form|respond|newsletter|subscribe|subscription|signup|login|popup|modal|skip-?link"
    r"|pagination|pager|widget|toc|masthead|headerlink|permalink|outbrain|taboola|sr-only"
    r"|screen-reader-text|visually-hidden|signature|edit-?section)(?:[-_]|$)")


@dataclass(frozen=True)
class ExtractConfig:
    min_block_chars: int = 80       # link-heavy blocks with less non-link text are navigation
    max_link_density: float = 0.5   # link text / text above which a short block is navigation
    max_link_density_long: float = 0.8  # ... above which any block is (menus, tables of contents)
    max_depth: int = 100            # elements nested deeper are not read (real pages stay < 60)
    max_bytes: int = 8 * 2**20      # larger inputs are set aside (libxml2 caps text nodes at 10 MB)
    max_cell_chars: int = 1000      # a table with a bigger cell lays a page out; it is not data
    drop_tags: tuple[str, ...] = DROP_TAGS  # a tuple, so `curate.extract.drop_tags=nav,form` works
    boilerplate_pattern: str = BOILERPLATE_PATTERN

    def __post_init__(self) -> None:
        for name in ("min_block_chars", "max_depth", "max_bytes", "max_cell_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"extract.{name} must be a positive integer, got {value!r}")
        if self.max_depth > 200:  # the render recurses a few frames per level; Python allows 1000
            raise ConfigError(f"extract.max_depth must be at most 200, got {self.max_depth}")
        for name in ("max_link_density", "max_link_density_long"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ConfigError(f"extract.{name} must be in (0, 1], got {value!r}")
        if not isinstance(self.drop_tags, tuple) or not all(isinstance(t, str) for t in self.drop_tags):
            raise ConfigError(f"extract.drop_tags must be a tuple of tag names, got {self.drop_tags!r}")
        try:
            _compile(self.boilerplate_pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"extract.boilerplate_pattern is not a regex ({e}): {self.boilerplate_pattern!r}") from None


@dataclass(frozen=True)
class Extraction:
    text: str = ""
    title: str = ""
    n_code: int = 0
    n_tables: int = 0
    n_formulas: int = 0
    n_posts: int = 0
    boilerplate_chars: int = 0      # visible text dropped as boilerplate
    reason: str = ""                # "" when text was extracted, else why not


@functools.lru_cache(maxsize=16)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.I)


_WS = re.compile(r"\s+")
_SPACES = re.compile(r" {2,}")
_NL_SPACES = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_SITE_HEADER = re.compile(r"^(?:site-?|page-|top-|global-|main-)?header$", re.I)
_POST = re.compile(r"^(?:post|comment|message|reply|answer|question|forum-?post|topic-?post"
                   r"|li-comment|div-comment|postcontainer)(?:[-_]?\d+)?$", re.I)
_POST_ITEMTYPE = re.compile(r"(?:Comment|DiscussionForumPosting|Answer|Question|SocialMediaPosting|Message)/?$")
_QUOTE = re.compile(r"(?:^|[-_])(?:bbcode_?)?quote(?:content|box|block)?(?:[-_]|$)", re.I)
_CODE_LANG = re.compile(r"^(?:language|lang|highlight-source|highlight|sourcecode)-([\w+#.-]+)$", re.I)
_BRUSH = re.compile(r"brush:\s*([\w+#-]+)", re.I)
_BYLINE = re.compile(r"^(?:posted\s+)?by\s+|\s*(?:says|wrote|said)\s*:?$", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([\w.:-]{1,40})""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']([\w.:-]{1,40})""")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))

_BLOCK = frozenset("address article aside blockquote body caption center dd details dialog div dl dt "
                   "fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html li "
                   "main nav ol p pre section summary table tbody td tfoot th thead tr ul legend menu".split())
_SKIP = frozenset("head title meta link base".split())
_NO_TEXT = frozenset("script style template head".split())
_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
_HEAVY = _HEADINGS | {"pre", "blockquote", "xmp", "listing"}  # not table-cell data
_PARAGRAPHS = frozenset("p pre td dd li blockquote".split())
_INLINE = frozenset("a span b i em strong code time img abbr small sup sub label button".split())
_LINK_BLOCKS = frozenset("div section ul ol dl menu p table".split())
_SLUG_ID_TAGS = _HEADINGS | {"section", "article", "dt"}  # ids are heading slugs
_NAV_ROLES = frozenset("navigation banner contentinfo complementary search menu menubar dialog alertdialog toolbar".split())
_MAIN_TOKENS = frozenset("body content main main-content maincontent article-body articlebody article-content "
                         "entry-content post-content post-body postbody markdown-body page-content "
                         "story-body mw-content-text bodycontent".split())
_AUTHOR_TOKENS = frozenset("author username user-name user byline poster postauthor post-author "
                           "comment-author message-author fn".split())
_NAME_TOKENS = frozenset("username user-name fn name".split())
_DATE_TOKENS = frozenset("date time timestamp post-date postdate published datetime comment-date".split())
_LANG_ALIASES = {"python3": "python", "py": "python", "py3": "python", "default": "python",
                 "ipython3": "ipython", "none": "", "text": "", "plain": "", "plaintext": "",
                 "nohighlight": "", "output": ""}


def decode_html(data: bytes) -> str:
    """Bytes -> str as a browser would: a BOM, else the <meta charset> / XML declaration in the
    first 4 KB, else UTF-8; undecodable bytes become U+FFFD."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, "replace")
    found = _XML_ENCODING.search(data[:4096]) or _META_CHARSET.search(data[:4096])
    encoding = "utf-8"
    if found:
        try:
            encoding = codecs.lookup(found.group(1).decode("ascii")).name
        except (LookupError, UnicodeDecodeError):
            pass
    # a page labelled UTF-16/32 that arrived without a BOM is ASCII-compatible in practice
    # (browsers ignore the label), and latin-1 / ascii labels mean windows-1252 on the web
    if encoding.startswith(("utf-16", "utf-32")):
        encoding = "utf-8"
    encoding = {"iso8859-1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252"}.get(encoding, encoding)
    return data.decode(encoding, "replace")


def extract(html: str | bytes, url: str = "", config: ExtractConfig = ExtractConfig()) -> Extraction:
    """Main text of one page as Markdown-flavoured text, with counts of what was kept and dropped.

    `url` is accepted for symmetry with other extractors and logging; no rule depends on it."""
    try:
        return _extract(html, config)
    except RecursionError:
        return Extraction(reason="too deep")
    except Exception as e:  # one bad page must never fail a batch; the reason names the failure
        return Extraction(reason=f"extractor error: {type(e).__name__}")


def _extract(html, cfg: ExtractConfig) -> Extraction:
    if isinstance(html, (bytes, bytearray, memoryview)):
        html = bytes(html)
        if len(html) > cfg.max_bytes:
            return Extraction(reason="too large")
        html = decode_html(html)
    elif not isinstance(html, str):
        return Extraction(reason=f"not html: {type(html).__name__}")
    if len(html) > cfg.max_bytes:
        return Extraction(reason="too large")
    root, reason = _parse(html.lstrip("\ufeff"))
    if root is None:
        return Extraction(reason=reason)
    title = _title(root)
    body = root.find("body")
    body = root if body is None else body
    renderer = _Renderer(cfg, body)
    out = _Out(renderer)
    renderer.node(body, out, 1 if body is root else 2)
    text = "\n\n".join(out.done())
    reason = "" if text else "too deep" if renderer.deep else "no main content"
    return Extraction(text, title, renderer.n_code, renderer.n_tables, renderer.n_formulas,
                      renderer.n_posts, renderer.boilerplate, reason)


def _parse(text: str):
    """(root, "") or (None, reason)."""
    sample = text[:8192]
    if not sample.strip():
        return None, "empty document"
    if sample.count("\ufffd") + len(_CONTROL.findall(sample)) > 0.25 * len(sample):
        return None, "binary content"
    # bytes, not str: lxml refuses str with control characters or an encoding declaration;
    # lone surrogates (only a str caller can pass them) become '?'
    data = _CONTROL.sub("", text).encode("utf-8", "replace")
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True,
                                  no_network=True, collect_ids=False, default_doctype=False)
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except etree.ParserError as e:
        return None, "empty document" if "empty" in str(e).lower() else "unparseable html"
    except (etree.LxmlError, ValueError):
        return None, "unparseable html"
    if any("depth" in err.message.lower() for err in parser.error_log):
        return None, "too deep"  # libxml2 stopped at its nesting limit: the rest of the page is gone
    return root, ""


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _title(root) -> str:
    for el in root.iter("title"):
        if _clean(el.text_content()):
            return _clean(el.text_content())[:300]
    for el in root.iter("meta"):
        if el.get("property") == "og:title" and _clean(el.get("content") or ""):
            return _clean(el.get("content"))[:300]
    return next((_clean(h.text_content())[:300] for h in root.iter("h1")), "")


def _int(value, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(value)))
    except (TypeError, ValueError):
        return default


def _tokens(el) -> list[str]:
    return (el.get("class") or "").split()


class _Out:
    """Blocks of finished text, plus the inline run being built (joined and flushed as one block)."""

    def __init__(self, renderer: "_Renderer"):
        self.r, self.blocks, self.buf = renderer, [], []

    def text(self, s: str | None) -> None:
        if s:
            self.buf.append(_WS.sub(" ", s))
            if "\\" in s or "$$" in s:  # \(..\), \[..\], $$..$$ left for MathJax; counted by delimiters
                self.r.n_formulas += (min(s.count("\\("), s.count("\\)")) + min(s.count("\\["), s.count("\\]"))
                                      + s.count("$$") // 2)  # (a regex pairing them is quadratic on junk)

    def inline(self, s: str) -> None:
        self.buf.append(s)

    def flush(self) -> None:
        if self.buf:
            s = _MANY_NL.sub("\n\n", _NL_SPACES.sub("\n", _SPACES.sub(" ", "".join(self.buf)))).strip()
            self.buf = []
            if s:
                self.blocks.append(s)

    def block(self, s: str) -> None:
        self.flush()
        if s:
            self.blocks.append(s)

    def done(self) -> list[str]:
        self.flush()
        return self.blocks


class _Renderer:
    def __init__(self, cfg: ExtractConfig, body):
        self.cfg, self.bp, self.drop_tags = cfg, _compile(cfg.boilerplate_pattern), frozenset(cfg.drop_tags)
        self.n_code = self.n_tables = self.n_formulas = self.n_posts = self.boilerplate = self.deep = 0
        self.in_article = self.in_cell = 0
        self.lists: list[list] = []        # [ordered, next number] per open list
        self.post_stack: list = []         # the posts being rendered, outermost first
        self.consumed: set = set()         # author / date elements moved into a post's header
        self._measure(body)
        self.handlers = {"pre": self._pre, "xmp": self._pre, "listing": self._pre, "ul": self._list,
                         "ol": self._list, "menu": self._list, "li": self._li, "table": self._table,
                         "blockquote": self._quote, "br": lambda el, out, depth: out.inline("\n"),
                         "hr": lambda el, out, depth: out.flush(), "img": lambda el, out, depth: None,
                         **{t: self._inline_code for t in ("code", "tt", "kbd", "samp")},
                         **{f"h{i}": self._heading for i in range(1, 7)}}

    def _measure(self, body) -> None:
        """Two linear passes. Children first: text and link-text length per element, forum posts.
        Parents first: which elements are chrome by tag / class / id / role, and the main content:
        the explicit marker and the element with the most paragraph text outside chrome. A chrome
        class / id / <form> holding most of the page's text is a misnamed wrapper, and votes."""
        elements = list(body.iter(etree.Element))
        self.tl, self.ll, self.heavy = {}, {}, set()
        posts, direct = [], {}  # direct: text directly inside an element, not in its children
        for el in reversed(elements):
            tag = el.tag
            own = 0 if tag in _NO_TEXT or not el.text else len(el.text.strip())
            total, links, heavy = own, 0, tag in _HEAVY
            for child in el:
                total += len(child.tail.strip()) if child.tail else 0
                if child in self.tl:
                    total, links = total + self.tl[child], links + self.ll[child]
                    heavy = heavy or child in self.heavy
            # a heading that links to its own page is still a heading, not navigation
            self.tl[el], self.ll[el] = total, total if tag == "a" else 0 if tag in _HEADINGS else links
            direct[el] = total - sum(self.tl.get(child, 0) for child in el)
            if tag not in _INLINE and total > links / self.cfg.max_link_density and _is_post(el, tag, _tokens(el)):
                posts.append(el)
                heavy = True
            if heavy:
                self.heavy.add(el)
        self.chrome, inside, score, explicit = {}, set(), {}, []
        for el in elements:
            kind = self._chrome_kind(el)
            if kind is not None:
                self.chrome[el] = kind
            misnamed = el.tag not in self.drop_tags or el.tag == "form"  # (ASP.NET wraps pages in a form)
            if el.getparent() in inside or kind is not None and not (misnamed and self.tl[el] > 0.5 * self.tl[body]):
                inside.add(el)
                continue
            if (el.tag == "main" or el.get("role") == "main" or el.get("itemprop") in ("articleBody", "mainContentOfPage")
                    or any(t.lower() in _MAIN_TOKENS for t in _tokens(el) + [el.get("id") or ""])):
                explicit.append(el)
            # paragraphs vote with their text, other elements with the text directly inside them
            weight = self.tl[el] - self.ll[el] if el.tag in _PARAGRAPHS else direct[el]
            parent = el.getparent()
            if weight >= 25 and parent is not None:
                score[parent] = score.get(parent, 0) + weight
                grand = parent.getparent()
                if grand is not None:
                    score[grand] = score.get(grand, 0) + weight / 2
        self.posts = set(posts) if len(posts) >= 2 else set()  # one "post" is an article, not a thread
        self.main_nodes = set()
        if score:
            self.main_nodes.add(max(score, key=score.get))
        if explicit:
            self.main_nodes.add(max(explicit, key=lambda e: self.tl[e] - self.ll[e]))
        self.protected = set()
        for el in self.main_nodes:
            while el is not None and el not in self.protected:
                self.protected.add(el)
                el = el.getparent()

    def _chrome_kind(self, el):
        """None: not chrome by its own markup; False: chrome; True: chrome outside an article only
        (an article's <header> holds its title, its <aside> its notes)."""
        tag = el.tag
        if tag in ("html", "body"):
            return None
        if tag in self.drop_tags:
            return tag in ("header", "aside")
        if el.get("hidden") is not None or _HIDDEN.search(el.get("style") or ""):
            return False
        if (el.get("role") or "").lower() in _NAV_ROLES:
            return False
        tokens = _tokens(el)
        if el.get("id") and tag not in _SLUG_ID_TAGS and "section" not in tokens:
            tokens.append(el.get("id"))
        if any(self.bp.search(t) for t in tokens):
            return False
        return True if any(_SITE_HEADER.match(t) for t in tokens) else None

    # -- dispatch -------------------------------------------------------------------------------
    def children(self, el, out: _Out, depth: int) -> None:
        out.text(el.text)
        for child in el:
            self.node(child, out, depth + 1)
            out.text(child.tail)

    def sub(self, el, depth: int) -> list[str]:
        out = _Out(self)
        self.children(el, out, depth)
        return out.done()

    def node(self, el, out: _Out, depth: int) -> None:
        tag = el.tag
        if not isinstance(tag, str) or tag in _SKIP:
            return
        if depth > self.cfg.max_depth:
            self.deep += self.tl.get(el, 0)
            return
        if el in self.consumed:
            return
        formulas = mathml.html_formulas(el)
        if formulas is not None:
            for tex, display in formulas:
                self._formula(out, tex, display)
            return
        if self._is_boilerplate(el, tag):
            self.boilerplate += self.tl.get(el, 0)
            return
        if el in self.posts and not (self.post_stack and self._wraps(self.post_stack[-1], el)):
            self._post(el, out, depth)
        elif tag in self.handlers:
            self.handlers[tag](el, out, depth)
        elif tag != "a" and any(_QUOTE.search(t) for t in _tokens(el)):
            self._quote(el, out, depth)
        elif tag in _BLOCK:
            self._block(el, out, depth)
        else:
            self.children(el, out, depth)

    def _is_boilerplate(self, el, tag: str) -> bool:
        if el in self.protected:
            return False
        kind = self.chrome.get(el)
        if kind is not None and not (kind and self.in_article):
            return True
        total, links = self.tl.get(el, 0), self.ll.get(el, 0)
        if tag not in _LINK_BLOCKS or self.in_cell or not total:  # a table cell may be just a link
            return False
        if links > self.cfg.max_link_density_long * total:
            return True  # short API tables ("f() | see g()") are link-heavy content: only the long rule
        return tag != "table" and links > self.cfg.max_link_density * total and total - links < self.cfg.min_block_chars

    # -- structure ------------------------------------------------------------------------------
    def _block(self, el, out: _Out, depth: int) -> None:
        scoped = el.tag in ("article", "main") or el in self.main_nodes
        out.flush()
        self.in_article += scoped
        self.children(el, out, depth)
        self.in_article -= scoped
        out.flush()

    def _heading(self, el, out: _Out, depth: int) -> None:
        text = _clean(" ".join(self.sub(el, depth)))
        if text:
            out.block("#" * int(el.tag[1]) + " " + text)

    def _list(self, el, out: _Out, depth: int) -> None:
        self.lists.append([el.tag == "ol", _int(el.get("start"), 1, -10**6, 10**6)])
        posts_before = self.n_posts
        blocks = self.sub(el, depth)
        self.lists.pop()
        out.block(("\n\n" if self.n_posts > posts_before else "\n").join(blocks))

    def _li(self, el, out: _Out, depth: int) -> None:
        if not self.lists:
            return self._block(el, out, depth)
        blocks = self.sub(el, depth)
        if blocks:
            state = self.lists[-1]
            marker = f"{state[1]}. " if state[0] else "- "
            state[1] += 1
            lines = "\n".join(blocks).split("\n")  # continuation lines (not blank ones) under the marker
            out.block("\n".join([marker + lines[0]] + [" " * len(marker) + ln if ln else "" for ln in lines[1:]]))

    def _quote(self, el, out: _Out, depth: int) -> None:
        text = "\n\n".join(self.sub(el, depth))
        out.block("\n".join("> " + line if line else ">" for line in text.split("\n")) if text else "")

    def _table(self, el, out: _Out, depth: int) -> None:
        rows = [[c for c in tr if c.tag in ("td", "th")] for tr in _rows(el)]
        width = max((sum(_int(c.get("colspan"), 1, 1, 50) for c in cells) for cells in rows), default=0)
        if (self.in_cell or width < 2 or el in self.heavy
                or any(self.tl.get(c, 0) > self.cfg.max_cell_chars for cells in rows for c in cells)):
            return self._block(el, out, depth)  # layout table, or nested in a cell: flattened
        self.in_cell += 1
        grid = []
        for cells in rows:
            row = []
            for cell in cells:
                row.append(" ".join(self.sub(cell, depth + 2)).replace("\n", " ").replace("|", r"\|"))
                row += [""] * (_int(cell.get("colspan"), 1, 1, 50) - 1)
            if any(row):
                grid.append(row + [""] * (width - len(row)))
        caption = next((" ".join(self.sub(c, depth + 1)) for c in el if c.tag == "caption"), "")
        self.in_cell -= 1
        if grid:
            lines = [caption] if caption else []
            lines += ["| " + " | ".join(grid[0]) + " |", "|" + " --- |" * width]
            lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
            out.block("\n".join(lines))
            self.n_tables += 1

    def _post(self, el, out: _Out, depth: int) -> None:
        author, date = self._post_meta(el)
        posts_before = self.n_posts
        self.post_stack.append(el)
        self.in_article += 1
        body = self.sub(el, depth)
        self.in_article -= 1
        self.post_stack.pop()
        header = f"**{author or 'Anonymous'}**{f' ({date})' if date else ''} wrote:" if author or date else ""
        if header or (body and self.n_posts == posts_before):  # else: a wrapper of posts
            self.n_posts += 1
        out.block("\n".join(filter(None, [header, "\n\n".join(body)])))

    def _wraps(self, outer, inner) -> bool:
        """A post element holding 90% of its enclosing post's text is the same post (a wrapper)."""
        return self.tl.get(inner, 0) >= 0.9 * self.tl.get(outer, 0)

    def _post_meta(self, post) -> tuple[str, str]:
        """The first author and date elements of a post (not of the replies nested in it); they
        move into the post's header. One walk that skips nested posts, so linear over a thread."""
        author = date = ""
        walker = etree.iterwalk(post, events=("start",))
        for _, el in walker:
            if el is not post and (not isinstance(el.tag, str) or el in self.posts and not self._wraps(post, el)):
                walker.skip_subtree()
                continue
            tokens, prop = {t.lower() for t in _tokens(el)}, (el.get("itemprop") or "").lower()
            if not author and (prop == "author" or el.get("rel") == "author" or tokens & _AUTHOR_TOKENS):
                inner = next((d for d in el.iterdescendants(etree.Element) if d.get("itemprop") == "name"
                              or {t.lower() for t in _tokens(d)} & _NAME_TOKENS), el)
                name = _BYLINE.sub("", _clean(inner.text_content()))
                if 0 < len(name) <= 80:  # a longer "author" block is a bio, not a name: keep looking
                    author = name
                    self.consumed.add(el)
                    walker.skip_subtree()
            elif not date and (el.tag == "time" or prop in ("datepublished", "datecreated") or tokens & _DATE_TOKENS):
                when = _clean(el.text_content()) or _clean(el.get("datetime") or "")
                if 0 < len(when) <= 60:
                    date = when
                    self.consumed.add(el)
                    walker.skip_subtree()
            if author and date:
                break
        return author, date

    # -- code and formulas --------------------------------------------------------------------------
    def _pre(self, el, out: _Out, depth: int) -> None:
        code = _code_text(el)
        if code.strip():
            fence = "```"
            while fence in code:
                fence += "`"
            out.block(f"{fence}{_code_lang(el)}\n{code}\n{fence}")
            self.n_code += 1

    def _inline_code(self, el, out: _Out, depth: int) -> None:
        raw = el.text_content()
        if raw.strip().count("\n") >= 2:  # a multi-line <code> outside <pre> is a block
            return self._pre(el, out, depth)
        text = _clean(raw)
        if text:
            tick = "``" if "`" in text else "`"
            out.inline(f"{tick}{text}{tick}")

    def _formula(self, out: _Out, tex: str, display: bool) -> None:
        tex = tex.strip()
        if tex:
            self.n_formulas += 1
            out.block(f"$${tex}$$") if display else out.inline(f"${_clean(tex)}$")


def _is_post(el, tag: str, tokens: list[str]) -> bool:
    if tag == "article" or _POST_ITEMTYPE.search(el.get("itemtype") or ""):
        return True
    return any(_POST.match(t) for t in tokens + [el.get("id") or ""])


def _rows(table):
    for child in table:
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            yield from (tr for tr in child if tr.tag == "tr")


def _code_text(pre) -> str:
    """The text of a code block exactly as displayed: <br> is a newline, line-number gutters go."""
    parts = []
    walker = etree.iterwalk(pre, events=("start", "end"))
    for event, el in walker:
        if event == "start":
            if not isinstance(el.tag, str) or {"linenos", "lineno", "gutter"} & set(_tokens(el)):
                walker.skip_subtree()
            elif el.tag == "br":
                parts.append("\n")
            elif el.text:
                parts.append(el.text)
        elif el is not pre and el.tail:
            parts.append(el.tail)
    code = "".join(parts).replace("\r\n", "\n").replace("\r", "\n")
    return _LEADING_BLANK_LINES.sub("", code).rstrip()


def _code_lang(pre) -> str:
    """The language a code block declares: language-x / lang-x classes, Sphinx highlight-x
    wrappers, data-lang, SyntaxHighlighter's "brush: x"; "" when unknown."""
    nodes, up = [pre, *pre.iterchildren("code")], pre.getparent()
    for _ in range(3):
        if up is not None:
            nodes.append(up)
            up = up.getparent()
    for node in nodes:
        found = node.get("data-lang") or node.get("data-language")
        cls = node.get("class") or ""
        match = _BRUSH.search(cls) or next(filter(None, map(_CODE_LANG.match, cls.split())), None)
        found = found or (match.group(1) if match else "")
        if found:
            lang = found.lower()
            return _LANG_ALIASES.get(lang, lang)
    return ""
