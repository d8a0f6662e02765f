"""The toy domain: held-out questions never in training, answers checked by the right oracle."""
from __future__ import annotations

import pytest

from phi4ray.run.errors import ConfigError
from phi4ray.toy.arith import PRIMES, ArithConfig, check_answer, make_problems, worked_solution


def test_splits_are_disjoint_and_mixed():
    train, test = make_problems(400, 0), make_problems(100, 0, split="test")
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert sum(p["answer"] == "prime" for p in train) == 200
    assert len({p["id"] for p in train}) == 400


def test_solutions_pass_their_own_oracle():
    for p in make_problems(200, 1, ArithConfig(prime_share=0.0)):
        assert check_answer(p["solution"], p["answer"])
    assert worked_solution([7, 5, 3], ["+", "-"]) == ("7 + 5 = 12. 12 - 3 = 9. The answer is \\boxed{9}.", 9)


def test_prime_teacher_is_as_noisy_as_configured():
    ps = make_problems(2000, 0, ArithConfig(prime_share=1.0, teacher_accuracy=0.5))
    right = sum(check_answer(p["solution"], "prime") for p in ps) / len(ps)
    assert 0.45 < right < 0.55
    assert check_answer("so \\boxed{97}", "prime") and not check_answer("\\boxed{91}", "prime")
    assert not check_answer("no number", "prime") and 2 in PRIMES and 1 not in PRIMES


def test_config_errors():
    with pytest.raises(ConfigError, match="prime_share"):
        ArithConfig(prime_share=1.5)
    with pytest.raises(ConfigError, match="ops"):
        ArithConfig(ops="/")
