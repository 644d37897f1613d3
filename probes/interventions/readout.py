"""What the model itself does with a concept, read without a probe: the log-odds of a verbalised answer after a
short question appended to each text (docs/methods.md §8.1).

The question is appended *after* the text's own tokens, so the text stays an exact prefix and the residual at
its last token is the vector the probes read: an intervention fitted on the stored vectors applies to the very
state the readout pass computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class TaskReadout:
    """A question appended to every text and the answers that mean label 1 (``positive``) and label 0.

    Each answer is a set of single-token variants (" true", " True") whose probabilities are summed, so a model's
    capitalisation habit does not decide its answer.
    """

    suffix: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError("a readout needs at least one positive and one negative answer")
        if set(self.positive) & set(self.negative):
            raise ValueError(
                f"answers {sorted(set(self.positive) & set(self.negative))} are both positive and negative"
            )


_TRUE_FALSE = TaskReadout("\nTrue or false?\nAnswer:", (" true", " True"), (" false", " False"))
_YES_NO = TaskReadout("\nAnswer:", (" Yes", " yes"), (" No", " no"))

# The built-in tasks' questions; coinflip and syllogisms end in their own question, so only "Answer:" follows.
BUILT_IN_READOUTS: dict[str, TaskReadout] = {
    "cities": _TRUE_FALSE,
    "comparisons": _TRUE_FALSE,
    "sentiment": TaskReadout("\nGood news or bad news?\nAnswer:", (" good", " Good"), (" bad", " Bad")),
    "reviews": TaskReadout("\nPositive or negative?\nAnswer:", (" positive", " Positive"), (" negative", " Negative")),
    "coinflip": _YES_NO,
    "syllogisms": _YES_NO,
}


def task_readout(task: str, configured: dict | None) -> TaskReadout | None:
    """The config's readout for a task, else the built-in one of that name, else None (no behavioural rows)."""
    if configured is not None:
        return TaskReadout(configured["suffix"], tuple(configured["positive"]), tuple(configured["negative"]))
    return BUILT_IN_READOUTS.get(task)


def verbaliser_ids(model: HookedTransformer, readout: TaskReadout) -> tuple[list[int], list[int]]:
    """The token ids of the positive and negative answers; each answer must be one token of this model."""
    ids = []
    for answers in (readout.positive, readout.negative):
        side = []
        for answer in answers:
            tokens = model.to_str_tokens(answer, prepend_bos=False)
            if len(tokens) != 1:
                raise ValueError(
                    f"answer {answer!r} is {len(tokens)} tokens for this model ({tokens}); "
                    "a readout's answers must be single tokens"
                )
            side.append(int(model.to_single_token(answer)))
        ids.append(side)
    return ids[0], ids[1]


def suffix_ids(model: HookedTransformer, readout: TaskReadout):
    """The question's tokens, tokenised on their own (no BOS) and appended to each text's ids."""
    return model.to_tokens(readout.suffix, prepend_bos=False, move_to_device=False)[0]


def pair_auc(scores: np.ndarray, y: np.ndarray, groups: np.ndarray | None, weights: np.ndarray | None = None):
    """Within-group pair-ordering AUC: over every (label-1, label-0) pair of rows of one group, how often the
    label-1 row scores higher (ties count half). A bias constant within a group (an answer bias, a template)
    cancels, so chance is 0.5 whatever the model's bias. Without groups it is the plain ROC AUC.

    ``weights`` (n_boot, n) are group-bootstrap multiplicities (equal within a group); the result is then one AUC
    per resample, each pair counting its group's multiplicity.
    """
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    codes = np.zeros(len(y), dtype=np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
    wins = np.zeros(codes.max() + 1)
    pairs = np.zeros(codes.max() + 1)
    first = np.zeros(codes.max() + 1, dtype=np.int64)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        first[code] = rows[0]
        pos, neg = scores[rows[y[rows] == 1]], scores[rows[y[rows] == 0]]
        difference = pos[:, None] - neg[None, :]
        wins[code] = (difference > 0).sum() + 0.5 * (difference == 0).sum()
        pairs[code] = difference.size
    if pairs.sum() == 0:
        raise ValueError("no group holds both classes, so no pair can be ordered")
    if weights is None:
        return float(wins.sum() / pairs.sum())
    if groups is None:
        raise ValueError("resampled pair AUCs need groups (rows resampled alone break no pairs to count)")
    multiplicity = np.asarray(weights)[:, first]
    return (multiplicity @ wins) / np.maximum(multiplicity @ pairs, 1e-12)


def threshold_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """Each row's fold for the cross-fitted decision threshold: whole groups, classes balanced."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    placeholder = np.zeros((len(y), 1))
    splitter = (
        StratifiedKFold(folds, shuffle=True, random_state=seed)
        if groups is None
        else StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    )
    fold_of = np.empty(len(y), dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(placeholder, y, groups)):
        fold_of[test] = fold
    return fold_of


def crossfit_correct(scores: np.ndarray, y: np.ndarray, fold_of: np.ndarray, reference: np.ndarray | None = None):
    """Whether each row's answer is right against a threshold chosen on the other folds: the median of the
    ``reference`` log-odds (default ``scores``) there, the behavioural analogue of a probe's intercept, which
    never sees the row's label. ``scores`` may be (..., n): edited log-odds read with the clean threshold."""
    reference = np.asarray(scores if reference is None else reference, dtype=np.float64)
    thresholds = np.empty(len(y))
    for fold in np.unique(fold_of):
        thresholds[fold_of == fold] = np.median(reference[fold_of != fold])
    return ((np.asarray(scores) > thresholds) == (np.asarray(y) == 1)).astype(np.float64)


@dataclass(frozen=True)
class ReadoutSkill:
    """Whether the model can do a task behaviourally: its pair AUC and cross-fitted accuracy with intervals."""

    auc: float
    auc_lo: float
    auc_hi: float
    accuracy: float
    accuracy_lo: float
    accuracy_hi: float
    raw_accuracy: float
    can_do: bool


def readout_skill(
    logodds: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    fold_of: np.ndarray,
    weights: np.ndarray,
    ci: float,
    min_auc: float,
) -> ReadoutSkill:
    """The model *can do* a task when its pair AUC's interval lies above chance and the AUC reaches ``min_auc``:
    the interval alone would pass a tiny, useless skill on many rows, the threshold alone noise on few."""
    from probes.resampling import percentile_interval, resampled_means

    auc = pair_auc(logodds, y, groups)
    resampled = pair_auc(logodds, y, groups, weights) if groups is not None else _row_aucs(logodds, y, weights)
    auc_lo, auc_hi = percentile_interval(resampled, ci)
    correct = crossfit_correct(logodds, y, fold_of)
    accuracy_lo, accuracy_hi = percentile_interval(resampled_means(weights, correct), ci)
    return ReadoutSkill(
        auc=auc,
        auc_lo=float(auc_lo),
        auc_hi=float(auc_hi),
        accuracy=float(correct.mean()),
        accuracy_lo=float(accuracy_lo),
        accuracy_hi=float(accuracy_hi),
        raw_accuracy=float(((np.asarray(logodds) > 0) == (np.asarray(y) == 1)).mean()),
        can_do=bool(auc_lo > 0.5 and auc >= min_auc),
    )


def _row_aucs(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row-bootstrap resample (tasks without groups): a pair counts the product of its rows'
    multiplicities."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(y) == 1
    difference = scores[positive][:, None] - scores[~positive][None, :]
    wins = (difference > 0) + 0.5 * (difference == 0)
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    return np.einsum("bi,ij,bj->b", w_pos, wins, w_neg) / np.maximum(w_pos.sum(1) * w_neg.sum(1), 1e-12)


def answer_logodds(model: HookedTransformer, final_resid, positive: Sequence[int], negative: Sequence[int]):
    """log p(positive answers) − log p(negative answers) from the last block's output at the answer position
    (..., d): the final norm and only the answers' columns of the unembedding, since the normaliser cancels."""
    import torch
    from transformer_lens.utilities.activation_functions import apply_softcap

    normed = model.ln_final(final_resid)
    ids = torch.tensor([*positive, *negative], device=normed.device)
    logits = normed @ model.W_U[:, ids] + model.b_U[ids]
    logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
    n_pos = len(positive)
    return torch.logsumexp(logits[..., :n_pos], -1) - torch.logsumexp(logits[..., n_pos:], -1)


def verbaliser_mass(model: HookedTransformer, final_resid, ids: Sequence[int]):
    """Total probability the full output distribution puts on the answers: a model near 0 is not answering."""
    import torch
    from transformer_lens.utilities.activation_functions import apply_softcap

    logits = apply_softcap(model.unembed(model.ln_final(final_resid)), model.cfg.output_logits_soft_cap)
    return torch.exp(torch.logsumexp(logits[..., list(ids)], -1) - torch.logsumexp(logits, -1))
