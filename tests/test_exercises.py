from course_lib.exercises import EXERCISES, check, is_right, solution


def test_every_chapter_has_two_exercises():
    for chapter in range(9):
        assert sum(key.startswith(f"{chapter}.") for key in EXERCISES) >= 2


def test_unanswered_is_reported_not_failed(capsys):
    check("2.2", None)
    assert is_right("2.2", None) is False
    assert "not answered yet" in capsys.readouterr().out


def test_right_and_wrong_answers_say_why(capsys):
    check("2.2", 50256)
    check("2.2", 0)
    out = capsys.readouterr().out
    assert "right" in out and "not yet" in out and "Hint" in out


def test_checks_with_context():
    matrix = [[40, 10], [5, 45]]
    assert is_right("4.1", 0.85, matrix=matrix)
    assert not is_right("4.1", 0.5, matrix=matrix)
    assert is_right("7.1", 45 / 55, matrix=matrix)
    assert not is_right("7.1", 45 / 50, matrix=matrix)  # that is recall
    assert is_right("5.1", 35, n_examples=100, batch_size=16, epochs=5, accum=1)  # 7 batches x 5
    assert is_right("5.1", 6, n_examples=100, batch_size=16, epochs=3, accum=4)
    assert not is_right("5.1", 30, n_examples=100, batch_size=16, epochs=5, accum=1)


def test_solutions_print(capsys):
    solution("3.1")
    assert capsys.readouterr().out.startswith("Solution 3.1: b")


def test_generation_exercises_check_without_giving_the_answer(capsys):
    row = {"labels": [-100] * 37 + [5, 6, 2]}
    assert is_right("9.1", 37, row=row) and not is_right("9.1", 40, row=row)
    check("9.1", 40, row=row)
    assert "37" not in capsys.readouterr().out  # a wrong answer gets a hint, never the number
    for spelling in ("coverage", " Coverage ", "attribute coverage"):
        assert is_right("9.2", spelling)
    check("9.2", "BLEU")
    assert "coverage" not in capsys.readouterr().out.lower()
    assert not is_right("9.3", "same", measured={True: 40.0})  # only one run measured so far
    assert is_right("9.3", "Same", measured={True: 40.0, False: 41.5})
    assert is_right("9.3", "masked", measured={True: 45.0, False: 40.0})
    check("9.3", "unmasked", measured={True: 45.0, False: 40.0})
    out = capsys.readouterr().out
    assert "not yet" in out and "'masked'" not in out.split("—", 1)[1]
