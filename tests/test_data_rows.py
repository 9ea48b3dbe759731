"""Pure tests of imported-row handling: validation, column mapping, answer kinds, splitting,
hashing and the contamination check, on hand-made rows (no files except where a path is the
point)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from r1vflow.config.data_source import ColumnMap
from r1vflow.data.contamination import ContaminationIndex, EvalItem, find_contamination
from r1vflow.data.files import FilePolicy
from r1vflow.data.rows import (
    ImageRef,
    RowError,
    answer_kind,
    answer_text,
    decode_image,
    derived_pair,
    montage,
    normalise_question,
    parse_choices,
    parse_row,
    pixel_hash,
    solution_reasoning,
)
from r1vflow.data.splits import SplitGuard, carve

COLUMNS = ColumnMap()


def png(colour=(255, 0, 0), size=(4, 3), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def row(**overrides):
    base = {"image": {"bytes": png(), "path": None}, "question": "How many?", "answer": "3"}
    return {**base, **overrides}


# ----------------------------------------------------------------------------- rows
def test_default_columns_need_no_mapping():
    parsed = parse_row(row(solution="one, two, three", id=7), COLUMNS, None)
    assert (parsed.id, parsed.question, parsed.answer, parsed.answer_kind) == \
        ("7", "How many?", "3", "number")
    assert parsed.reasoning == "one, two, three"
    assert parsed.images == (ImageRef(data=png()),)


def test_mapped_columns_are_read_and_defaults_ignored():
    columns = ColumnMap(question="problem", answer="gold", image="img", solution="cot")
    raw = {"problem": "Sum?", "gold": 12, "img": "pics/a.png", "cot": "5 + 7",
           "question": "ignored", "answer": "ignored"}
    parsed = parse_row(raw, columns, Path("/data"))
    assert (parsed.question, parsed.answer, parsed.reasoning) == ("Sum?", "12", "5 + 7")
    assert parsed.images == (ImageRef(path=Path("/data/pics/a.png")),)


@pytest.mark.parametrize(("raw", "reason"), [
    ({"question": "q", "answer": "1"}, "missing image (column 'image' or 'images')"),
    (row(question=None), "missing question (column 'question')"),
    (row(question="   "), "empty question (column 'question')"),
    (row(answer=""), "empty answer (column 'answer')"),
    (row(answer=["3"]), "answer (column 'answer') must be text or a number, got list"),
    (row(answer=True), "answer (column 'answer') must be text or a number, got bool"),
    (row(question=5), "question (column 'question') must be text, got int"),
    (row(answer="<answer>3</answer>"), "answer contains response tags"),
    (row(chosen="<think>a</think><answer>3</answer>"), "half a preference pair: 'rejected'"),
    (row(chosen="same", rejected="same"), "chosen and rejected responses are identical"),
    (row(image=17), "image (column 'image'): expected a path, bytes or a {bytes, path} struct"),
    (row(image=None, images=[]), "no image (column 'images' is an empty list)"),
    (row(id=[1]), "id (column 'id') must be non-empty text or an integer"),
])
def test_bad_rows_name_the_problem(raw, reason):
    with pytest.raises(RowError) as err:
        parse_row(raw, COLUMNS, Path("/data"))
    assert reason in str(err.value)


def test_several_images_from_structs_and_paths():
    raw = row(image=None, images=[{"bytes": png(), "path": "x.png"},
                                  {"bytes": None, "path": "b.png"}, "c/d.jpg"])
    parsed = parse_row(raw, COLUMNS, Path("/root"))
    assert parsed.images == (ImageRef(data=png()), ImageRef(path=Path("/root/b.png")),
                             ImageRef(path=Path("/root/c/d.jpg")))


def test_relative_image_without_a_folder_is_an_error():
    with pytest.raises(RowError, match="relative path 'a.png' but the data has no folder"):
        parse_row(row(image="a.png"), COLUMNS, None)


@pytest.mark.parametrize(("answer", "kind"), [
    ("12", "number"), ("-3.5", "number"), ("1,000", "number"), ("45%", "number"),
    ("1e-3", "number"), ("\\frac{1}{2}", "latex"), ("x^2", "latex"), ("$\\pi$", "latex"),
    ("Paris", "text"), ("1,00", "text"), ("B", "text"),
])
def test_answer_kinds_without_options(answer, kind):
    assert answer_kind(answer, None) == (answer, kind)


def test_choice_answers_are_letters_or_option_text():
    choices = ("cat", "dog", "bird")
    assert answer_kind("b", choices) == ("B", "choice")
    assert answer_kind("(C)", choices) == ("C", "choice")
    assert answer_kind("Dog", choices) == ("B", "choice")
    with pytest.raises(RowError, match="neither an option letter A-C nor the text"):
        answer_kind("D", choices)


def test_choices_from_python_list_text_are_appended_to_the_question():
    parsed = parse_row(row(choices="['4', '5']", answer="5", question="How many?"),
                       COLUMNS, None)
    assert parsed.choices == ("4", "5")
    assert parsed.question == "How many?\nOptions:\nA. 4\nB. 5"
    assert (parsed.answer, parsed.answer_kind) == ("B", "choice")
    with pytest.raises(RowError, match="not a list literal"):
        parse_choices("[oops")


def test_answer_numbers_print_plainly():
    assert answer_text(3.0) == "3"
    assert answer_text(2.5) == "2.5"
    assert answer_text(" 7 ") == "7"


def test_solution_as_whole_response_gives_its_reasoning():
    assert solution_reasoning("<think> a then b </think><answer>3</answer>") == "a then b"
    assert solution_reasoning("<think>a</think>") == "a"
    assert solution_reasoning("plain steps") == "plain steps"
    with pytest.raises(RowError, match="has response tags but is not"):
        solution_reasoning("<answer>3</answer> because")


# ----------------------------------------------------------------------------- images
def test_pixel_hash_ignores_encoding_but_not_pixels():
    red_png, _, ext = decode_image(ImageRef(data=png()), FilePolicy(None))
    red_bmp, _, ext_bmp = decode_image(ImageRef(data=png(fmt="BMP")), FilePolicy(None))
    blue, _, _ = decode_image(ImageRef(data=png(colour=(0, 0, 255))), FilePolicy(None))
    assert (ext, ext_bmp) == ("png", "bmp")
    assert pixel_hash(red_png) == pixel_hash(red_bmp)
    assert pixel_hash(red_png) != pixel_hash(blue)


def test_undecodable_and_missing_images_are_row_errors(tmp_path):
    with pytest.raises(RowError, match="cannot decode"):
        decode_image(ImageRef(data=b"not an image"), FilePolicy(None))
    with pytest.raises(RowError, match="No such file"):
        decode_image(ImageRef(path=tmp_path / "absent.png"), FilePolicy.under(tmp_path))



def test_file_policy_reads_only_regular_files_inside_the_root_within_budgets(tmp_path):
    """Issue 23 #6: byte cap from fstat, FIFO and directory refused without blocking, pixel
    budget summed over a row from the headers, struct bytes that are text a row error."""
    import os

    from r1vflow.data.rows import decode_images, image_refs

    root = tmp_path / "data"
    root.mkdir()
    data = png(size=(4, 3))
    (root / "a.png").write_bytes(data)
    exact = FilePolicy.under(root, max_bytes=len(data), max_pixels=24)
    assert decode_image(ImageRef(path=root / "a.png"), exact)[1] == data
    small = FilePolicy.under(root, max_bytes=len(data) - 1)
    with pytest.raises(RowError, match=f"a.png: {len(data):,} bytes, over the budget of "
                                        f"{len(data) - 1:,}"):
        decode_image(ImageRef(path=root / "a.png"), small)
    with pytest.raises(RowError, match=f"{len(data):,} bytes, over the budget"):
        decode_image(ImageRef(data=data), small)
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    for name in ("fifo.png", "dir.png"):
        with pytest.raises(RowError, match=f"{name}: not a regular file"):
            decode_image(ImageRef(path=root / name), exact)
    two = [ImageRef(path=root / "a.png"), ImageRef(data=data)]  # 12 + 12 pixels
    assert len(decode_images(two, exact)) == 2
    with pytest.raises(RowError, match="4x3, the row's images reach 24 pixels, over the "
                                       "budget of 23"):
        decode_images(two, FilePolicy.under(root, max_pixels=23))
    with pytest.raises(RowError, match="the struct's 'bytes' is str, expected binary data"):
        image_refs({"bytes": "text", "path": None}, root, "image")


def test_paths_out_of_the_root_are_refused_alike_unless_allowed(tmp_path):
    """Issue 23 #6: ../, absolute paths and symlinks out of the root are refused before the
    file is touched; when allowed, a missing file and one that is not an image outside the
    root get the same message (an import cannot probe for files)."""
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "out.png").write_bytes(png())
    (tmp_path / "out.txt").write_text("secret")
    (root / "link.png").symlink_to(tmp_path / "out.png")
    (root / "in.png").write_bytes(png())
    (root / "inner.png").symlink_to(root / "in.png")
    confined = FilePolicy.under(root)
    assert decode_image(ImageRef(path=root / "inner.png"), confined)[1] == png()
    for path in (root / "../out.png", root / "link.png", Path("/dev/zero"),
                 root / "../missing.png"):
        with pytest.raises(RowError) as err:
            decode_image(ImageRef(path=path), confined)
        assert str(err.value) == (f"image {path}: outside the data folder {root}; set "
                                  "data.source.allow_absolute_paths: true to read files anywhere")
    allowed = FilePolicy.under(root, allow_absolute=True)
    assert decode_image(ImageRef(path=root / "link.png"), allowed)[1] == png()
    for name in ("../missing.png", "../out.txt"):
        with pytest.raises(RowError) as err:
            decode_image(ImageRef(path=root / name), allowed)
        assert str(err.value) == (f"image {root / name}: not readable as an image (outside the "
                                  "data folder a missing, unreadable, oversized or undecodable "
                                  "file gets this one message)")
    with pytest.raises(RowError, match="no folder"):
        decode_image(ImageRef(path=tmp_path / "out.png"), FilePolicy(None))


def test_montage_puts_images_side_by_side_at_one_height():
    sheet = montage([Image.new("RGB", (4, 2), (255, 0, 0)), Image.new("RGB", (2, 4), (0, 0, 255))])
    assert sheet.size == (10, 4)  # 4x2 scaled to height 4 is 8 wide, then 2 wide
    assert sheet.getpixel((0, 0)) == (255, 0, 0) and sheet.getpixel((9, 3)) == (0, 0, 255)


def test_normalised_question_drops_case_punctuation_placeholders_and_options():
    assert normalise_question("What is  shown in <image 1>?\nOptions:\nA. x") == "what is shown in"
    assert normalise_question("ＷＨＡＴ's  the area?") == "what s the area"


# ----------------------------------------------------------------------------- splits
def test_carving_is_seeded_and_respects_fractions():
    ids = [f"r{i}" for i in range(400)]
    first = [carve(i, 3, 0.2, 0.1) for i in ids]
    assert first == [carve(i, 3, 0.2, 0.1) for i in ids]
    assert first != [carve(i, 4, 0.2, 0.1) for i in ids]
    assert set(carve(i, 3, 0.0, 0.0) for i in ids) == {"train"}
    assert "train" not in {carve(i, 3, 0.5, 0.5) for i in ids}
    assert 50 <= first.count("val") <= 110 and 20 <= first.count("test") <= 60


def test_guard_refuses_shared_ids_and_published_leaks():
    guard = SplitGuard(carved=frozenset({"val"}))
    assert guard.place("a", ["h1"], "train", "f:1", carved_from_train=True) == "train"
    with pytest.raises(RowError, match="id 'a' already used by f:1"):
        guard.place("a", ["h2"], "test", "g:1", carved_from_train=False)
    with pytest.raises(RowError, match=r"image is already in train \(f:1\)"):
        guard.place("b", ["h1"], "test", "g:2", carved_from_train=False)
    # the failed rows left no trace: their ids can still be used
    assert guard.place("b", ["h3"], "test", "g:3", carved_from_train=False) == "test"


def test_guard_keeps_a_shared_image_in_one_carved_split():
    guard = SplitGuard(carved=frozenset({"val", "test"}))
    assert guard.place("a", ["h1"], "val", "f:1", carved_from_train=True) == "val"
    # a later row with the same image follows it into val, whatever its own carving said
    assert guard.place("b", ["h1"], "train", "f:2", carved_from_train=True) == "val"
    assert guard.place("c", ["h2"], "test", "f:3", carved_from_train=True) == "test"
    with pytest.raises(RowError, match="already in test .*, val "):
        guard.place("d", ["h1", "h2"], "train", "f:4", carved_from_train=True)


def test_guard_does_not_move_rows_into_a_published_split():
    guard = SplitGuard(carved=frozenset({"val"}))  # test is published
    guard.place("t", ["h1"], "test", "test.jsonl:1", carved_from_train=False)
    with pytest.raises(RowError, match=r"already in test \(test.jsonl:1\)"):
        guard.place("a", ["h1"], "train", "train.jsonl:1", carved_from_train=True)


# ----------------------------------------------------------------------------- contamination
LONG = "What is the area of the shaded triangle in the figure?"


def test_contamination_counts_image_and_question_matches():
    bench = [EvalItem.of("m1", LONG, ["img-a"]), EvalItem.of("m2", "Which is larger?", ["img-b"])]
    other = [EvalItem.of("o1", "Count the red cubes left of the sphere.", [])]
    train = [
        EvalItem.of("t1", "something else entirely, long enough", ["img-a"]),  # image of m1
        EvalItem.of("t2", "what is the AREA of the shaded triangle in the figure", ["x"]),
        EvalItem.of("t3", "Which is larger?", ["y"]),  # too short to match on text
        EvalItem.of("t4", "Count the red cubes left of the sphere!", ["img-b"]),  # both refs
        EvalItem.of("t5", "A clean question about nothing at all", ["z"]),
    ]
    found = find_contamination(train, {"bench": bench, "other": other}, min_question_chars=20)
    assert found == {"contaminated": 3, "by_reference": {"bench": 3, "other": 1},
                     "by_reason": {"image": 2, "question": 2}, "ids": ["t1", "t2", "t4"]}


def test_contamination_index_reports_item_and_reason():
    index = ContaminationIndex.build({"mmmu": [EvalItem.of("v1", LONG, ["h"])]}, 20)
    assert index.sizes == {"mmmu": 1}
    matches = index.matches(EvalItem.of("t", LONG + "\nOptions:\nA. 1", ["h"]))
    assert [(m.reference, m.reason, m.item_id) for m in matches] == \
        [("mmmu", "image", "v1"), ("mmmu", "question", "v1")]
    assert index.matches(EvalItem.of("t", "unrelated but long question text", ["g"])) == []


def test_derived_pairs_alternate_wrong_answer_and_broken_format():
    choice = parse_row(row(choices=["x", "y", "z"], answer="C", solution="z it is"), COLUMNS, None)
    assert derived_pair(choice, 0) == ("<think>z it is</think><answer>C</answer>",
                                       "<think>z it is</think><answer>A</answer>", "wrong_answer")
    assert derived_pair(choice, 1) == ("<think>z it is</think><answer>C</answer>",
                                       "z it is C", "broken_format")
    number = parse_row(row(answer=-2), COLUMNS, None)  # no solution: empty reasoning
    assert derived_pair(number, 4) == ("<think></think><answer>-2</answer>",
                                       "<think></think><answer>-1</answer>", "wrong_answer")
    text = parse_row(row(answer="Paris", solution="the capital"), COLUMNS, None)
    assert derived_pair(text, 0)[1:] == ("the capital Paris", "broken_format")
