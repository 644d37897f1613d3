"""The two affective tasks: ``sentiment`` is compositional (built from minimal pairs, no word gives the label
away), ``reviews`` is its lexical baseline (evaluative words give it away on purpose)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from probes.datasets.tasks import generate_dataset
from probes.datasets.tasks.sentiment import REVERSING, TEMPLATES

TEMPLATE = {template.name: template for template in TEMPLATES}


@pytest.fixture(scope="module")
def sentiment(repo) -> pd.DataFrame:
    return pd.read_csv(repo / "data" / "concepts" / "sentiment.csv")


@pytest.fixture(scope="module")
def reviews(repo) -> pd.DataFrame:
    return pd.read_csv(repo / "data" / "concepts" / "reviews.csv")


def words(text: str) -> list[str]:
    """The tokens of the shortcut check's bag of words: runs of letters and digits, lowercased."""
    return re.findall(r"\w+", text.lower())


def ngrams(frame: pd.DataFrame, n: int) -> Counter:
    counts: Counter = Counter()
    for text in frame["text"]:
        tokens = words(text)
        counts.update(zip(*(tokens[i:] for i in range(n))))
    return counts


def grouped_accuracy(frame: pd.DataFrame, features, model) -> float:
    """Out-of-fold accuracy under the pipeline's folds (StratifiedGroupKFold by ``group``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    y, predicted = frame["label"].to_numpy(), np.zeros(len(frame))
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(frame, y, frame["group"]):
        x_train, x_test = features(frame.iloc[train], frame.iloc[test])
        predicted[test] = model().fit(x_train, y[train]).predict(x_test)
    return float((predicted == y).mean())


def bag_of_words(train: pd.DataFrame, test: pd.DataFrame):
    """Unigram and bigram counts, fitted on the training rows."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b")
    return vectorizer.fit_transform(train["text"]), vectorizer.transform(test["text"])


def length(train: pd.DataFrame, test: pd.DataFrame):
    """Characters and words."""
    return tuple(np.c_[d["text"].str.len(), d["text"].str.split().str.len()] for d in (train, test))


def logistic():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000)


def tree():
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=4, min_samples_leaf=20, random_state=0)


def test_committed_files_are_the_generators(repo):
    for name in ("sentiment", "reviews"):
        path = repo / "data" / "concepts" / f"{name}.csv"
        assert generate_dataset(name, 0).to_csv(index=False, lineterminator="\n") == path.read_text(), name


@pytest.mark.parametrize(
    ("name", "type_column"), [("sentiment", "topic"), ("reviews", "domain")], ids=["sentiment", "reviews"]
)
def test_scale_balance_and_type_column(repo, name, type_column):
    frame = pd.read_csv(repo / "data" / "concepts" / f"{name}.csv")
    assert list(frame.columns[:4]) == ["text", "label", "group", type_column]
    assert len(frame) == 800
    assert frame["label"].value_counts().to_dict() == {0: 400, 1: 400}
    assert not frame["text"].duplicated().any()
    assert frame["text"].str.split().str.len().max() <= 30
    # the type column crosses groups and does not decide the label
    assert (frame.groupby(type_column)["group"].nunique() >= 5).all()
    assert frame.groupby(type_column)["label"].mean().between(0.4, 0.6).all()
    assert (frame.groupby("group")[type_column].nunique() == 1).all()
    words_per_text = frame["text"].str.split().str.len()
    assert abs(words_per_text[frame["label"] == 1].mean() - words_per_text[frame["label"] == 0].mean()) < 0.5


def test_sentiment_groups_are_two_minimal_pairs(sentiment):
    """A group: one template and content, in a positive and a negative version, each with both operators."""
    assert sentiment["group"].nunique() == 200
    for group, rows in sentiment.groupby("group"):
        assert len(rows) == 4, group
        assert rows[["topic", "construction", "template"]].nunique().eq(1).all(), group
        template = TEMPLATE[rows["template"].iloc[0]]
        assert group.startswith(f"{template.name}-") and template.construction == rows["construction"].iloc[0]
        assert sorted(rows["polarity"]) == ["negative", "negative", "positive", "positive"], group
        for _, pair in rows.groupby("polarity"):
            assert sorted(pair["operator"]) == sorted(template.operators), group
            assert sorted(pair["label"]) == [0, 1], group
            (a, op_a), (b, op_b) = pair[["text", "operator"]].itertuples(index=False)
            # the twins are the same sentence but for the operator, which stands where the template has {op}
            pattern = re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template.text).replace(r"\{op\}", "(?P<op>.+)"))
            match_a, match_b = re.fullmatch(pattern, a), re.fullmatch(pattern, b)
            assert match_a and match_b and (match_a["op"], match_b["op"]) == (op_a, op_b), (a, b)
            assert a[: match_a.start("op")] + op_b + a[match_a.end("op") :] == b, (a, b)
        # the positive and negative versions share everything but the polarity words: with the operator
        # taken out, each word of one version that the other lacks is a polarity word, never an operator word
        versions = [Counter(words(text)) for text in rows.loc[rows["operator"] == template.operators[0], "text"]]
        differing = set((versions[0] - versions[1]) + (versions[1] - versions[0]))
        assert differing and not differing & set(words(" ".join(template.operators))), group


def test_sentiment_label_is_polarity_xor_operator(sentiment):
    assert sentiment["operator"].isin({op for template in TEMPLATES for op in template.operators}).all()
    reverses = sentiment["operator"].isin(REVERSING)
    assert (sentiment["label"] == ((sentiment["polarity"] == "positive") != reverses).astype(int)).all()
    for row in sentiment.itertuples():
        assert row.operator in TEMPLATE[row.template].operators, row.text


def test_sentiment_spot_checks(sentiment):
    """A reader's reading of a few rows, written by hand: the XOR is the intended sentiment."""
    label = dict(zip(sentiment["text"], sentiment["label"]))
    expected = {
        "The beach was every bit as crowded as I had expected.": 0,
        "The drive to work was nowhere near as stressful as everyone had said.": 1,
        "My old friend was wrong when he said we would drift apart after the move.": 1,
        "A year ago, the trains to the coast were always cancelled. That has since changed.": 1,
    }
    assert {text: label[text] for text in expected} == expected


@pytest.mark.parametrize("column", ["template", "construction", "topic", "polarity", "operator"])
def test_sentiment_metadata_alone_says_nothing(sentiment, column):
    """Every template (polarity slots abstracted), topic, content polarity and operator: half label 1."""
    assert (sentiment.groupby(column)["label"].mean() == 0.5).all()
    assert sentiment["construction"].nunique() >= 4


@pytest.mark.parametrize("n", [1, 2])
def test_sentiment_words_and_word_pairs_occur_equally_in_both_labels(sentiment, n):
    """Sentiment words (love, hate, quiet, noisy), operator words (not, but, didn, wrong, no) and every pair of
    adjacent words: as often in label 1 as in label 0, so a unigram+bigram model has nothing to read."""
    ones, zeros = (ngrams(sentiment[sentiment["label"] == label], n) for label in (1, 0))
    assert ones == zeros
    if n == 1:
        for word in ["love", "hate", "quiet", "noisy", "not", "but", "didn", "no", "still", "wrong", "right", "yes"]:
            assert ones[(word,)] >= 1, word


def test_sentiment_bag_of_words_and_length_are_at_chance(sentiment):
    assert grouped_accuracy(sentiment, bag_of_words, logistic) <= 0.55
    assert grouped_accuracy(sentiment, length, tree) <= 0.55


def test_reviews_groups_keep_template_instances_together(reviews):
    assert 100 <= reviews["group"].nunique() <= 200
    domain, frame, subject = reviews["group"].str.split("/", expand=True).T.to_numpy()
    assert (domain == reviews["domain"]).all() and (frame.astype(int) == reviews["frame"]).all()
    assert all(s.lower() in text.lower() for s, text in zip(subject, reviews["text"]))
    assert (reviews.groupby("frame").size() >= 130).all() and (reviews.groupby("domain").size() == 160).all()


def test_reviews_are_lexical_on_purpose(reviews):
    """The baseline: a bag of words solves it, text length does not."""
    assert grouped_accuracy(reviews, bag_of_words, logistic) >= 0.95
    assert grouped_accuracy(reviews, length, tree) <= 0.55
