"""IFEval instruction checks: our hand-written checkers against lm-evaluation-harness's own
(lm_eval.tasks.ifeval, Google's IFEval code), on the same responses, and what ships now.

    .venv/bin/python benchmarks/ifeval_checks.py [--per-kind 30] [--seed 0] [--show 3] [--repeats 3]

Three judges: "hand-written" is phi4ray/evals/ifeval.py at BASELINE_COMMIT (loaded from git: every
check written by us, language by fastText lid.176); "lm-eval" is lm-eval 0.4.13's checker for the
same instruction, strict as its `test_instruction_following_strict` (`response.strip() and
checker.check_following(response)`); "shipped" is `phi4ray.evals.ifeval.check` now (lm-eval's
checkers, except the case and language checks, which keep fastText).

For every check type, `--per-kind` responses are generated (seeded) around the instruction's
edges: counts one below, at and above the bound, keywords as whole words, inside other words and
in other cases, bullets written with *, - and **, dividers at the ends and twice in a row, empty
highlights and titles, fenced and broken JSON, end phrases followed by quotes or words, postscript
markers spelled several ways, text in seven languages (sentences written here) and in mixed or
too-short form for the case and language checks, whose truth the generator knows. Printed:
agreement per check type, time per check (median, after a warm-up pass), each side's one-off
import cost, who is right on the case and language checks, disagreements (`--show` per type), how
often lm-eval's verdict changes between `--repeats` runs of the same input (lm-eval does not seed
langdetect), and the instruction sentences that differ from lm-eval's.

lm-eval's instructions_util calls nltk.download("punkt_tab") at import when the data is absent; no
network is allowed at run time, so the import runs with nltk.download replaced by a refusal. None
of the checks here needs punkt: only NumberOfSentences and CapitalWordFrequencyChecker tokenise
with it, and our ifeval.py has neither.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline import load_baseline  # noqa: E402
from phi4ray.evals import ifeval  # noqa: E402

BASELINE_COMMIT = "63284cfb342a9ea252fe4055f6c44c8e874d31df"  # the last commit with our hand-written checkers

# our check type -> lm-eval's instruction id (the shipped table, plus the three we keep our detector for)
LM_EVAL_IDS = {**ifeval.LM_EVAL_IDS, "lowercase": "change_case:english_lowercase",
               "uppercase": "change_case:english_capital", "response_language": "language:response_language"}

TEXTS = {  # a few sentences per language, written here: no corpus download
    "en": ["The river runs quietly past the old mill every morning.", "We planted tomatoes and beans in the garden this spring.",
           "Most people walk to work when the weather is pleasant.", "The library opens at nine and closes late on Fridays.",
           "A good map helps travellers find their way through the hills.", "Our neighbours bake bread on Sunday afternoons."],
    "de": ["Heute ist das Wetter sehr schön, und wir gehen im Park spazieren.",
           "Der Zug nach Berlin fährt jeden Morgen um acht Uhr ab.",
           "Meine Großmutter backt am Wochenende einen leckeren Kuchen.",
           "Die Kinder spielen im Garten, während es draußen regnet.",
           "Wir haben im Sommer eine lange Reise durch die Berge gemacht.",
           "Das Museum zeigt eine neue Ausstellung über alte Schiffe."],
    "fr": ["Aujourd'hui il fait beau et nous allons nous promener au parc.",
           "Le train pour Paris part tous les matins à huit heures.",
           "Ma grand-mère prépare un délicieux gâteau le dimanche.",
           "Les enfants jouent dans le jardin pendant qu'il pleut dehors.",
           "Nous avons fait un long voyage à travers les montagnes cet été.",
           "Le musée présente une nouvelle exposition sur les bateaux."],
    "es": ["Hoy hace buen tiempo y vamos a pasear por el parque.", "El tren a Madrid sale todas las mañanas a las ocho.",
           "Mi abuela prepara un pastel delicioso los domingos.", "Los niños juegan en el jardín mientras llueve afuera.",
           "Este verano hicimos un largo viaje por las montañas.",
           "El museo presenta una nueva exposición sobre barcos antiguos."],
    "it": ["Oggi il tempo è bello e andiamo a passeggiare nel parco.", "Il treno per Roma parte ogni mattina alle otto.",
           "Mia nonna prepara una torta deliziosa la domenica.", "I bambini giocano in giardino mentre fuori piove.",
           "Quest'estate abbiamo fatto un lungo viaggio tra le montagne.",
           "Il museo presenta una nuova mostra sulle navi antiche."],
    "pt": ["Hoje o tempo está bom e vamos passear no parque.",
           "O comboio para Lisboa parte todas as manhãs às oito horas.",
           "A minha avó faz um bolo delicioso aos domingos.", "As crianças brincam no jardim enquanto chove lá fora."],
    "nl": ["Vandaag is het mooi weer en we gaan wandelen in het park.",
           "De trein naar Amsterdam vertrekt elke ochtend om acht uur.",
           "Mijn oma bakt op zondag een heerlijke taart.", "De kinderen spelen in de tuin terwijl het buiten regent."],
}
WORDS = ("river garden morning library travel bridge harvest compass lantern orbit signal meadow engine puzzle "
         "canvas anchor festival thunder journey bread market window forest summer winter music story").split()


def _prose(r: random.Random, n_sentences: int, lang: str = "en") -> str:
    return " ".join(r.choice(TEXTS[lang]) for _ in range(n_sentences))


def _words(r: random.Random, n: int) -> str:
    extras = ["don't", "well-known", "2024", "café", "naïve", "e-mail", "A.I.", "x_y"]
    return " ".join(r.choice(WORDS + extras) if r.random() < 0.2 else r.choice(WORDS) for _ in range(n))


def _case(kind: str, r: random.Random) -> tuple[str, dict]:
    """One (response, spec) for a check type, drawn around the instruction's edges. The case and
    language checks also leave the truth in LABELS (None where nobody could say)."""
    spec = {"type": kind, **ifeval._params(kind, r)}
    if kind == "word_count":
        n = spec["num_words"] + r.choice([-30, -2, -1, 0, 1, 2, 30])
        return _words(r, max(n, 1)), spec
    if kind == "keyword_frequency":
        k, f = spec["keyword"], spec["frequency"]
        spellings = [k, k.upper(), k.capitalize(), f"{k}s", f"un{k}ed"]
        parts = [_prose(r, 1)] + [f"The {r.choice(spellings)} matters." for _ in range(f + r.choice([-1, -1, 0, 1]))]
        r.shuffle(parts)
        return " ".join(parts), spec
    if kind == "include_keywords":
        kws = spec["keywords"]
        used = [w if r.random() < 0.5 else w.upper() for w in kws if r.random() < 0.75]
        return _prose(r, 2) + " " + " and ".join(f"the {w}" for w in used) + ".", spec
    if kind == "forbidden_words":
        w = r.choice(spec["forbidden_words"])
        tail = r.choice([f"It was {w} fine.", f"It was {w.upper()}!", f"Every{w} counts.", f"It was ({w}).", "", f"{w}ly so."])
        return _prose(r, 2) + " " + tail, spec
    if kind == "bullet_count":
        n = spec["num_bullets"] + r.choice([-1, 0, 0, 1])
        marks = ["* ", "- ", "  * ", "*", "** ", "1. ", "-- ", "+ "]
        lines = [f"{r.choice(marks) if r.random() < 0.3 else r.choice(['* ', '- '])}{_words(r, 4)}" for _ in range(max(n, 0))]
        extra = r.choice(["", "\n---", "\n**Bold line**", "\n*italic line*"])
        return "Here is the list:\n" + "\n".join(lines) + extra, spec
    if kind == "paragraph_count":
        n = spec["num_paragraphs"] + r.choice([-1, 0, 0, 1])
        sep = r.choice(["\n\n***\n\n", "\n***\n", " *** ", "\n\n* * *\n\n", "\n\n"])
        body = sep.join(_prose(r, 2) for _ in range(max(n, 1)))
        return r.choice(["", "***\n"]) + body + r.choice(["", "\n***", "\n***\n***\nextra"]), spec
    if kind == "highlight_count":
        forms = ["*{w}*", "**{w}**", "* *", "**", "*{w} and {w}*", "***{w}***", "*{w}\n{w}*"]
        n = spec["num_highlights"] + r.choice([-1, 0, 1])
        hs = [r.choice(forms).format(w=r.choice(WORDS)) for _ in range(max(n, 0))]
        return _prose(r, 1) + " " + " then ".join(hs) + ".", spec
    if kind == "placeholder_count":
        forms = ["[name]", "[address]", "[]", "[[nested]]", "[link](http://x.y)", "[ ]", "[a\nb]"]
        n = spec["num_placeholders"] + r.choice([-1, 0, 1])
        return "Dear " + ", ".join(r.choice(forms) for _ in range(max(n, 0))) + ". " + _prose(r, 1), spec
    if kind == "title":
        t = r.choice(["<<A Day Outside>>", "<<>>", "<< >>", "<<Two\nLines>>", "<<<Triple>>>", "<Single>", "Title: Plain",
                      "<<Ünïcode>>"])
        return r.choice([f"{t}\n\n", f"Intro. {t} "]) + _prose(r, 2), spec
    if kind == "json_format":
        obj = {"topic": r.choice(WORDS), "points": [1, 2], "ok": True}
        body = r.choice([json.dumps(obj), json.dumps(obj, indent=2), "{'a': 1}", '{"a": 1,}', "[]", "3", '"text"',
                         json.dumps(obj) + " trailing words", "null"])
        return r.choice(["{}", "```json\n{}\n```", "```\n{}\n```", "```JSON\n{}\n```", "Here: {}", "  {}  "]).format(body), spec
    if kind == "end_phrase":
        p = spec["end_phrase"]
        return _prose(r, 2) + " " + r.choice([p, p + '"', p + "  \n", p.lower(), p + " Bye.", p.rstrip("?.") + "!",
                                                 '"' + p + '"', p + "."]), spec
    if kind == "postscript":
        marks = ["P.S.", "P.P.S", "p.s.", "PS", "P. S.", "P.P.S.", "p. p. s", "Postscript:", "P.S"]
        return _prose(r, 2) + r.choice(["\n\n", " ", "\n   "]) + r.choice(marks) + " " + _prose(r, 1), spec
    if kind == "quotation":
        body = _prose(r, 2)
        return r.choice([f'"{body}"', f'  "{body}"  ', f'"{body}', f"“{body}”", f"'{body}'", '"', '""', f'"{body}"\n']), spec
    if kind == "no_comma":
        body = _prose(r, 2)
        return r.choice([body, body.replace(" and ", ", and "), body + " yes, no", body + " one，two",
                         body.replace(".", ";")]), spec
    if kind in ("lowercase", "uppercase"):
        lang, form = r.choice(["en", "en", "en", "de", "fr", "es"]), r.random()
        if form < 0.6:
            body, english = _prose(r, r.randint(1, 3), lang), lang == "en"
        elif form < 0.8:
            body, english = r.choice(["ok", "yes 42", "hi there", "thank you"]), True
        else:
            body, english = _prose(r, 1) + " " + _prose(r, 1, "de"), False
        body = body.lower() if kind == "lowercase" else body.upper()
        swapped = False
        if r.random() < 0.25:  # one letter in the other case
            i = r.choice([j for j, c in enumerate(body) if c.isalpha()])
            body, swapped = body[:i] + body[i].swapcase() + body[i + 1:], True
        LABELS[body, kind] = english and not swapped
        return body, spec
    if kind == "response_language":
        lang, other, form = r.choice(list(TEXTS)), r.choice(list(TEXTS)), r.random()
        if form < 0.6:
            body, truth = _prose(r, r.randint(1, 3), lang), lang == spec["language"]
        elif form < 0.8:
            body, truth = _prose(r, 1, lang) + " " + _prose(r, 1, other), lang == other == spec["language"]
        else:
            short = {"OK": None, "Danke!": "de", "Merci": "fr", "Sì": "it", "12 + 30 = 42": None, "Hola amigo": "es"}
            body = r.choice(list(short))
            truth = None if short[body] is None else short[body] == spec["language"]
        LABELS[body, kind] = truth
        return body, spec
    raise ValueError(kind)


LABELS: dict[tuple[str, str], bool | None] = {}


def cases(per_kind: int, seed: int) -> list[tuple[str, dict]]:
    r = random.Random(seed)
    return [_case(kind, r) for kind in ifeval.CHECKS for _ in range(per_kind)]


def load_lm_eval():
    """lm-eval's registry, imported without its nltk.download (seconds it took)."""
    import nltk  # deferred: only to disarm the download lm-eval's import would start

    start, download = time.perf_counter(), nltk.download
    nltk.download = lambda *a, **k: False
    try:  # it prints "Downloaded punkt_tab on rank 0" whatever the download did
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_registry
    finally:
        nltk.download = download
    logging.getLogger("lm_eval.tasks.ifeval.instructions").setLevel(logging.CRITICAL)  # "Unable to detect language"
    return instructions_registry, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-kind", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="disagreements listed per check type")
    ap.add_argument("--repeats", type=int, default=3, help="runs of lm-eval's checker, for run-to-run flips")
    args = ap.parse_args()

    hand = load_baseline(BASELINE_COMMIT, "phi4ray/evals/ifeval.py")
    if hand is None:
        sys.exit(f"needs the git history with {BASELINE_COMMIT[:8]} (the hand-written checkers)")
    start = time.perf_counter()
    hand.detect_language("warm up the bundled fastText model")
    hand_import = time.perf_counter() - start
    registry, lm_import = load_lm_eval()
    print(f"first-use cost: hand-written {hand_import:.2f}s (fastText lid.176 load), lm-eval {lm_import:.2f}s "
          "(import lm_eval.tasks.ifeval: lm_eval.tasks, nltk, langdetect)")

    def lm_checker(spec):
        iid = LM_EVAL_IDS[spec["type"]]
        inst = registry.INSTRUCTION_DICT[iid](iid)
        description = inst.build_description(**{k: v for k, v in spec.items() if k != "type"})
        return inst, description

    def theirs(resp, spec):
        inst, _ = lm_checker(spec)
        return bool(resp.strip()) and bool(inst.check_following(resp))

    data = cases(args.per_kind, args.seed)
    judges = {"hand-written": hand.check, "lm-eval": theirs, "shipped": ifeval.check}
    verdicts, times = {}, {}
    for name, fn in judges.items():
        for resp, spec in data:  # warm-up: regexes compiled, language models loaded
            fn(resp, spec)
        out, ts = [], defaultdict(list)
        for resp, spec in data:
            t = time.perf_counter()
            out.append(fn(resp, spec))
            ts[spec["type"]].append(time.perf_counter() - t)
        verdicts[name], times[name] = out, ts
    flips = Counter()
    for _ in range(args.repeats - 1):
        for (resp, spec), first in zip(data, verdicts["lm-eval"]):
            flips[spec["type"]] += theirs(resp, spec) != first

    print(f"\n{len(data)} responses ({args.per_kind} per check type, seed {args.seed}); hand-written: "
          f"phi4ray/evals/ifeval.py at {BASELINE_COMMIT[:8]}; shipped: phi4ray.evals.ifeval now. "
          "Agreement of verdicts; T/F: how many each calls followed / not; µs: median per check")
    print(f"\n{'check type':18s} {'lm-eval id':46s} {'hand=lm':>8s} {'ship=lm':>8s} {'ship=hand':>9s} "
          f"{'hand T/F':>9s} {'lm T/F':>7s} {'hand µs':>8s} {'lm µs':>8s} {'ship µs':>8s} {'lm flips':>9s}")
    per = defaultdict(list)
    for k, (resp, spec) in enumerate(data):
        per[spec["type"]].append((resp, spec, *(verdicts[n][k] for n in judges)))
    totals = Counter()
    for kind, rows in per.items():
        agree = {"hl": sum(h == b for *_, h, b, _ in rows), "sl": sum(x == b for *_, b, x in rows),
                 "sh": sum(x == h for *_, h, _, x in rows)}
        totals.update(agree)
        med = {n: statistics.median(times[n][kind]) * 1e6 for n in judges}
        print(f"{kind:18s} {LM_EVAL_IDS[kind]:46s} {agree['hl']:3d}/{len(rows):<4d} {agree['sl']:3d}/{len(rows):<4d} "
              f"{agree['sh']:4d}/{len(rows):<4d} {sum(r[2] for r in rows):4d}/{sum(not r[2] for r in rows):<4d} "
              f"{sum(r[3] for r in rows):3d}/{sum(not r[3] for r in rows):<3d} {med['hand-written']:8.1f} "
              f"{med['lm-eval']:8.1f} {med['shipped']:8.1f} {flips[kind]:5d}/{len(rows) * (args.repeats - 1)}")
    n = len(data)
    print(f"{'all':18s} {'':46s} {totals['hl']:3d}/{n:<4d} {totals['sl']:3d}/{n:<4d} {totals['sh']:4d}/{n}")

    print("\nright by the generator's truth (case and language checks; responses nobody could judge left out):")
    for kind in ("lowercase", "uppercase", "response_language"):
        rows = [(LABELS[resp, kind], h, b, x) for resp, spec, h, b, x in per[kind] if LABELS.get((resp, kind)) is not None]
        print(f"  {kind:18s} " + "  ".join(f"{name} {sum(t == v[i] for t, *v in rows):3d}/{len(rows)}"
                                          for i, name in enumerate(judges)))

    print(f"\nhand-written vs lm-eval disagreements (up to {args.show} per check type):")
    for kind, rows in per.items():
        for resp, spec, h, b, _ in [row for row in rows if row[2] != row[3]][:args.show]:
            params = {k: v for k, v in spec.items() if k != "type"}
            print(f"  {kind:18s} hand={h!s:5s} lm-eval={b!s:5s} {params} {resp[:100]!r}")
    print("\ninstruction sentences (ifeval.describe) that differ from lm-eval's build_description:")
    for kind, rows in per.items():
        spec = rows[0][1]
        ours_text, lm_text = ifeval.describe(spec), lm_checker(spec)[1]
        same = sum(ifeval.describe(sp) == lm_checker(sp)[1] for _, sp, *_ in rows)
        if ours_text != lm_text:
            print(f"  {kind} ({same}/{len(rows)} the same): ours {ours_text!r}\n"
                  f"  {' ' * len(kind)}  lm-eval {lm_text!r}")


if __name__ == "__main__":
    main()
