"""The one place for numbers and calculator annotations: what counts as one, how it is read,
written and computed. Where earlier copies of a rule disagreed, the test says which rule won."""

from __future__ import annotations

import ast

import pytest

from cap_app.data.variants import plain_draft
from cap_app.engine.align import numbers_in, split_draft
from cap_app.engine.answers import extract_draft_answer, normalize_answer
from cap_app.engine.arithmetic import (
    ANNOTATION,
    NUMBER,
    SIGNED_NUMBER,
    evaluate,
    evaluate_arithmetic,
    format_number,
    parse_number,
    python_arithmetic,
    same_number,
)


def test_a_calculator_annotation_needs_an_equals_sign():
    assert ANNOTATION.findall("She makes 9 * 2 = $<<9*2=18>>18 a day") == [("9*2", "18")]
    # answers.py used to strip any <<...>>; a calculator annotation always states `expression=result`
    draft = "She has <<pets>> 3 cats and 16 - 3 = <<16-3=13>>13 eggs"
    assert plain_draft(draft) == "She has <<pets>> 3 cats and 16 - 3 = 13 eggs"
    assert split_draft(draft)[0].text == plain_draft(draft)
    assert extract_draft_answer("He sold <<48/2=24>>24 clips in May") == "24"
    assert extract_draft_answer("She keeps <<about 4>> eggs") == "4"  # the draft's own text, not an annotation


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("It costs $1,200, which is 13.50 a month", ["1,200", "13.50"]),
        ("each visit takes .5 hours", [".5"]),
        ("16,0000 cars", ["16", "0000"]),  # a comma only between groups of three (align read "16,000" here)
        ("x2 and 50 m2 on an mp3", ["50"]),  # a digit after a letter belongs to a name or a unit
        ("1.2.3", ["1.2"]),
        ("小明有8个苹果", ["8"]),  # Chinese puts numbers straight after word characters
    ],
)
def test_numbers_in_prose(text, numbers):
    assert NUMBER.findall(text) == numbers


def test_an_answer_may_be_negative_but_a_minus_after_a_digit_subtracts():
    assert SIGNED_NUMBER.findall("It fell to -3, or −4.5") == ["-3", "−4.5"]
    # answers.py used to read "-56" and "-7" here, and "3" from "mp3"
    assert normalize_answer("She spends 8*7-56 hours sleeping.") == "56"
    assert normalize_answer("x+4=32-7") == "7"
    assert normalize_answer("She now has 3000 songs on her mp3 player.") == "3000"
    assert normalize_answer("-1,250.50") == "-1250.5"
    assert normalize_answer("3/4") == "3/4" and normalize_answer("\\frac{8}{4}") == "2"


def test_parse_number_reads_short_texts_and_keeps_whole_numbers_whole():
    assert parse_number("$1,200") == 1200 and isinstance(parse_number("24.0"), int)  # a program says 24, not 24.0
    assert parse_number(" 13.50 ") == 13.5
    assert parse_number("'18'") == 18  # a repr from the trace
    assert parse_number("25%") == 25
    # data/annotations.py raised on text and returned inf for "inf"; align returned None for both
    assert [parse_number(text) for text in (None, "", "abc", "inf", "nan", "1e999")] == [None] * 6


def test_format_number_writes_what_parse_number_reads():
    assert [format_number(value) for value in (24.0, 24, 1 / 3, 2.5, 0.125)] == ["24", "24", "0.33", "2.5", "0.12"]
    for value in (7, 0.5, 12.25, 1000.0):
        assert parse_number(format_number(value)) == value


def test_same_number_allows_the_rounding_the_writer_used():
    assert same_number(10 / 3, 3.33, decimals=2) and not same_number(10 / 3, 3.3, decimals=2)
    assert same_number(0.1 + 0.2, 0.3) and not same_number(10 / 3, 3.33)


def test_evaluate_computes_arithmetic_over_given_names():
    tree = ast.parse("friends + friends / 2 - -1", mode="eval").body
    assert evaluate(tree, {"friends": 48}) == 73
    assert evaluate(ast.parse("7 // 2 + 7 % 2 + 2 ** 3", mode="eval").body) == 12
    assert isinstance(evaluate(ast.parse("6 * 4", mode="eval").body), int)
    with pytest.raises(KeyError):  # a corruption that skips a step leaves a later step's name undefined
        evaluate(tree, {})
    with pytest.raises(ValueError):  # names only when the caller gives them
        evaluate(tree)


@pytest.mark.parametrize("source", ["len('abc')", "(1).real", "1 < 2", "True + 1", "'a' * 3", "[1][0]", "2 ** 65"])
def test_evaluate_refuses_anything_but_arithmetic(source):
    with pytest.raises(ValueError):
        evaluate(ast.parse(source, mode="eval").body)


@pytest.mark.parametrize("source", ["1 / 0", "5 % 0", "1e308 * 10", "(-8) ** 0.5", "(10 ** 60) ** 6"])
def test_evaluate_refuses_results_that_are_no_finite_real_number(source):
    # data/annotations.py refused a non-finite result; align's evaluator returned inf
    with pytest.raises(ArithmeticError):
        evaluate(ast.parse(source, mode="eval").body)


def test_written_calculations_are_read_as_prose_writes_them():
    assert evaluate_arithmetic("(16 - 3) x 2") == 26
    assert evaluate_arithmetic("$1,200 / 4") == 300
    assert evaluate_arithmetic("50% * 8") == 4
    assert evaluate_arithmetic("12 ÷ 4 × 3") == 9
    assert python_arithmetic("$1,200 x 2%") == "1200 * (2 / 100)"
    # align dropped every comma ("12,50" -> 1250); the faithful builder only thousands separators
    assert evaluate_arithmetic("12,50 * 2") is None and python_arithmetic("12,50 * 2") is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "import os",
        "2 ** 100000",
        "9 ** 9 ** 9",
        "1 / 0",
        "1e308 * 10",
        "apples * 2",
        "(" * 500 + "1" + ")" * 500,
        "1\0",
    ],
)
def test_written_calculations_that_are_not_arithmetic_have_no_value(text):
    assert evaluate_arithmetic(text) is None and python_arithmetic(text) is None


def test_alignment_reads_the_same_numbers():
    assert numbers_in("Dawn made $3,6000.00 in twelve hours") == [3, 6000, 12]
