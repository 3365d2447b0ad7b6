"""Ordinary programs must run and give the right answer: programs built from GSM8K train's
calculator annotations, and hand-written programs in the styles models write."""

from __future__ import annotations

import math

import pytest

from benchmarks.sandbox_bench import answer_matches, gsm8k_programs, program_from_solution
from cap_app.sandbox import run_program

CORPUS = gsm8k_programs(150)


def test_corpus_programs_are_the_data_builders_named_programs():
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"
    program, expected = program_from_solution(question, solution)
    assert program == "friends = 48\nclips_may = friends / 2\nclips = friends + clips_may\nprint(clips)\n"
    assert expected == 72
    assert program_from_solution(question, solution.replace("#### 72", "#### 70")) is None  # answer not reproduced


@pytest.mark.parametrize("index", range(0, len(CORPUS), 10))
def test_gsm8k_annotation_programs_give_the_reference_answer(zygote_pids, index):
    for program, expected in CORPUS[index : index + 10]:
        result = run_program(program, trace=index % 20 == 0)
        assert result.status == "ok", (program, result.error)
        assert answer_matches(result.answer, expected), (program, result.answer, expected)


MODEL_STYLE_PROGRAMS = {
    "solution_function": ("def solution():\n    eggs = 16 - 3 - 4\n    return eggs * 2\n", 18),
    "answer_variable": ("bolts = 2\nwhite = bolts / 2\nanswer = bolts + white\n", 3),
    "loop_and_list": ("prices = [12, 7, 3]\ntotal = 0\nfor p in prices:\n    total += p * 2\nprint(total)\n", 44),
    "fstring_money": ("cost = 80000 + 50000\nvalue = 80000 * 2.5\nprint(f'{value - cost:.0f}')\n", 70000),
    "format_method": ("rate = 12 / 60\nprint('{:.2f}'.format(rate * 50))\n", 10),
    "fractions": ("from fractions import Fraction\nshare = Fraction(3, 4) * 48\nprint(share)\n", 36),
    "decimal_money": ("from decimal import Decimal\nprint(Decimal('19.99') * 3)\n", 59.97),
    "math_ceil": ("import math\nboxes = math.ceil(250 / 12)\nprint(boxes)\n", 21),
    "sympy_solve": (
        "from sympy import symbols, Eq, solve\nx = symbols('x')\nprint(solve(Eq(2 * x + 10, 30), x)[0])\n",
        10,
    ),
    "dict_counts": ("ages = {'a': 10, 'b': 12}\nages['c'] = ages['a'] + 5\nprint(sum(ages.values()))\n", 37),
    "while_loop": ("n = 0\nsaved = 0\nwhile saved < 100:\n    saved += 15\n    n += 1\nprint(n)\n", 7),
    "comprehension": ("print(sum([x * x for x in range(1, 6) if x % 2 == 1]))\n", 35),
    "nested_functions": (
        "def area(w, h):\n    return w * h\n"
        "def cost(w, h, price):\n    return area(w, h) * price\n"
        "print(cost(4, 5, 3))\n",
        60,
    ),
    "tuple_unpacking": ("a, (b, c) = 1, (2, 3)\nfor x, y in [(a, b), (b, c)]:\n    a = a + x * y\nprint(a)\n", 9),
    "augmented_items": (
        "sold = {'mon': 3, 'tue': 4}\nfor day in sold:\n    sold[day] *= 2\n"
        "sold['mon'] += 1\nprint(sum(sold.values()))\n",
        15,
    ),
    "counter": ("from collections import Counter\nc = Counter([1, 1, 2, 3, 3, 3])\nprint(c.most_common(1)[0][1])\n", 3),
    "statistics": ("import statistics\nprint(statistics.mean([90, 85, 95]))\n", 90),
    "dates": ("from datetime import date\nprint((date(2024, 3, 1) - date(2024, 2, 1)).days)\n", 29),
    "round_percent": ("price = 120\ndiscount = price * 25 / 100\nprint(round(price - discount, 2))\n", 90),
    "integer_division": ("cookies = 50\nper_bag = 7\nprint(cookies // per_bag, cookies % per_bag)\n", 1),
    "sorted_max": ("scores = [3, 9, 4]\nprint(max(scores) - min(scores), sorted(scores)[1])\n", 4),
    "lambda_reduce": ("from functools import reduce\nprint(reduce(lambda a, b: a * b, [2, 3, 7]))\n", 42),
    "string_methods": ("words = 'one two three'.split()\nprint(len(words) * 2)\n", 6),
    "walrus": ("if (n := 4 * 3) > 10:\n    print(n)\n", 12),
    "zip_enumerate": (
        "total = 0\nfor i, (a, b) in enumerate(zip([1, 2], [3, 4])):\n    total += i + a * b\nprint(total)\n",
        12,
    ),
    "try_except": ("try:\n    rate = 10 / 0\nexcept ZeroDivisionError:\n    rate = 0\nprint(rate + 5)\n", 5),
    "printed_many_lines": ("print('Step 1: 3 apples')\nprint('Answer:')\nprint(3 * 4)\n", 12),
}


@pytest.mark.parametrize("name", sorted(MODEL_STYLE_PROGRAMS))
def test_model_style_programs_run(zygote_pids, name):
    program, expected = MODEL_STYLE_PROGRAMS[name]
    result = run_program(program)
    assert result.status == "ok", result.error
    assert math.isclose(float(result.answer.split()[-1]), expected), result.answer
