"""The words of the built-in suites' generators (phi4ray.evals.generators): the arith word
problems per language with the formula each one's answer follows, the names they use, and the
nonsense words and properties of the logic questions."""
from __future__ import annotations

# the templates say "she": the names match
NAMES = {"en": ["Maria", "Aisha", "Lena", "Amara", "Yuki", "Priya"], "de": ["Anna", "Lea", "Mia", "Clara"],
          "fr": ["Camille", "Chloé", "Léa", "Inès"], "es": ["Lucía", "Sofía", "Elena", "Carmen"]}

# Each template: text per language, and a formula over the named values that gives the answer. The
# generator computes answers in code; tests re-derive them from the formula and check that every
# value appears in the prompt, so a template whose text and arithmetic disagree is caught.
ARITH_TEXT = {
    "change": {
        "en": "{name} buys {a} notebooks at ${p} each and {b} pens at ${q} each. She pays with a ${bill} bill. "
              "How much change, in dollars, does she get?",
        "de": "{name} kauft {a} Hefte zu je {p} Euro und {b} Stifte zu je {q} Euro. Sie bezahlt mit einem "
              "{bill}-Euro-Schein. Wie viel Wechselgeld bekommt sie in Euro?",
        "fr": "{name} achète {a} cahiers à {p} euros chacun et {b} stylos à {q} euros chacun. Elle paie avec un "
              "billet de {bill} euros. Combien d'euros lui rend-on ?",
        "es": "{name} compra {a} cuadernos a {p} euros cada uno y {b} bolígrafos a {q} euros cada uno. Paga con "
              "un billete de {bill} euros. ¿Cuántos euros recibe de cambio?"},
    "marbles": {
        "en": "{name} has {n} marbles. She gives {u1}/{k1} of them to her brother, then {u2}/{k2} of the "
              "remaining marbles to a friend. How many marbles does she have left?",
        "de": "{name} hat {n} Murmeln. Sie gibt {u1}/{k1} davon ihrem Bruder und dann {u2}/{k2} der übrigen "
              "Murmeln einer Freundin. Wie viele Murmeln hat sie noch?",
        "fr": "{name} a {n} billes. Elle donne {u1}/{k1} de ses billes à son frère, puis {u2}/{k2} des billes "
              "restantes à une amie. Combien de billes lui reste-t-il ?",
        "es": "{name} tiene {n} canicas. Le da {u1}/{k1} de ellas a su hermano y luego {u2}/{k2} de las canicas "
              "restantes a una amiga. ¿Cuántas canicas le quedan?"},
    "fractions": {
        "en": "Compute {a}/{b} + {c}/{d} - {e}/{f}. Give the answer as a fraction in lowest terms."},
    "speed": {
        "en": "A cyclist rides {d1} km at {v1} km/h and then {d2} km at {v2} km/h. What is her average speed for "
              "the whole ride, in km/h? Give an exact answer.",
        "de": "Eine Radfahrerin fährt {d1} km mit {v1} km/h und danach {d2} km mit {v2} km/h. Wie hoch ist ihre "
              "Durchschnittsgeschwindigkeit für die ganze Fahrt in km/h? Gib das exakte Ergebnis an."},
    "tank": {
        "en": "A tank holds {cap} liters. A pipe fills it at {r} liters per minute while a leak drains {s} liters "
              "per minute. Starting empty, how many minutes does it take to fill the tank?",
        "fr": "Une cuve contient {cap} litres. Un tuyau la remplit à raison de {r} litres par minute pendant "
              "qu'une fuite en retire {s} litres par minute. Partant d'une cuve vide, combien de minutes faut-il "
              "pour la remplir ?"},
    "discount": {
        "en": "A jacket costs ${price}. It is discounted by {d}%, and then a sales tax of {t}% is added to the "
              "discounted price. What is the final price in dollars?",
        "es": "Una chaqueta cuesta {price} euros. Tiene un descuento del {d}% y luego se añade un impuesto del "
              "{t}% al precio rebajado. ¿Cuál es el precio final en euros?"},
    "workers": {
        "en": "{w1} workers can paint {h1} houses in {t1} days. Working at the same rate, how many days do {w2} "
              "workers need to paint {h2} houses? Give an exact answer."},
    "expression": {
        "en": "Evaluate ({a} + {b}) * {c} - {d} / {e}. Give an exact answer."},
    "ages": {
        "en": "A mother is {k} times as old as her son. In {y} years she will be {m} times as old as he will be "
              "then. How old is the son now?",
        "de": "Eine Mutter ist {k}-mal so alt wie ihr Sohn. In {y} Jahren wird sie {m}-mal so alt sein wie er "
              "dann. Wie alt ist der Sohn jetzt?"},
}
ARITH_FORMULAS = {
    "change": "bill - (a * p + b * q)",
    "marbles": "n * (1 - u1 / k1) * (1 - u2 / k2)",
    "fractions": "a / b + c / d - e / f",
    "speed": "(d1 + d2) / (d1 / v1 + d2 / v2)",
    "tank": "cap / (r - s)",
    "discount": "price * (100 - d) / 100 * (100 + t) / 100",
    "workers": "t1 * h2 / h1 * w1 / w2",
    "expression": "(a + b) * c - d / e",
    "ages": "y * (m - 1) / (k - m)",
}

# made-up words, so a syllogism can only be answered by its logic, never by world knowledge
NONSENSE = ["blickets", "daxes", "wugs", "zorbs", "feps", "toves", "glims", "snarks", "quobs", "vants"]
PROPERTIES = ["glorp", "frim", "tazzy", "plonk", "vexed", "zimmed"]
