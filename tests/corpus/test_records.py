"""A record that cannot become a document is an error naming its file and line, never
a document silently dropped; a split other than the default is refused for local
sources; the corpus description fingerprints each local file's content."""

import json

import pytest

from actstore.corpus import CorpusSpec, count_rows
from actstore.corpus.fingerprint import content_changes, without_fingerprints
from actstore.errors import CorpusError


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


GOOD = json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 3})


@pytest.mark.parametrize(
    "lines,found",
    [
        ([GOOD, "", '{"text": null}', GOOD], "no value"),  # the blank line holds no record
        # datasets gives the missing key None: not an empty document
        (
            [GOOD, "", '{"other": "x"}', GOOD],
            "no value",
        ),
        # (a file mixing str and int fails to open)
        (
            ['{"text": 5}', '{"text": 6}', '{"text": 7}'],
            "a int, not text",
        ),
    ],
)
def test_a_record_without_text_names_file_and_line(tmp_path, tokenizer, lines, found):
    path = _jsonl(tmp_path / "docs.jsonl", lines)
    spec = CorpusSpec.from_dataset(path, seq_len=8)
    line = 3 if found == "no value" else 1
    with pytest.raises(
        CorpusError, match=rf"file '.*docs.jsonl', line {line}: field 'text' holds {found}"
    ):
        count_rows(spec, tokenizer)


def test_a_null_text_in_a_python_list_is_refused_too(tokenizer):
    with pytest.raises(CorpusError, match="must hold strings"):
        CorpusSpec.from_dataset(["a text", None], seq_len=8)


def test_a_malformed_json_line_names_file_and_line(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "docs.jsonl", [GOOD, GOOD, '{"text": "abc"', GOOD])
    with pytest.raises(
        CorpusError,
        match=r"file '.*docs.jsonl', line 3: Expecting ',' delimiter.*one JSON object per line",
    ):
        count_rows(CorpusSpec.from_dataset(path, seq_len=8), tokenizer)


@pytest.mark.parametrize("source", ["file", "list"])
def test_a_split_is_refused_for_local_sources(tmp_path, tokenizer, source):
    dataset = _jsonl(tmp_path / "docs.jsonl", [GOOD]) if source == "file" else ["a text", "another"]
    spec = CorpusSpec.from_dataset(dataset, split="validation", seq_len=8)
    with pytest.raises(
        CorpusError, match=r"one split, so --split validation cannot be honoured.*without --split"
    ):
        count_rows(spec, tokenizer)
    assert count_rows(CorpusSpec.from_dataset(dataset, split="train", seq_len=4), tokenizer) > 0


def test_the_description_fingerprints_file_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("the cat sat\n")
    before = CorpusSpec.from_dataset(str(path)).describe()
    path.write_text("the dog sat\n")  # same size, other content
    after = CorpusSpec.from_dataset(str(path)).describe()
    assert before["files"][0]["bytes"] == after["files"][0]["bytes"]
    assert without_fingerprints(before) == without_fingerprints(after)
    changed, unchecked = content_changes(before, after)
    assert (
        unchecked == []
        and len(changed) == 1
        and "c.txt' changed since the store was made" in changed[0]
    )
    assert content_changes(before, before) == ([], [])
    # a store made before fingerprints: nothing to compare, and it says so
    changed, unchecked = content_changes(without_fingerprints(before), after)
    assert changed == [] and "made before actstore recorded corpus fingerprints" in unchecked[0]


def test_hub_revisions_are_compared_when_known():
    stored = {"kind": "hub", "source": "org/data", "resolved_revision": "abc"}
    assert (
        "now at commit def" in content_changes(stored, {**stored, "resolved_revision": "def"})[0][0]
    )
    assert (
        "could not be asked" in content_changes(stored, {**stored, "resolved_revision": None})[1][0]
    )
    assert "not recorded" in content_changes({**stored, "resolved_revision": None}, stored)[1][0]
