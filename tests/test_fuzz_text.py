"""Hypothesis fuzzing of every text that reaches the tokenizer: captions, prompt templates, class names.

Texts are arbitrary unicode (control characters, NUL, lone surrogates where a format can hold
them, right-to-left marks, emoji), empty, or very long. Nothing crashes: a loader returns
exactly the texts that were written (stripped) or raises a one-line `DataError`, and the
tokenizer cuts what does not fit its context and counts it.
"""

import csv
import json
import os
import string

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flip.data.tokenizer import Tokenizer, _bpe
from flip.errors import DataError
from flip.eval.datasets import load_caption_table, load_class_folders, load_karpathy_json, read_lines
from flip.eval.templates import as_text, from_strings, resolve_classnames, resolve_templates

# Few examples, no deadline: the whole file runs in well under a minute on 2 cores.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
SOT, EOT = 49406, 49407

# Any code point, lone surrogates included; and texts built to be long (many words, or one long word).
any_char = st.characters(blacklist_categories=())
any_text = st.text(any_char, max_size=60)
long_text = st.builds(lambda piece, n: piece * n, st.text(any_char, min_size=1, max_size=8),
                      st.integers(1, 3000))
texts = st.one_of(any_text, long_text, st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "\u202e",
                                                        "\x1b[31mred", "\t\r\n\x0b\x0c", "😀" * 40]))
# What a UTF-8 text file can hold (no lone surrogates).
file_char = st.characters(blacklist_categories=("Cs",))


def _reference_ids(text: str) -> list[int] | None:
    """open_clip's own tokenisation (all of it, uncut), or None where it fails (a lone surrogate)."""
    try:
        return [SOT, *_bpe().encode(text), EOT]
    except UnicodeEncodeError:
        return None


# -- the tokenizer ----------------------------------------------------------------------------------
@FUZZ
@given(text=texts, context=st.sampled_from([3, 8, 32, 77]))
@example(text="!(", context=3)  # "!" is token id 0, the same id as padding
def test_tokenizer_cuts_and_counts_any_text(text, context):
    tok = Tokenizer(context)
    row = tok([text])[0].tolist()
    assert len(row) == context and row[0] == SOT and row.count(EOT) == 1
    end = row.index(EOT)
    assert all(i == 0 for i in row[end + 1:]) and all(0 <= i < tok.vocab_size for i in row[:end])  # id 0 is '!'
    ids, cut = tok.encode(text)
    assert row[:end + 1] == ids and tok.truncated == int(cut) == tok.count_truncated([text])
    reference = _reference_ids(text) if len(text) < 2000 else None  # open_clip's BPE is slow on long words
    if reference is not None:
        assert cut == (len(reference) > context)  # counted exactly when open_clip would cut it
        if not cut:
            assert ids == reference
        else:
            assert ids == [*reference[:context - 1], EOT]  # open_clip's rule: cut, keep EOT


@FUZZ
@given(text=texts, context=st.sampled_from([3, 8, 32]))
def test_word_classes_of_any_text(text, context):
    """Syntax masking's tagging: the same tokens as plain tokenising, one class a position, SOT and padding
    in their places, whatever the text."""
    tok = Tokenizer(context)
    tokens, classes = tok.with_word_classes([text])
    assert torch.equal(tokens, Tokenizer(context)([text])) and classes.shape == (1, context)
    end = tokens[0].tolist().index(EOT)
    assert classes[0, 0] == 0 and set(classes[0, 1:end + 1].tolist()) <= {1, 2, 3, 4} and classes[0, end] == 4
    assert (classes[0, end + 1:] == 5).all()


def test_tokenizer_matches_open_clip_and_counts_a_batch():
    captions = ["a photo of a dog", "", "one two three four five six seven eight nine ten " * 4, "ünïcödé 😀"]
    tok = Tokenizer(16)
    assert torch.equal(tok(captions), _bpe()(captions, context_length=16))
    assert tok.truncated == 1
    tok(captions)
    assert tok.truncated == 2  # counts accumulate over calls


def test_tokenizer_is_fast_on_a_huge_word():
    """BPE is quadratic in a word's length; a 200 kB word is cut first (the caption is cut anyway)."""
    import random
    import time

    word = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(200_000))
    tok = Tokenizer(32)
    start = time.perf_counter()
    tok([word, word + " tail"])
    assert time.perf_counter() - start < 5 and tok.truncated == 2


# -- prompt templates and class names -------------------------------------------------------------------
@FUZZ
@given(lines=st.lists(any_text, min_size=1, max_size=5), names=st.lists(texts, min_size=1, max_size=4))
def test_templates_and_class_names_become_prompts(lines, names):
    if not all("{c}" in line or "{}" in line for line in lines):
        with pytest.raises(DataError, match="no {c} or {} placeholder"):
            from_strings(lines)
        return
    templates = from_strings(lines)
    assert len(as_text(templates)) == len(lines)
    prompts = [t(name) for name in names for t in templates]
    for line, prompt in zip(lines, prompts):
        assert names[0] in prompt  # the class name is in every prompt of its templates
    tok = Tokenizer(32)
    assert tok(prompts).shape == (len(prompts), 32) and tok.truncated == tok.count_truncated(prompts)


@FUZZ
@given(names=st.lists(st.text(file_char, max_size=40).filter(lambda s: "\n" not in s and "\r" not in s),
                      min_size=1, max_size=6))
@example(names=["{}"])  # a class name that looks like a placeholder is not substituted again
def test_class_names_and_templates_files(names, tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "classnames.txt"
    path.write_text("\n".join(names), encoding="utf-8")
    kept = [n.strip() for n in names if n.strip()]
    if not kept:
        with pytest.raises(DataError, match="is empty"):
            resolve_classnames(str(path))
        return
    assert resolve_classnames(str(path)) == kept  # one name per line, whatever else a name holds
    path.write_text("\n".join(f"a photo of {{c}}, {n}" for n in names), encoding="utf-8")
    name, templates = resolve_templates(str(path), None)
    assert [t("X") for t in templates] == [f"a photo of X, {n}".strip() for n in names]


@FUZZ
@given(data=st.binary(max_size=200))
def test_text_files_of_any_bytes(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "templates.txt"
    path.write_bytes(data)
    try:
        lines = read_lines(path, "templates file")
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert lines and all(line == line.strip() and line for line in lines)


# -- retrieval captions: CSV and Karpathy JSON --------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(b"")  # the loaders list images; pixels are read later
    return root


@FUZZ
@given(captions=st.lists(st.text(file_char, max_size=40), min_size=1, max_size=6))
def test_csv_captions(captions, images, tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        writer.writerows([f"{i % 3}.jpg", c] for i, c in enumerate(captions))
    try:
        data = load_caption_table(path, images)
    except DataError as exc:
        assert str(path) in str(exc)
        assert any(not c.strip() for c in captions) or any("\x00" in c or "\r" in c for c in captions), exc
        return
    expected = {f"{i}.jpg": [c.strip() for c in captions[i::3]] for i in range(min(3, len(captions)))}
    assert data.captions == [c for caps in expected.values() for c in caps]


@FUZZ
@given(captions=st.lists(st.lists(texts, max_size=3), min_size=1, max_size=3), karpathy=st.booleans())
def test_karpathy_json_captions(captions, karpathy, images, tmp_path_factory):
    path = tmp_path_factory.mktemp("json") / "dataset.json"
    if karpathy:
        doc = {"images": [{"filename": f"{i}.jpg", "split": "test", "sentences": [{"raw": c} for c in caps]}
                          for i, caps in enumerate(captions)]}
    else:
        doc = [{"image": f"{i}.jpg", "caption": caps} for i, caps in enumerate(captions)]
    path.write_text(json.dumps(doc), encoding="utf-8")  # ASCII, with lone surrogates as \ud800 escapes
    kept = [[c.strip() for c in caps if c.strip()] for caps in captions]
    if not all(kept):
        with pytest.raises(DataError, match="has no caption"):
            load_karpathy_json(path, images)
        return
    data = load_karpathy_json(path, images)
    assert data.captions == [c for caps in kept for c in caps]
    tok = Tokenizer(32)
    tok(data.captions)
    assert tok.truncated == tok.count_truncated(data.captions)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["images", "filename", "filepath", "split", "sentences", "raw",
                                                "image", "caption", "x"]), inner, max_size=4), max_leaves=12)


@FUZZ
@given(doc=json_values)
def test_karpathy_json_of_any_shape(doc, images, tmp_path_factory):
    path = tmp_path_factory.mktemp("json") / "dataset.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        load_karpathy_json(path, images)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


# -- zero-shot class folders ---------------------------------------------------------------------------
def _folder_name(name: str) -> bool:
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError:
        return False
    return 0 < len(encoded) <= 255 and b"/" not in encoded and b"\x00" not in encoded \
        and not name.startswith(".")


@FUZZ
@given(names=st.lists(st.text(any_char, min_size=1, max_size=30).filter(_folder_name), min_size=1, max_size=4,
                      unique=True))
def test_class_folders_with_any_names(names, tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for name in names:
        (root / name).mkdir()
        (root / name / "0.png").write_bytes(b"")
    data = load_class_folders(root)
    assert data.classnames == [n.replace("_", " ") for n in sorted(names)]
    assert data.labels.tolist() == list(range(len(names)))
    _, templates = resolve_templates("simple", None)
    prompts = [t(name) for name in data.classnames for t in templates]
    tok = Tokenizer(32)
    assert tok(prompts).shape == (len(prompts), 32) and tok.truncated == tok.count_truncated(prompts)


# -- the counts reach the user ----------------------------------------------------------------------------
@pytest.mark.integration  # trains
def test_training_counts_cut_captions_across_a_resume(small_dataset, tmp_path):
    """With a context of 3 (one token between SOT and EOT) every built-in caption is cut: the summary
    counts each sample trained on once, over two data workers and a resume."""
    from typer.testing import CliRunner

    from flipctl.main import app

    run = tmp_path / "run"
    args = ["train", "--data", str(small_dataset / "train"), "--context-length", "3", "--samples", "32",
            "--batch-size", "8", "--workers", "2", "--ckpt-every", "2", "--log-every", "2", "--out", str(run),
            "--resume", "auto"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert json.loads((run / "summary.json").read_text())["truncated_captions"] == 32
    (run / "latest").write_text("ckpt-00000002\n")  # as if killed after step 2's checkpoint
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["truncated_captions"] == 32


def test_evaluation_records_count_cut_captions_and_prompts(small_dataset, ckpt, tmp_path):
    from flip.eval import evaluate_checkpoint

    source = small_dataset / "retrieval"
    rows = list(csv.DictReader((source / "captions.csv").open()))[:12]
    for i, row in enumerate(rows):
        row["caption"] = " ".join([row["caption"]] * (i % 4 + 1))  # 1 to 4 times as long
    path = tmp_path / "long.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "caption"])
        writer.writeheader()
        writer.writerows({"filepath": r["filepath"], "caption": r["caption"]} for r in rows)
    expected = sum(len(_reference_ids(r["caption"])) > 32 for r in rows)
    assert 0 < expected < len(rows)
    lines = []
    record = evaluate_checkpoint(ckpt, "retrieval", data=path, images_root=source, log=lines.append)
    assert record["data"]["truncated_captions"] == expected and f"{expected} captions cut to 32" in lines[0]

    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {c}\n" + "a very " * 20 + "long photo of a {c}\n")
    record = evaluate_checkpoint(ckpt, "zeroshot", data=small_dataset / "zeroshot", templates=str(templates))
    assert record["settings"]["templates"]["truncated_prompts"] == len(record["data"]["classnames"])
