"""HTML extraction: phi4ray.data.curate.html against trafilatura on real and generated pages.

Real pages: Debian's python3-doc (Sphinx HTML: code blocks, tables, navigation chrome), N pages
spread evenly over the sorted doc tree. Missing? `apt-get install -y python3-doc` (this script
does not install anything). Generated pages (built here, deterministic): MathJax, KaTeX and MathML
formulas, and forum threads, each inside site chrome (nav, cookie banner, ads, sidebar, footer).

Per extractor: code blocks kept (a source <pre> counts when its first non-empty line appears in the
output), tables kept (first data cell appears), formulas kept (TeX source appears), forum posts
kept (body, author), boilerplate let through (known chrome strings found in the output beyond their
count in the page's main div.body), and pages/s. Prints a table and ratios ours / trafilatura.
Run: .venv/bin/python benchmarks/html_extract.py [--pages 300] [--generated 60]
"""
from __future__ import annotations

import argparse
import glob
import pathlib
import random
import re
import sys
import time

import lxml.html

from phi4ray.data.curate.html import extract

SPHINX_CHROME = ["Navigation", "Previous topic", "Next topic", "This Page", "Report a Bug", "Show Source",
                 "Quick search", "Table of Contents", "©", "Theme", "Found a bug", "Please donate",
                 "Python Software Foundation", "Last updated on"]
_WS = re.compile(r"\s+")
_MARKS = re.compile(r"[`*\\]")


def norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def plain(text: str) -> str:
    """Whitespace-collapsed text without Markdown inline marks (`code`, **bold**, escapes), so an
    extractor is not penalized for formatting what it kept."""
    return norm(_MARKS.sub("", text))


def squash(text: str) -> str:
    return _WS.sub("", text)


def ours(html: bytes, url: str) -> str:
    return extract(html, url).text


def trafilatura_md(html: bytes, url: str) -> str:
    import trafilatura  # deferred: a benchmark-only dependency, loaded when its extractor runs
    return trafilatura.extract(html, url=url, output_format="markdown", include_tables=True,
                               include_formatting=True, include_comments=True) or ""


EXTRACTORS = {"ours": ours, "trafilatura": trafilatura_md}


# -- python3-doc --------------------------------------------------------------------------------------

def doc_root(arg: str | None) -> pathlib.Path:
    candidates = [arg] if arg else ["/usr/share/doc/python3-doc/html", *sorted(glob.glob("/usr/share/doc/python3*/html"))]
    for c in candidates:
        if c and pathlib.Path(c, "index.html").exists():
            return pathlib.Path(c)
    sys.exit("python3-doc HTML not found; install it with:  apt-get install -y python3-doc")


def doc_pages(root: pathlib.Path, n: int) -> list[pathlib.Path]:
    pages = sorted(p for p in root.rglob("*.html") if not any(part.startswith("_") for part in p.relative_to(root).parts))
    step = max(len(pages) / n, 1.0)
    return [pages[int(i * step)] for i in range(min(n, len(pages)))]


def doc_truth(html: bytes) -> dict:
    """What a faithful extraction keeps, read from the page's main div.body."""
    tree = lxml.html.document_fromstring(html)
    body = next(iter(tree.xpath('//div[@role="main"] | //div[contains(concat(" ", @class, " "), " body ")]')), None)
    if body is None:
        return {"code": [], "verbatim": [], "tables": [], "formulas": [], "body": ""}
    code, verbatim = [], []
    for pre in body.iter("pre"):
        first = next((line.strip() for line in pre.text_content().splitlines() if line.strip()), "")
        if first:
            code.append(first)
            verbatim.append(re.sub(r"\A(?:[ \t]*\n)+", "", pre.text_content()).rstrip())
    tables = []
    for table in body.iter("table"):
        cell = next((norm(td.text_content()) for td in table.iter("td") if norm(td.text_content())), "")
        if cell:
            tables.append(cell)
    formulas = [re.sub(r"^\\[(\[]|\\[)\]]$", "", norm(m.text_content())).strip()
                for m in body.xpath('.//*[contains(concat(" ", @class, " "), " math ")]')]
    return {"code": code, "verbatim": verbatim, "tables": tables, "formulas": [f for f in formulas if f],
            "body": body.text_content()}


def chrome_through(text: str, chrome: list[str], allowed: str = "") -> int:
    text, allowed = norm(text), norm(allowed)
    return sum(max(0, text.count(s) - allowed.count(s)) for s in chrome)


def verbatim(code: str, text: str) -> bool:
    """The whole block, every line with its exact indentation (Markdown may indent the block as a
    whole, e.g. inside a list item)."""
    lines = code.split("\n")
    return any("\n".join(pad + line if line else pad.rstrip() for line in lines) in text
               for pad in ("", "  ", "   ", "    ", "> ", "  > ", "   > "))


def kept(items: list[str], text: str, squashed: bool = False) -> int:
    if squashed:
        flat = squash(text)
        return sum(squash(i) in flat for i in items)
    flat = plain(text)
    return sum(plain(i) in flat for i in items)


# -- generated pages ----------------------------------------------------------------------------------

WORDS = ("model data training loss gradient batch token layer attention memory cache thread queue value "
         "error result function parameter network signal matrix vector proof theorem energy field").split()
TEX = [r"E = mc^2", r"\int_0^1 x^2\,dx = \frac{1}{3}", r"\frac{\partial f}{\partial x}", r"a^2 + b^2 = c^2",
       r"\sum_{k=1}^{n} k = \frac{n(n+1)}{2}", r"\lim_{x \to 0} \frac{\sin x}{x} = 1", r"\nabla \cdot \mathbf{E} = \rho",
       r"p(y \mid x) = \frac{p(x \mid y) p(y)}{p(x)}"]
# (LaTeX a reader would write, MathML without any TeX source)
MATHML = [("x^2", "<msup><mi>x</mi><mn>2</mn></msup>"),
          (r"\frac{a+1}{b}", "<mfrac><mrow><mi>a</mi><mo>+</mo><mn>1</mn></mrow><mi>b</mi></mfrac>"),
          (r"\sqrt{x}", "<msqrt><mi>x</mi></msqrt>"), ("x_i", "<msub><mi>x</mi><mi>i</mi></msub>"),
          (r"\alpha\leq\beta", "<mi>α</mi><mo>≤</mo><mi>β</mi>"),
          (r"\sum_i^n", "<munderover><mo>∑</mo><mi>i</mi><mi>n</mi></munderover>")]
CHROME = ["Skip to main content", "We use cookies to improve your experience", "Accept all",
          "Advertisement: try CloudHost Pro today", "Trending now", "Subscribe to our newsletter",
          "All rights reserved", "Privacy policy", "Terms of service", "Report post", "Sent from my phone"]


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def chrome_wrap(title: str, content: str, rng: random.Random) -> str:
    menu = "".join(f"<li><a href='/{w}'>{w.title()}</a></li>" for w in rng.sample(WORDS, 6))
    trending = "".join(f"<li><a href='/t/{i}'>{sentence(rng, 6)}</a></li>" for i in range(5))
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            "<a class='skip-link' href='#main'>Skip to main content</a>"
            f"<header class='site-header'><div class='logo'>ExampleSite</div><nav><ul>{menu}</ul></nav></header>"
            "<div class='cookie-consent'><p>We use cookies to improve your experience.</p><a href='#'>Accept all</a></div>"
            f"<div class='wrap'><div id='main'>{content}</div>"
            f"<div class='side-col'><h3>Trending now</h3><ul>{trending}</ul>"
            "<div class='ad-box'>Advertisement: try CloudHost Pro today</div></div></div>"
            "<div class='newsletter'><p>Subscribe to our newsletter</p></div>"
            "<footer><p>© 2024 ExampleSite. All rights reserved.</p><a href='/p'>Privacy policy</a> "
            "<a href='/t'>Terms of service</a></footer></body></html>")


def formula_page(kind: str, rng: random.Random) -> tuple[str, dict]:
    paras, tex_source, converted = [], [], []
    for _ in range(4):
        tex = rng.choice(TEX)
        if kind == "mathjax":
            math = (f"<span class='MathJax_Preview'>{tex}</span><span class='MathJax'><span>rendered</span></span>"
                    f"<script type='math/tex'>{tex}</script>")
            tex_source.append(tex)
        elif kind == "mathjax-display":
            math = f"</p><script type='math/tex; mode=display'>{tex}</script><p>"
            tex_source.append(tex)
        elif kind == "tex-delimiters":
            math = rf"\({tex}\)"
            tex_source.append(tex)
        elif kind == "katex":
            math = ("<span class='katex'><span class='katex-mathml'><math><semantics><mrow><mi>z</mi></mrow>"
                    f"<annotation encoding='application/x-tex'>{tex}</annotation></semantics></math></span>"
                    "<span class='katex-html' aria-hidden='true'><span class='mord'>z</span></span></span>")
            tex_source.append(tex)
        elif kind == "mathml-annotated":
            math = (f"<math><semantics><mrow><mi>z</mi></mrow><annotation encoding='application/x-tex'>{tex}"
                    "</annotation></semantics></math>")
            tex_source.append(tex)
        else:  # mathml without TeX: the converter's job
            tex, mml = rng.choice(MATHML)
            math = f"<math>{mml}</math>"
            converted.append(tex)
        paras.append(f"<p>{sentence(rng)} Consider {math} where {sentence(rng, 8)}</p>")
    content = f"<article><h1>Notes on {rng.choice(WORDS)}</h1>{''.join(paras)}<p>{sentence(rng, 30)}</p></article>"
    return chrome_wrap(f"Formulas ({kind})", content, rng), {"tex": tex_source, "mathml": converted}


def forum_page(kind: str, rng: random.Random) -> tuple[str, dict]:
    posts, truth = [], []
    for i in range(rng.randint(3, 6)):
        author, body = f"user{rng.randint(100, 999)}", [sentence(rng, 18), sentence(rng, 12)]
        quote = f"<blockquote><p>{truth[-1][1]}</p></blockquote>" if truth and rng.random() < 0.5 else ""
        paras = "".join(f"<p>{s}</p>" for s in body)
        if kind == "forum-div":
            posts.append(f"<div class='post' id='p{i}'><div class='post-meta'><a class='username' href='/u'>{author}</a>"
                         f"<time datetime='2024-03-0{i + 1}'>March {i + 1}</time></div>"
                         f"<div class='post-body'>{quote}{paras}</div>"
                         "<div class='signature'>Sent from my phone</div>"
                         "<div class='post-footer'><a href='#'>Reply</a> <a href='#'>Report post</a></div></div>")
        else:
            posts.append(f"<article itemscope itemtype='https://schema.org/DiscussionForumPosting'>"
                         f"<span itemprop='author'>{author}</span><div itemprop='text'>{quote}{paras}</div>"
                         "<footer><a href='#'>Report post</a></footer></article>")
        truth.append((author, body[0]))
    content = f"<h1>Thread: {sentence(rng, 5)}</h1><div class='thread'>{''.join(posts)}</div>"
    return chrome_wrap("Forum thread", content, rng), {"posts": truth}


def generated_pages(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    kinds = [("formula", k) for k in ("mathjax", "mathjax-display", "tex-delimiters", "katex", "mathml-annotated", "mathml")]
    kinds += [("forum", "forum-div"), ("forum", "forum-schema")]
    out = []
    for i in range(n):
        family, kind = kinds[i % len(kinds)]
        out.append(formula_page(kind, rng) if family == "formula" else forum_page(kind, rng))
    return out


# -- run ----------------------------------------------------------------------------------------------

def run_all(pages: list[tuple[bytes, str]]) -> dict[str, tuple[list[str], float]]:
    """Each extractor's outputs and CPU seconds. Page by page, the extractors alternating, timed by
    this process's CPU clock: other load on a shared machine moves neither number."""
    texts, seconds = {name: [] for name in EXTRACTORS}, dict.fromkeys(EXTRACTORS, 0.0)
    for html, url in pages:
        for name, fn in EXTRACTORS.items():
            t0 = time.process_time()
            texts[name].append(fn(html, url))
            seconds[name] += time.process_time() - t0
    return {name: (texts[name], seconds[name]) for name in EXTRACTORS}


def report(title: str, rows: list[tuple[str, float, float, bool]]) -> None:
    print(f"\n{title}")
    print(f"  {'':34} {'ours':>10} {'trafilatura':>12} {'ours/traf':>10}")
    for name, a, b, higher_better in rows:
        ratio = f"{a / b:.2f}" if b else ("n/a" if a else "=")
        fmt = (lambda v: f"{v:.1f}") if isinstance(a, float) or isinstance(b, float) else str
        arrow = "(higher is better)" if higher_better else "(lower is better)"
        print(f"  {name:34} {fmt(a):>10} {fmt(b):>12} {ratio:>10}  {arrow}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=300, help="python3-doc pages, spread over the doc tree")
    ap.add_argument("--generated", type=int, default=64, help="generated formula / forum pages")
    ap.add_argument("--doc-root", default=None, help="python3-doc html folder (default: found under /usr/share/doc)")
    args = ap.parse_args()

    root = doc_root(args.doc_root)
    paths = doc_pages(root, args.pages)
    real = [(p.read_bytes(), f"https://docs.python.org/3/{p.relative_to(root)}") for p in paths]
    truth = [doc_truth(html) for html, _ in real]
    results = run_all(real)
    rows = []
    for metric, key, squashed in [("code blocks kept", "code", False), ("tables kept", "tables", False),
                                  ("formulas kept", "formulas", True)]:
        total = sum(len(t[key]) for t in truth)
        vals = [sum(kept(t[key], text, squashed) for t, text in zip(truth, results[n][0])) for n in EXTRACTORS]
        rows.append((f"{metric} (of {total})", *vals, True))
    vals = [sum(chrome_through(text, SPHINX_CHROME, t["body"]) for t, text in zip(truth, results[n][0])) for n in EXTRACTORS]
    rows.insert(1, (f"code blocks verbatim (of {sum(len(t['verbatim']) for t in truth)})",
                    *[sum(verbatim(c, text) for t, text in zip(truth, results[n][0]) for c in t["verbatim"])
                      for n in EXTRACTORS], True))
    rows.append(("boilerplate strings let through", *vals, False))
    rows.append(("empty outputs", *[sum(not t for t in results[n][0]) for n in EXTRACTORS], False))
    rows.append(("output MB", *[sum(len(t) for t in results[n][0]) / 1e6 for n in EXTRACTORS], True))
    rows.append(("pages/s (CPU time)", *[len(real) / results[n][1] for n in EXTRACTORS], True))
    mb = sum(len(h) for h, _ in real) / 2**20
    report(f"python3-doc: {len(real)} pages, {mb:.1f} MB of HTML, from {root}", rows)

    gen = generated_pages(args.generated)
    pages = [(html.encode(), f"https://example.com/{i}") for i, (html, _) in enumerate(gen)]
    results = run_all(pages)
    rows = []
    for label, key in [("formulas kept, TeX source", "tex"), ("MathML (no TeX) as LaTeX", "mathml")]:
        total = sum(len(t.get(key, [])) for _, t in gen)
        vals = [sum(kept(t.get(key, []), text, True) for (_, t), text in zip(gen, results[n][0])) for n in EXTRACTORS]
        rows.append((f"{label} (of {total})", *vals, True))
    total = sum(len(t.get("posts", [])) for _, t in gen)
    for label, index in [("post bodies kept", 1), ("post authors kept", 0)]:
        vals = [sum(kept([p[index] for p in t.get("posts", [])], text) for (_, t), text in zip(gen, results[n][0]))
                for n in EXTRACTORS]
        rows.append((f"{label} (of {total})", *vals, True))
    rows.append(("boilerplate strings let through", *[sum(chrome_through(text, CHROME) for text in results[n][0])
                                                     for n in EXTRACTORS], False))
    rows.append(("pages/s (CPU time)", *[len(pages) / results[n][1] for n in EXTRACTORS], True))
    report(f"generated: {len(pages)} pages (MathJax, KaTeX, MathML, forum threads) in site chrome", rows)


if __name__ == "__main__":
    main()
