"""HTML-to-text extraction (phi4ray.data.curate.html): what is kept, what is dropped, and that no input
makes it raise or stall."""
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi4ray.data.curate.html import ExtractConfig, Extraction, decode_html, extract
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import apply_overrides

FILLER = ("Gradient descent updates each parameter against the slope of the loss, and the step size "
          "decides whether training converges or oscillates around the minimum. ")


def page(body: str, title: str = "A page") -> str:
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"


def article(inner: str) -> str:
    return page(f"<article><p>{FILLER}</p>{inner}<p>{FILLER}</p></article>")


# -- equations ------------------------------------------------------------------------------------

def test_mathjax_scripts_inline_and_display_without_rendered_duplicates():
    html = article(
        "<p>The energy is <span class='MathJax_Preview'>E=mc2</span>"
        "<span class='MathJax' id='MathJax-Element-1-Frame'><span>E = m c 2</span></span>"
        "<script type='math/tex'>E = mc^2</script> for a body at rest.</p>"
        "<div class='MathJax_Display'><span>sum</span></div>"
        "<script type='math/tex; mode=display'>\\sum_{i=1}^{n} x_i</script>")
    r = extract(html)
    assert "The energy is $E = mc^2$ for a body at rest." in r.text
    assert "\n$$\\sum_{i=1}^{n} x_i$$\n" in r.text
    assert "E=mc2" not in r.text and "E = m c 2" not in r.text and "sum\n" not in r.text
    assert r.n_formulas == 2 and r.reason == ""


def test_tex_delimiters_in_text_are_kept_verbatim_and_counted():
    r = extract(article("<p>Let \\(a^2 + b^2 = c^2\\) hold, and $$\\int_0^1 x\\,dx = 1/2$$ too.</p>"))
    assert "\\(a^2 + b^2 = c^2\\)" in r.text and "$$\\int_0^1 x\\,dx = 1/2$$" in r.text
    assert r.n_formulas == 2


def test_katex_uses_the_tex_annotation_and_drops_the_visual_copy():
    katex = ("<span class='katex'><span class='katex-mathml'><math xmlns='http://www.w3.org/1998/Math/MathML'>"
             "<semantics><mrow><mfrac><mn>1</mn><mn>2</mn></mfrac></mrow>"
             "<annotation encoding='application/x-tex'>\\frac{1}{2}</annotation></semantics></math></span>"
             "<span class='katex-html' aria-hidden='true'><span class='mord'>1</span><span>2</span></span></span>")
    r = extract(article(f"<p>Half is {katex} of one.</p><span class='katex-display'>{katex}</span>"))
    assert "Half is $\\frac{1}{2}$ of one." in r.text
    assert "\n$$\\frac{1}{2}$$\n" in r.text
    assert "12" not in r.text and r.n_formulas == 2


def test_mathml_fraction_superscript_and_friends_convert_to_latex():
    frac = "<math><mfrac><mrow><mi>a</mi><mo>+</mo><mn>1</mn></mrow><mi>b</mi></mfrac></math>"
    sup = ("<math display='block'><msup><mi>x</mi><mn>2</mn></msup><mo>+</mo>"
           "<msubsup><mi>y</mi><mi>i</mi><mn>3</mn></msubsup></math>")
    more = ("<math><msqrt><mi>α</mi></msqrt><mo>≤</mo><mroot><mi>z</mi><mn>3</mn></mroot>"
            "<mover><mi>v</mi><mo>→</mo></mover><mtext>if</mtext><mi>sin</mi><mi>θ</mi></math>")
    r = extract(article(f"<p>Ratio {frac} here.</p>{sup}<p>And {more}.</p>"))
    assert "Ratio $\\frac{a+1}{b}$ here." in r.text
    assert "\n$$x^2+y_i^3$$\n" in r.text
    assert "$\\sqrt{\\alpha}\\leq\\sqrt[3]{z}\\vec{v}\\text{if}\\sin\\theta$" in r.text
    assert r.n_formulas == 3


def test_mathml_prefers_its_tex_annotation_and_namespaced_tags():
    html = article("<p>See <m:math><m:semantics><m:mi>q</m:mi>"
                   "<m:annotation encoding='TeX'>q_{\\text{max}}</m:annotation></m:semantics></m:math>.</p>")
    assert "See $q_{\\text{max}}$." in extract(html).text


def test_mathjax3_containers_and_math_images():
    mjx = ("<mjx-container class='MathJax' jax='CHTML' display='true'><mjx-math><mjx-mi>x</mjx-mi></mjx-math>"
           "<mjx-assistive-mml><math display='block'><msub><mi>x</mi><mi>n</mi></msub></math></mjx-assistive-mml>"
           "</mjx-container>")
    wiki = ("<span class='mwe-math-element'><span class='mwe-math-mathml-inline' style='display: none;'>"
            "<math><mi>a</mi></math></span><img class='mwe-math-fallback-image-inline' alt='{\\displaystyle a^{2}}'></span>")
    r = extract(article(f"<p>Sequence</p>{mjx}<p>and the square {wiki} of a.</p>"))
    assert "\n$$x_n$$\n" in r.text and "the square ${\\displaystyle a^{2}}$ of a." in r.text
    assert r.n_formulas == 2


# -- code -----------------------------------------------------------------------------------------

SPHINX_CODE = (
    '<div class="highlight-python3 notranslate"><div class="highlight"><pre><span></span>'
    '<span class="k">def</span> <span class="nf">f</span><span class="p">(</span><span class="n">x</span>'
    '<span class="p">):</span>\n    <span class="k">if</span> <span class="n">x</span><span class="p">:</span>\n'
    '\t\t<span class="k">return</span>  <span class="n">x</span>   <span class="c1"># two  spaces</span>\n'
    '\n    <span class="k">return</span> <span class="kc">None</span>\n</pre></div></div>')


def test_sphinx_highlighted_code_keeps_exact_whitespace_and_language():
    r = extract(article(SPHINX_CODE))
    expected = "```python\ndef f(x):\n    if x:\n\t\treturn  x   # two  spaces\n\n    return None\n```"
    assert expected in r.text
    assert r.n_code == 1


def test_pre_code_language_class_line_numbers_and_fence_collision():
    html = article("<pre><code class='language-rust'>fn main() {\n    println!(\"hi\");\n}</code></pre>"
                   "<pre><span class='linenos'>1</span>a = '```'<br>b = 2</pre>")
    r = extract(html)
    assert "```rust\nfn main() {\n    println!(\"hi\");\n}\n```" in r.text
    assert "````\na = '```'\nb = 2\n````" in r.text
    assert r.n_code == 2


# -- tables, lists, headings -----------------------------------------------------------------------

def test_table_with_header_escaping_colspan_and_nested_table():
    html = article(
        "<table><caption>Results</caption><thead><tr><th>Model</th><th>Score</th><th>Notes</th></tr></thead>"
        "<tbody><tr><td>phi|4</td><td>81.2</td><td>best</td></tr>"
        "<tr><td colspan='2'>merged</td><td><table><tr><td>in</td><td>ner</td></tr></table></td></tr>"
        "</tbody></table>")
    r = extract(html)
    assert ("Results\n| Model | Score | Notes |\n| --- | --- | --- |\n| phi\\|4 | 81.2 | best |\n"
            "| merged |  | in ner |") in r.text
    assert r.n_tables == 1


def test_single_column_layout_table_is_not_a_markdown_table():
    r = extract(page(f"<table><tr><td><p>{FILLER}</p></td></tr><tr><td><p>Second row text.</p></td></tr></table>"))
    assert "|" not in r.text and "Second row text." in r.text and r.n_tables == 0


def test_lists_and_headings():
    html = article("<h2>Steps</h2><ol start='3'><li>Mix the flour</li><li>Bake it<ul><li>at 200 C</li>"
                   "<li>for an hour</li></ul></li></ol><h3>Notes <a class='headerlink' href='#n'>¶</a></h3>"
                   "<ul><li>Serve warm</li></ul>")
    text = extract(html).text
    assert "## Steps\n\n3. Mix the flour\n4. Bake it\n   - at 200 C\n   - for an hour" in text
    assert "### Notes\n\n- Serve warm" in text and "¶" not in text


# -- forum threads ---------------------------------------------------------------------------------

FORUM = page(
    "<nav><a href='/'>Forum index</a></nav>"
    "<div class='thread'>"
    "<div class='post' id='post-1'><div class='post-header'><span class='username'>alice</span>"
    "<time datetime='2024-01-02'>Jan 2, 2024</time></div>"
    "<div class='post-body'><p>How do I reverse a list in place without copying it?</p></div>"
    "<div class='post-footer'><a href='#'>Reply</a> <a href='#'>Report</a></div></div>"
    "<div class='post' id='post-2'><div class='post-header'><a class='username' href='/u/bob'>bob</a></div>"
    "<div class='post-body'><blockquote><p>How do I reverse a list in place</p></blockquote>"
    "<p>Call its reverse method; it mutates the list and returns None.</p></div></div>"
    "</div>", title="Reverse a list - Forum")


def test_forum_thread_posts_authors_dates_and_quotes():
    r = extract(FORUM)
    assert r.n_posts == 2
    assert "**alice** (Jan 2, 2024) wrote:\nHow do I reverse a list in place without copying it?" in r.text
    assert "**bob** wrote:\n> How do I reverse a list in place\n\nCall its reverse method" in r.text
    assert r.text.index("alice") < r.text.index("bob")
    assert "Report" not in r.text and "Forum index" not in r.text


def test_wordpress_style_comment_wrappers_count_once():
    comment = ("<li class='comment' id='li-comment-{i}'><article class='comment-body' id='div-comment-{i}'>"
               "<div class='comment-author vcard'><cite class='fn'>{name}</cite> <span class='says'>says:</span>"
               "</div><p>{text}</p></article></li>")
    html = page("<ol class='commentlist'>" + "".join(
        comment.format(i=i, name=n, text=t) for i, (n, t) in enumerate([
            ("Carol", "Great write-up on caching strategies, thanks for the benchmarks."),
            ("Dan", "The second table contradicts the conclusion about write-through caches.")])) + "</ol>")
    r = extract(html)
    assert r.n_posts == 2
    assert "**Carol** wrote:\nGreat write-up" in r.text and "**Dan** wrote:\nThe second table" in r.text
    assert "says" not in r.text


# -- boilerplate ------------------------------------------------------------------------------------

def test_nav_footer_ads_and_cookie_banner_are_dropped_and_counted():
    chrome = ["Home", "Accept all cookies to continue browsing", "Buy cheap watches now",
              "Copyright 2024 Example Corp", "Sign up for our newsletter today"]
    html = page(
        "<nav><ul><li><a href='/'>Home</a></li></ul></nav>"
        "<div id='cookie-banner'><p>Accept all cookies to continue browsing</p><button>OK</button></div>"
        f"<main><h1>Caching</h1><p>{FILLER}</p><div class='ad-slot'><p>Buy cheap watches now</p></div>"
        f"<p>{FILLER}</p><div class='newsletter'>Sign up for our newsletter today</div></main>"
        "<footer><p>Copyright 2024 Example Corp</p></footer>")
    r = extract(html)
    assert "# Caching" in r.text and FILLER.strip() in r.text
    assert not [c for c in chrome if c in r.text]
    assert r.boilerplate_chars >= sum(len(c) for c in chrome)


def test_link_heavy_menu_without_telling_class_is_dropped():
    menu = "<div class='x1'><ul>" + "".join(f"<li><a href='/{w}'>{w}</a></li>" for w in
                                            ["Products", "Pricing", "Docs", "Blog", "Careers"]) + "</ul></div>"
    r = extract(page(menu + f"<div class='x2'><p>{FILLER}</p><p>{FILLER}</p></div>"))
    assert "Pricing" not in r.text and "Careers" not in r.text and FILLER.strip() in r.text
    assert r.boilerplate_chars >= len("ProductsPricingDocsBlogCareers")


def test_link_density_spares_linked_headings_and_short_api_tables():
    api = ("<table><tr><td><a href='#f'>f()</a></td><td>see <a href='#g'>g()</a></td></tr>"
           "<tr><td><a href='#h'>h()</a></td><td>like <a href='#f'>f()</a></td></tr></table>")
    links = "".join(f"<a href='/{i}'>Section number {i}</a> " for i in range(20))
    index = f"<table><tr><td>{links}</td><td>{links}</td></tr></table>"
    r = extract(page(f"<div class='hd'><h1><a href='/post/1'>Linked title</a></h1></div><p>{FILLER}</p>{api}{index}"))
    assert "# Linked title" in r.text and "| f() | see g() |" in r.text
    assert "Section number" not in r.text


def test_main_content_survives_false_positive_wrapper_class():
    html = page("<div class='site-container'><div class='content-sidebar-wrap'>"
                f"<div class='content'><h1>Real article</h1><p>{FILLER}</p><p>{FILLER}</p></div>"
                "<div class='sidebar'><p>Popular posts this week</p></div></div></div>")
    r = extract(html)
    assert "# Real article" in r.text and r.text.count(FILLER.strip()) == 2
    assert "Popular posts" not in r.text


def test_page_wide_form_wrapper_kept_but_big_footer_still_dropped():
    html = page(f"<form id='aspnetForm' action='/'><div class='c'><p>{FILLER}</p><p>{FILLER}</p></div>"
                f"<footer><p>{FILLER.upper()}</p><p>{FILLER.upper()}</p><p>{FILLER.upper()}</p></footer></form>")
    r = extract(html)
    assert r.text.count(FILLER.strip()) == 2 and FILLER.upper().strip() not in r.text


def test_hidden_elements_dropped_article_header_kept_site_header_dropped():
    html = page("<div id='header'><p>Example Site logo text</p></div>"
                "<article><header><h1>Post title</h1></header>"
                f"<p>{FILLER}</p><div style='display: none'>secret tracking text</div></article>")
    r = extract(html)
    assert "# Post title" in r.text and "secret" not in r.text and "logo text" not in r.text


def test_title_and_reason_when_nothing_is_left():
    r = extract(page("<nav><a href='/'>Home</a><a href='/about'>About</a></nav>", title="  Only  nav "))
    assert r == Extraction(title="Only nav", boilerplate_chars=len("HomeAbout"), reason="no main content")


# -- decoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"<meta charset='iso-8859-1'><p>caf\xe9 \x93quoted\x94</p>", "café “quoted”"),
    (b"<meta http-equiv='Content-Type' content='text/html; charset=koi8-r'><p>\xf0\xd2\xc9\xd7\xc5\xd4</p>", "Привет"),
    ("\ufeff<p>naïve</p>".encode("utf-16-le"), "naïve"),
    (b"\xef\xbb\xbf<p>bom \xe2\x9c\x93</p>", "bom ✓"),
    (b"<meta charset='no-such-codec'><p>ok \xff</p>", "ok \ufffd"),
])
def test_bytes_are_decoded_by_bom_meta_charset_else_utf8(data, expected):
    assert expected in decode_html(data)
    assert extract(data).text == expected


# -- adversarial input ------------------------------------------------------------------------------

@pytest.mark.parametrize("html, reason", [
    ("", "empty document"), ("   \n ", "empty document"), (b"", "empty document"),
    ("<!-- only a comment -->", "empty document"),
    (random.Random(0).randbytes(4096), "binary content"),
    ("<div>" * 10_000 + "deep" + "</div>" * 10_000, "too deep"),
    (12345, "not html: int"),
])
def test_bad_inputs_return_a_reason(html, reason):
    r = extract(html)
    assert isinstance(r, Extraction) and r.reason == reason and r.text == ""


def test_ten_thousand_nested_divs_return_quickly():
    t0 = time.perf_counter()
    assert extract(("<div>" * 10_000 + "x" + "</div>" * 10_000).encode()).reason == "too deep"
    assert extract("<div><span><b>" * 5_000).reason == "too deep"
    assert time.perf_counter() - t0 < 3


def test_max_depth_stops_descending_without_recursion_errors():
    nested = "<div>" * 150 + "buried text" + "</div>" * 150
    assert extract(page(nested), config=ExtractConfig(max_depth=100)).reason == "too deep"
    assert extract(page(nested), config=ExtractConfig(max_depth=200)).text == "buried text"
    r = extract(page(f"<p>{FILLER}</p>" + nested), config=ExtractConfig(max_depth=50))
    assert r.text == FILLER.strip() and r.reason == ""
    quotes = "<blockquote>" * 195 + "q" + "</blockquote>" * 195  # recursion right up to the limit
    assert extract(page(quotes), config=ExtractConfig(max_depth=200)).text == "> " * 195 + "q"


def test_unclosed_tags_comments_cdata_and_xml_declarations():
    html = ("<?xml version='1.0' encoding='latin-1'?><html><body><p>first<p>second <b>bold<i>both"
            "<!-- a comment --><![CDATA[ cdata junk ]]><div>after\x00\x07 nul</body>")
    r = extract(html)
    assert r.reason == ""
    assert "first" in r.text and "second bold" in r.text and "after nul" in r.text
    assert "comment" not in r.text
    assert extract("<p>lone \ud800 surrogate</p>").text == "lone ? surrogate"


def test_five_megabyte_page_is_linear_time():
    paragraph = f"<div class='c'><p>{FILLER}<a href='#'>link</a></p><ul><li>item</li></ul></div>\n"
    small, big = page(paragraph * 2_400), page(paragraph * 24_000)
    assert len(big) > 5_000_000
    t0 = time.perf_counter()
    r_small = extract(small)
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_big = extract(big)
    t_big = time.perf_counter() - t0
    assert r_big.reason == "" and r_big.text.count("Gradient descent") == 24_000
    assert r_small.text.count("Gradient descent") == 2_400
    assert t_big < 30 * max(t_small, 0.01) and t_big < 20  # 10x the input, not 100x the time


def test_oversized_input_is_set_aside():
    assert extract("<p>" + "a" * 2000, config=ExtractConfig(max_bytes=1000)).reason == "too large"


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_fuzz_random_text_and_bytes_never_raise(data):
    r = extract(data)
    assert isinstance(r, Extraction) and isinstance(r.text, str)
    assert not r.reason.startswith("extractor error"), r.reason
    assert (r.text == "") == (r.reason != "")


TAGS = ["div", "p", "pre", "code", "table", "tr", "td", "th", "ul", "ol", "li", "blockquote", "math",
        "mfrac", "msup", "mi", "script", "nav", "article", "a", "h2", "br", "span"]
ATTRS = ["", " class='post'", " class='katex'", " class='username'", " type='math/tex'", " colspan='3'",
         " class='highlight-python3'", " class='nav'", " style='display:none'", " class='quote'"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TAGS), st.sampled_from(ATTRS), st.booleans(),
                          st.text(alphabet="ab |`$\\<>&\n", max_size=8)), max_size=40))
def test_fuzz_random_tag_soup_never_raises(parts):
    html = "".join(f"<{t}{a}>{s}" if opening else f"</{t}>{s}" for t, a, opening, s in parts)
    r = extract(html)
    assert not r.reason.startswith("extractor error"), r.reason
    assert (r.text == "") == (r.reason != "")


# -- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"max_depth": 0}, "max_depth"), ({"max_depth": 201}, "max_depth"),
    ({"max_link_density": 0}, "max_link_density"), ({"min_block_chars": -1}, "min_block_chars"),
    ({"boilerplate_pattern": "(unclosed"}, "boilerplate_pattern"), ({"drop_tags": {"nav"}}, "drop_tags"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ExtractConfig(**kwargs)


def test_config_takes_command_line_overrides():
    cfg = apply_overrides(ExtractConfig(), ["drop_tags=nav,form", "max_depth=50", "max_link_density=0.6"])
    assert (cfg.drop_tags, cfg.max_depth, cfg.max_link_density) == (("nav", "form"), 50, 0.6)
    html = page(f"<nav><p>Menu text here</p></nav><main><p>{FILLER}</p></main><footer><p>Footer words</p></footer>")
    assert extract(html).text == FILLER.strip()
    assert extract(html, config=cfg).text == FILLER.strip() + "\n\nFooter words"


def test_config_changes_behaviour():
    html = page(f"<div class='promo'><p>{FILLER}</p></div><div><p>{FILLER * 2}</p><p>{FILLER}</p></div>")
    assert extract(html).text.count(FILLER.strip()) == 3
    custom = ExtractConfig(boilerplate_pattern=r"^nothing-matches$")
    assert extract(html, config=custom).text.count(FILLER.strip()) == 4
