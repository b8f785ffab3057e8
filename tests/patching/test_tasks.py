"""actstore.patching.tasks: prompt pairs of the standard tasks, checked with the GPT-2 tokenizer:
equal token lengths (within a pair and across the pairs of one call), one-token
answers, the structure each task promises, determinism from the seed, and clear errors
for bad facts files."""

from __future__ import annotations

import json

import pytest

from actstore.errors import ConfigError, CorpusError
from actstore.patching import tasks
from actstore.patching.pairs import read_pairs

GENERATED = ["ioi", "ioi-flip", "repeated-name", "greater-than"]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("task", GENERATED)
def test_pairs_have_equal_lengths_and_one_token_answers(tokenizer, task):
    pairs = tasks.make_pairs(task, 40, seed=7, tokenizer=tokenizer)
    assert len(pairs) == 40
    lengths = {len(ids(tokenizer, p.clean)) for p in pairs} | {
        len(ids(tokenizer, p.corrupted)) for p in pairs
    }
    assert len(lengths) == 1  # within each pair and across the pairs: positions line up
    for p in pairs:
        assert len(ids(tokenizer, p.answer)) == 1 and len(ids(tokenizer, p.wrong)) == 1
        assert p.answer != p.wrong and p.clean != p.corrupted
    assert len({p.clean for p in pairs}) > 30  # varied


@pytest.mark.parametrize("task", GENERATED)
def test_deterministic_from_the_seed(tokenizer, task):
    a = tasks.make_pairs(task, 10, seed=3, tokenizer=tokenizer)
    assert tasks.make_pairs(task, 10, seed=3, tokenizer=tokenizer) == a
    assert tasks.make_pairs(task, 10, seed=4, tokenizer=tokenizer) != a
    assert tasks.make_pairs(task, 4, seed=3, tokenizer=tokenizer) == a[:4]  # prefix-stable
    # default tokenizer
    assert [p.to_json() for p in tasks.make_pairs(task, 10, seed=3)] == [p.to_json() for p in a]


def test_ioi_structure(tokenizer):
    pairs = tasks.ioi_pairs(60, seed=0, tokenizer=tokenizer)
    orders = [p.meta["order"] for p in pairs]
    assert orders.count("ABBA") == orders.count("BABA") == 30
    for p in pairs:
        io, s = p.meta["io"], p.meta["s"]
        assert (p.answer, p.wrong) == (" " + io, " " + s)
        assert p.clean.startswith("Then, ") and p.clean.endswith(" to")
        words = p.clean.replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(s) == 2  # IO once, the subject twice
        first = words.index(io) < words.index(s)
        assert first == (p.meta["order"] == "ABBA")
        cwords = p.corrupted.replace(",", " ").replace(".", " ").split()
        assert not {io, s} & set(cwords)  # ABC: three fresh names
        fresh = [w for w, c in zip(words, cwords) if w != c]
        assert len(fresh) == 3 and len({c for w, c in zip(words, cwords) if w != c}) == 3
    flip = tasks.ioi_pairs(8, seed=0, tokenizer=tokenizer, corruption="flip")
    for p, q in zip(pairs, flip):
        assert p.clean == q.clean  # the same sentences: the corruption alone differs
        assert (
            q.corrupted
            == q.clean[: q.clean.rindex(q.meta["s"])]
            + q.meta["io"]
            + q.clean[q.clean.rindex(q.meta["s"]) + len(q.meta["s"]) :]
        )
    for t in range(len(tasks.IOI_TEMPLATES)):  # every template works, one length each
        ps = tasks.ioi_pairs(6, seed=t, tokenizer=tokenizer, template=t)
        assert (
            len(
                {len(ids(tokenizer, p.clean)) for p in ps}
                | {len(ids(tokenizer, p.corrupted)) for p in ps}
            )
            == 1
        )
    assert {p.meta["order"] for p in tasks.ioi_pairs(4, tokenizer=tokenizer, order="BABA")} == {
        "BABA"
    }
    with pytest.raises(ConfigError, match="corruption must be"):
        tasks.ioi_pairs(2, tokenizer=tokenizer, corruption="shuffle")
    with pytest.raises(ConfigError, match="template must be in 0..14"):
        tasks.ioi_pairs(2, tokenizer=tokenizer, template=15)


def test_repeated_name_structure(tokenizer):
    for p in tasks.repeated_name_pairs(20, seed=1, tokenizer=tokenizer):
        first = p.meta["first"]
        assert p.clean == f"{first}{p.answer} was a top-notch student. {first}"
        assert p.corrupted == f"{first}{p.wrong} was a top-notch student. {first}"


def test_greater_than_structure(tokenizer):
    for p in tasks.greater_than_pairs(50, seed=2, tokenizer=tokenizer):
        cc, yy = p.meta["century"], p.meta["yy"]
        assert p.clean.endswith(f"from the year {cc}{yy:02d} to the year {cc}")
        assert p.corrupted == p.clean.replace(f"{cc}{yy:02d}", f"{cc}01")
        assert int(p.answer) == yy + 1 > yy > int(p.wrong) == yy - 1 > 1
        toks = [tokenizer.decode([t]) for t in ids(tokenizer, p.clean)]
        assert toks[-5:] == [f"{yy:02d}", " to", " the", " year", f" {cc}"]


def test_generated_pairs_round_trip_through_the_pairs_format(tokenizer, tmp_path):
    pairs = tasks.make_pairs("ioi", 5, seed=0, tokenizer=tokenizer)
    path = tasks.write_pairs(pairs, tmp_path / "ioi.jsonl")
    read = read_pairs(path, tokenizer)
    bos = tokenizer.bos_token_id
    assert read.clean.tolist() == [[bos] + ids(tokenizer, p.clean) for p in pairs]
    assert read.answer.tolist() == [ids(tokenizer, p.answer)[0] for p in pairs]
    assert json.loads(open(path).readline())["meta"]["task"] == "ioi"


# --- factual recall from a file --------------------------------------------------------------------

FACTS = [  # prompts of 8, 7, 7 and 5 tokens
    {"prompt": "The Louvre is in the city of", "answer": " Paris", "subject": "Louvre"},
    {"prompt": "The Kremlin is in the city of", "answer": " Moscow"},
    {"prompt": "The Vatican is in the city of", "answer": " Rome"},
    {
        "prompt": "The capital of Japan is",
        "answer": " Tokyo",
        "corrupted_prompt": "The capital of France is",
        "wrong": " Paris",
    },
]


def write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_factual_pairs(tokenizer, tmp_path):
    lengths = [len(ids(tokenizer, f["prompt"])) for f in FACTS]
    assert lengths[0] != lengths[1] == lengths[2]  # the first has no partner of its length...
    with pytest.raises(
        ConfigError,
        match=r"facts.jsonl:1: no other fact has a prompt of \d+ tokens.*corrupted_prompt",
    ):
        tasks.factual_pairs(write(tmp_path / "facts.jsonl", FACTS), tokenizer=tokenizer)
    path = write(tmp_path / "facts.jsonl", FACTS[1:])  # ...without it, every fact is paired
    pairs = tasks.factual_pairs(path, tokenizer=tokenizer)
    assert [(p.clean, p.corrupted, p.answer, p.wrong) for p in pairs] == [
        (FACTS[1]["prompt"], FACTS[2]["prompt"], " Moscow", " Rome"),
        (FACTS[2]["prompt"], FACTS[1]["prompt"], " Rome", " Moscow"),
        (FACTS[3]["prompt"], FACTS[3]["corrupted_prompt"], " Tokyo", " Paris"),
    ]
    assert pairs[0].meta["source"].endswith("facts.jsonl:1") and pairs[0].meta[
        "paired_with"
    ].endswith("facts.jsonl:2")
    # one partner each way: any seed
    assert tasks.factual_pairs(path, tokenizer=tokenizer, seed=5) == pairs
    two = tasks.factual_pairs(path, n=2, seed=0, tokenizer=tokenizer)
    assert len(two) == 2 and two == tasks.factual_pairs(path, n=2, seed=0, tokenizer=tokenizer)


@pytest.mark.parametrize(
    "record,error,match",
    [
        (
            {"prompt": "The Louvre is in", "answer": " Paris, France"},
            ConfigError,
            r"answer ' Paris, France' is 3 tokens.*one-token",
        ),
        (
            {
                "prompt": "The capital of Japan is",
                "answer": " Tokyo",
                "corrupted_prompt": "The city of Paris is the capital of",
                "wrong": " France",
            },
            ConfigError,
            "prompt is 5 tokens and the corrupted_prompt 8",
        ),
        (
            {
                "prompt": "The capital of Japan is",
                "answer": " Tokyo",
                "corrupted_prompt": "The capital of France is",
            },
            CorpusError,
            "corrupted_prompt but no 'wrong'",
        ),
        (
            {"prompt": "The capital of Japan is", "answer": " Tokyo", "corupted_prompt": "x"},
            CorpusError,
            "unknown field 'corupted_prompt' \\(did you mean 'corrupted_prompt'\\?\\)",
        ),
        ({"answer": " Tokyo"}, CorpusError, "has no field 'prompt'"),
        ('{"prompt": "The capital', CorpusError, "is not valid JSON"),
        (
            {
                "prompt": "The capital of Japan is",
                "answer": " Tokyo",
                "corrupted_prompt": "The capital of Spain is",
                "wrong": " Tokyo",
            },
            ConfigError,
            "answer and wrong are the same token",
        ),
    ],
)
def test_factual_bad_files_name_the_line_and_the_fix(tokenizer, tmp_path, record, error, match):
    path = write(tmp_path / "f.jsonl", [FACTS[3], record])
    with pytest.raises(error, match="f.jsonl:2.*" + match):
        tasks.factual_pairs(path, tokenizer=tokenizer)


def test_make_pairs_errors(tokenizer, tmp_path):
    with pytest.raises(
        ConfigError, match="Unknown task 'iio' \\(did you mean 'ioi'\\?\\); expected one of ioi"
    ):
        tasks.make_pairs("iio", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="pass --facts FILE"):
        tasks.make_pairs("factual", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="applies to the factual task only"):
        tasks.make_pairs("ioi", facts="x.jsonl", tokenizer=tokenizer)
    with pytest.raises(CorpusError, match="Facts file .* not found"):
        tasks.make_pairs("factual", facts=str(tmp_path / "missing.jsonl"), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="n_pairs 9 is outside 1..1"):
        tasks.make_pairs(
            "factual", 9, facts=write(tmp_path / "one.jsonl", [FACTS[3]]), tokenizer=tokenizer
        )
    with pytest.raises(ConfigError, match="at least 1"):
        tasks.make_pairs("ioi", 0, tokenizer=tokenizer)
    assert len(tasks.make_pairs("greater-than", tokenizer=tokenizer)) == 16  # the default
