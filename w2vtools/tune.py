"""Tune decoder settings on stored emissions (``w2v decode --tune``): grid or random search.

The acoustic model never reruns: the emissions are read once, every trial decodes them with
other :class:`~w2vtools.decode.DecoderOptions` and scores the result against the references,
trials run in parallel worker processes (spawned: a fork of a process whose torch/OpenMP
threads hold locks can hang; each worker gets the emissions once, at its start). The
best setting (lowest WER; ties go to the earlier trial in grid order) is written as a small
YAML that ``w2v decode --config`` reads.

A search space names :class:`~w2vtools.decode.DecoderOptions` fields, each with a range
``start:stop:step`` (stop included), a list ``a|b|c``, or one value.

With ``--rescore`` (a Transformer LM reordering the ``--nbest`` list, :mod:`w2vtools.rescore`),
``rescore_weight`` is tunable too, and costs almost nothing: trials that differ only in it
share one beam search and one set of scores per hypothesis (the Transformer LM scores every
hypothesis of every utterance once, in token-budget batches), and are only re-summed.

Example:
    >>> parse_space("lm_weight=0:1:0.5,beam=50|100")
    {'lm_weight': [0.0, 0.5, 1.0], 'beam': [50, 100]}
    >>> grid({"a": [1, 2], "b": [3]})
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import random
import sys
from pathlib import Path
from typing import Mapping, Sequence

import torch
import yaml

from w2vtools.decode import BeamSearch, DecoderOptions, viterbi
from w2vtools.rescore import Rescorer, Weights, rerank
from w2vtools.emissions import stored_emissions
from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write
from w2vtools.formats.text import read_text_table
from w2vtools.score import score_tables

#: Fields a search may vary, with their type.
TUNABLE = {"lm_weight": float, "word_score": float, "sil_score": float, "unk_score": float, "beam": int,
           "beam_threshold": float, "beam_size_token": int, "blank_skip": float, "rescore_weight": float}
#: Fields that only reweigh a rescored n-best list: trials differing only in these share one beam search.
RESCORING_ONLY = ("rescore_weight",)
#: Fields a --config file may set (the search's results and everything that names the decoder).
CONFIGURABLE = {f.name for f in dataclasses.fields(DecoderOptions)}


def _values(name: str, spec: str) -> list:
    kind = TUNABLE[name]
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [kind(round(start + i * step, 10)) for i in range(count)]
        return [kind(x) for x in spec.split("|")]
    except ValueError:
        raise W2VError(f"--tune {name}={spec}: give start:stop:step (step > 0), a|b|c, or one {kind.__name__}") from None


def parse_space(spec: str) -> dict[str, list]:
    """``name=range,name=range`` -> ``{name: [values]}`` (see the module docstring)."""
    space: dict[str, list] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, values = part.partition("=")
        if not sep or name not in TUNABLE:
            raise W2VError(f"--tune: {part!r} is not NAME=VALUES with NAME one of {', '.join(TUNABLE)}")
        space[name] = _values(name, values)
    if not space:
        raise W2VError("--tune: nothing to tune")
    return space


def grid(space: Mapping[str, Sequence]) -> list[dict]:
    """Every combination, the last name varying fastest."""
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[n] for n in names))]


def random_trials(space: Mapping[str, Sequence], n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct points of the grid drawn at random (all of it when it is smaller)."""
    points = grid(space)
    return points if n >= len(points) else random.Random(seed).sample(points, n)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One decoded setting and its score on the references."""

    settings: dict
    wer: float
    errors: int
    words: int


# The state a worker decodes with: set once per process (in the parent too when jobs == 1).
_STATE: dict = {}


def _init_worker(state: dict) -> None:
    torch.set_num_threads(1)  # the trials are the parallelism
    _STATE.update(state)


def _run_group(group: list[dict]) -> list[Trial]:
    """The trials of one first-pass setting: one decode (and, rescoring, one scoring) of every utterance,
    then each trial's weights."""
    opts = dataclasses.replace(_STATE["base"], **group[0])
    tokens, emissions, refs = _STATE["tokens"], _STATE["emissions"], _STATE["refs"]
    if opts.decoder == "viterbi":
        hyps = {uid: viterbi(lp, tokens).words for uid, lp in emissions.items()}
        return [_trial(settings, hyps, refs) for settings in group]
    search = BeamSearch(tokens, opts)
    nbest = {uid: search(lp) for uid, lp in emissions.items()}
    if not opts.rescore:
        return [_trial(settings, {u: h[0].words for u, h in nbest.items()}, refs) for settings in group]
    if "rescorer" not in _STATE:  # one per process: the Transformer LM keeps its scores across groups
        _STATE["rescorer"] = Rescorer(tokens, rescore=opts.rescore, lm=opts.lm, letter_ngram=opts.decoder == "beam",
                                      device=_STATE.get("device", "cpu"))
    rescorer = _STATE["rescorer"]
    rescorer.prepare(list(nbest.values()))
    candidates = {uid: rescorer.candidates(emissions[uid], hyps) for uid, hyps in nbest.items()}
    trials = []
    for settings in group:
        weights = Weights.of(dataclasses.replace(opts, **settings))
        trials.append(_trial(settings, {u: rerank(c, weights)[0].words for u, c in candidates.items()}, refs))
    return trials


def _trial(settings: dict, hyps: Mapping[str, Sequence[str]], refs) -> Trial:
    result = score_tables(refs, hyps, mode="present")
    return Trial(settings, result.error_rate, result.errors, result.num_tokens)


def first_pass_groups(trials: Sequence[dict]) -> list[list[int]]:
    """Trial indices grouped by their first-pass settings (all but :data:`RESCORING_ONLY`), in trial order.

    Example:
        >>> first_pass_groups([{"lm_weight": 1, "rescore_weight": 0}, {"lm_weight": 2, "rescore_weight": 0},
        ...                    {"lm_weight": 1, "rescore_weight": 1}])
        [[0, 2], [1]]
    """
    groups: dict[tuple, list[int]] = {}
    for i, settings in enumerate(trials):
        key = tuple(sorted((k, v) for k, v in settings.items() if k not in RESCORING_ONLY))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def tune(emissions: Mapping[str, torch.Tensor], tokens: Sequence[str], refs: Mapping[str, Sequence[str]],
         base: DecoderOptions, trials: Sequence[dict], *, jobs: int = 1, device: str = "cpu") -> list[Trial]:
    """Decode and score every trial; returns them best first (stable: ties keep trial order).

    Raises:
        W2VError: no reference has an emission.
    """
    shared = {u: lp for u, lp in emissions.items() if u in refs}
    if not shared:
        raise W2VError("--ref: no reference utterance has an emission (do the ids match?)")
    if base.rescore is None and any(k in RESCORING_ONLY for t in trials for k in t):
        raise W2VError(f"--tune {', '.join(RESCORING_ONLY)}: needs --rescore LM.pt (and --nbest N)")
    state = dict(base=base, tokens=list(tokens), emissions=shared, refs={u: refs[u] for u in shared}, device=device)
    groups = first_pass_groups(trials)
    tasks = [[trials[i] for i in group] for group in groups]
    if jobs > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)), _init_worker, (state,)) as pool:
            grouped = pool.map(_run_group, tasks, chunksize=1)
    else:
        _STATE.update(state)
        try:
            grouped = [_run_group(task) for task in tasks]
        finally:
            _STATE.clear()
    results: list[Trial] = [None] * len(trials)  # type: ignore[list-item]
    for group, group_results in zip(groups, grouped):
        for i, trial in zip(group, group_results):
            results[i] = trial
    order = sorted(range(len(results)), key=lambda i: (results[i].wer, i))
    return [results[i] for i in order]


def format_table(results: Sequence[Trial]) -> str:
    """The trials as a table, best first: one column per tuned field, then WER and errors."""
    names = list(results[0].settings)
    rows = [names + ["WER", "errors"]]
    rows += [[f"{t.settings[n]:g}" for n in names] + [f"{t.wer:.2f}", f"{t.errors}/{t.words}"] for t in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def write_best(path: str, base: DecoderOptions, best: Trial, *, ref: str, emissions: str) -> None:
    """The best setting, with the decoder it applies to, as YAML for ``w2v decode --config``."""
    opts = dataclasses.replace(base, **best.settings)
    settings = {k: v for k, v in dataclasses.asdict(opts).items() if k in CONFIGURABLE and v is not None
                and (opts.rescore or k not in ("nbest", "rescore_weight"))}
    header = (f"# w2v decode --tune: best of the trials on {emissions} against {ref}: "
              f"WER {best.wer:.2f} ({best.errors}/{best.words})\n")
    with atomic_write(path) as f:
        f.write(header + yaml.safe_dump(settings, sort_keys=False))


def read_config(path: str | Path) -> dict:
    """Decoder settings from a ``--config`` YAML (what :func:`write_best` wrote, or by hand).

    Raises:
        W2VError: not a mapping, or a key that is not a decoder setting.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise W2VError(f"{path}: cannot read decoder settings: {e}") from None
    if not isinstance(data, dict):
        raise W2VError(f"{path}: expected a mapping of decoder settings")
    unknown = sorted(set(data) - CONFIGURABLE)
    if unknown:
        raise W2VError(f"{path}: not decoder settings: {', '.join(unknown)} (known: {', '.join(sorted(CONFIGURABLE))})")
    return data


def tune_decoder(emissions: str, ref: str, base: DecoderOptions, space: str, *, output: str = "-",
                 dict_path: str | None = None, trials: int | None = None, jobs: int = 1, seed: int = 0,
                 device: str = "cpu") -> list[Trial]:
    """``w2v decode --emissions E --tune SPACE --ref TEXT``: search, print the table (stderr),
    write the best setting (YAML) to ``output``; returns the trials, best first."""
    if base.nbest != 1 and not base.rescore:
        raise W2VError("--tune scores the 1-best: leave --nbest at 1 (or give --rescore to tune an n-best rescoring)")
    if base.rescore and (base.decoder == "viterbi" or base.nbest < 2):
        raise W2VError("--rescore reorders an n-best list: give --decoder kenlm (or beam) and --nbest N (N >= 2)")
    source = stored_emissions(emissions, dict_path=dict_path)
    log_probs = {uid: torch.log_softmax(x.float(), dim=-1) for uid, x in source.items}
    refs = read_text_table(ref)
    points = random_trials(parse_space(space), trials, seed) if trials else grid(parse_space(space))
    results = tune(log_probs, source.tokens, refs, base, points, jobs=jobs, device=device)
    print(format_table(results), file=sys.stderr)
    write_best(output, base, results[0], ref=ref, emissions=emissions)
    return results
