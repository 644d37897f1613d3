"""SAE-training corpus: seeded prompts, readers that name the file on every error, and the shipped corpus."""

from __future__ import annotations

import itertools
import json

import pytest

from probes.datasets.corpus import (
    FORMS,
    TOPICS,
    CorpusError,
    generation_prompts,
    load_corpus,
    load_hf_documents,
    read_documents,
)

SHIPPED = "data/corpus/smollm2_generated.jsonl"


def test_generation_prompts_are_seeded_distinct_and_sized():
    prompts = generation_prompts(50, seed=0)
    assert prompts == generation_prompts(50, seed=0)
    assert prompts != generation_prompts(50, seed=1)
    assert len(prompts) == 50
    assert len({(p["topic"], p["form"]) for p in prompts}) == 50
    for p in prompts:
        assert p["topic"] in TOPICS and p["form"] in FORMS
        assert p["prompt"] == p["form"].format(topic=p["topic"])
    assert generation_prompts(10, seed=0) == prompts[:10]  # a smaller corpus is a prefix of a larger one
    assert generation_prompts(0, seed=0) == []


def test_generation_prompts_refuse_more_than_the_grid():
    everything = generation_prompts(len(TOPICS) * len(FORMS), seed=3)
    assert sorted((p["topic"], p["form"]) for p in everything) == sorted(itertools.product(TOPICS, FORMS))
    with pytest.raises(ValueError):
        generation_prompts(len(TOPICS) * len(FORMS) + 1, seed=0)


def test_prompt_lists_have_no_duplicates_and_one_slot_each():
    assert len(set(TOPICS)) == len(TOPICS) >= 50
    assert len(set(FORMS)) == len(FORMS) >= 8
    assert all(form.count("{topic}") == 1 for form in FORMS)


def test_read_txt_splits_at_blank_lines(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("First doc,\nsecond line.\n\n\nSecond doc.\n  \t\nThird doc.\n\n")
    assert read_documents(path) == ["First doc,\nsecond line.", "Second doc.", "Third doc."]


def test_read_jsonl_takes_text_fields(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": " one ", "id": 1}\n\n{"text": "two"}\n{"text": ""}\n')
    assert read_documents(path) == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": "broken"\n', "line 2"),
        ("notext.jsonl", '{"text": "fine"}\n{"body": "no text"}\n', "line 2"),
        ("number.jsonl", '{"text": 3}\n', "line 1"),
        ("list.jsonl", '["text"]\n', "line 1"),
        ("empty.txt", "\n  \n\n", "no non-empty documents"),
        ("empty.jsonl", "", "no non-empty documents"),
        ("docs.csv", "text\nhello\n", "unsupported"),
    ],
)
def test_read_errors_name_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError, match=problem) as error:
        read_documents(path)
    assert name in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match="not found") as error:
        read_documents(tmp_path / "absent.txt")
    assert "absent.txt" in str(error.value)


def test_load_corpus_keeps_order(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.jsonl"
    first.write_text("a1\n\na2\n")
    second.write_text(json.dumps({"text": "b1"}) + "\n")
    assert load_corpus([first, second], texts=["t1", " ", "t2"]) == ["a1", "a2", "b1", "t1", "t2"]
    assert load_corpus(texts=["only"]) == ["only"]


def test_load_corpus_refuses_nothing():
    with pytest.raises(CorpusError, match="no non-empty documents"):
        load_corpus()
    with pytest.raises(CorpusError):
        load_corpus(texts=["  "])


def test_load_corpus_checks_hf_keys():
    with pytest.raises(CorpusError, match="unknown key"):
        load_corpus(hf_dataset={"name": "x", "colum": "text"})


def test_missing_hf_dataset_is_named_and_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = "probes-test/no-such-dataset-anywhere"
    with pytest.raises(CorpusError) as error:
        load_hf_documents(name, "train", "text", 10)
    assert name in str(error.value)
    assert "local Hugging Face cache" in str(error.value)


@pytest.fixture(scope="module")
def shipped(repo) -> list[dict]:
    with open(repo / SHIPPED, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_shipped_corpus_loads_and_is_clean(repo, shipped):
    documents = read_documents(repo / SHIPPED)
    assert len(documents) == len(shipped) >= 300
    assert all(documents)
    assert len(set(documents)) == len(documents)
    assert documents == [record["text"] for record in shipped]
    assert all(set(record) == {"id", "topic", "form", "prompt", "text"} for record in shipped)


def test_shipped_corpus_comes_from_the_prompt_list(shipped):
    ids = [record["id"] for record in shipped]
    assert ids == sorted(set(ids))
    expected = generation_prompts(ids[-1] + 1, seed=0)
    assert [{k: r[k] for k in ("topic", "form", "prompt")} for r in shipped] == [expected[i] for i in ids]
