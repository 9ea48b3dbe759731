"""What the enabled stages need from an imported data set, checked before anything trains.

Every stage needs question, answer and image(s). Beyond that:
- sft trains on reasoning chains: the `solution` column, unless `data.source.answer_only_sft`
  (targets are then ``<think></think><answer>A</answer>``; align_projector's ``cot`` data too);
- train_reward_model trains on preference pairs: the `chosen` and `rejected` columns, or
  `data.source.derive_pairs`, with pairs in train and in val (its calibration is fitted on the
  val pairs);
- align_projector with a (sub)step whose data is ``captions`` needs the `caption` column (a step
  with ``all`` uses captions where there are some, the responses otherwise).

`problems` checks column names (from a file's schema, before the run: `r1vflow validate` and
`run`); `problems_after_import` checks what the rows actually held.
"""

from __future__ import annotations

from pathlib import Path

from r1vflow.config import Experiment

REQUIRED = ("question", "answer")


def _needs(exp: Experiment) -> dict[str, str]:
    """role -> why, for the optional roles the enabled stages need."""
    needs: dict[str, str] = {}
    if not exp.data.source.answer_only_sft:
        needs["solution"] = ("sft trains on reasoning chains; or set "
                             "data.source.answer_only_sft=true to train on the answer alone")
    if exp.train_reward_model is not None and not exp.data.source.derive_pairs:
        needs["chosen"] = needs["rejected"] = (
            "train_reward_model trains on preference pairs; or set "
            "data.source.derive_pairs=true (wrong-answer and broken-format pairs), or "
            "train_reward_model: null (and sft.iterative: null, "
            "grpo.reward_weights.reward_model: 0)")
    align = exp.align_projector
    if align is not None and any(s.data == "captions" for s in [*align.substages, align.align]):
        needs["caption"] = ("an align_projector step has data: captions; or give those steps "
                            "data: cot")
    return needs


def problems(exp: Experiment, columns: set[str]) -> list[str]:
    """One message per missing column, given the column names the data has."""
    cols = exp.data.source.columns
    out = [f"data.source: no {role} column {getattr(cols, role)!r} (map another one with "
           f"--set data.source.columns.{role}=NAME)" for role in REQUIRED
           if getattr(cols, role) not in columns]
    if cols.image not in columns and cols.images not in columns:
        out.append(f"data.source: no image column {cols.image!r} or {cols.images!r} (map one "
                   "with --set data.source.columns.image=NAME)")
    for role, why in _needs(exp).items():
        if getattr(cols, role) not in columns:
            out.append(f"data.source: no {role} column {getattr(cols, role)!r}: {why}; or map "
                       f"the column with --set data.source.columns.{role}=NAME")
    return out


def problems_after_import(exp: Experiment, with_solution: int, captions: int,
                          pairs_by_split: dict[str, int]) -> list[str]:
    """Like `problems`, on what the imported rows held (a column can exist and be empty)."""
    needs, out = _needs(exp), []
    if "solution" in needs and not with_solution:
        out.append(f"data.source: no row has a solution: {needs['solution']}")
    if exp.train_reward_model is not None and not (pairs_by_split.get("train")
                                                   and pairs_by_split.get("val")):
        out.append(f"data.source: preference pairs per split {pairs_by_split or {}}; "
                   "train_reward_model needs pairs in train and val: give chosen/rejected in "
                   "more rows, set data.source.derive_pairs=true, or train_reward_model: null")
    if "caption" in needs and not captions:
        out.append(f"data.source: no row has a caption: {needs['caption']}")
    return out


def source_columns(exp: Experiment, hub: bool = False) -> set[str] | None:
    """Column names of a `files` source (every file's) or, with `hub`, of a hub source (its
    first rows: needs the hub); None for synthetic data or a hub source without `hub`."""
    from r1vflow.data.readers import discover, file_columns, hub_columns

    source = exp.data.source
    if source.kind == "hub" and hub:
        return hub_columns(source.hub, source.splits)
    if source.kind != "files":
        return None
    columns: set[str] = set()
    for files in discover(Path(source.path), source.splits,
                          source.allow_absolute_paths).values():
        for file in files:
            columns |= file_columns(file)
    return columns


def adapt(exp: Experiment, columns: set[str]) -> list[str]:
    """Fit the enabled stages to an ordinary question/answer(/solution) file, in place, as
    docs/data.md describes, with one notice line per change: no chosen/rejected columns ->
    `data.source.derive_pairs` (pairs made from the answers); no solution -> `answer_only_sft`;
    no caption -> align_projector's `captions` steps use `cot`. A setting the experiment gives
    explicitly is left alone (`problems` then names what is missing)."""
    source, cols, notices = exp.data.source, exp.data.source.columns, []
    given = source.model_fields_set
    if (exp.train_reward_model is not None and "derive_pairs" not in given
            and not source.derive_pairs
            and not {cols.chosen, cols.rejected} & columns):
        source.derive_pairs = True
        notices.append(f"data.source: no {cols.chosen}/{cols.rejected} columns, so "
                       "derive_pairs=true: train_reward_model trains on pairs made from the "
                       "answers (wrong-answer and broken-format responses)")
    if (cols.solution not in columns and "answer_only_sft" not in given
            and not source.answer_only_sft):
        source.answer_only_sft = True
        notices.append(f"data.source: no {cols.solution} column, so answer_only_sft=true: sft "
                       "trains on <think></think><answer>A</answer> targets")
    align = exp.align_projector
    if align is not None and cols.caption not in columns:
        steps = [s for s in [*align.substages, align.align] if s.data == "captions"]
        for step in steps:
            step.data = "cot"
        if steps:
            names = ", ".join(getattr(s, "name", "align") for s in steps)
            notices.append(f"align_projector: no {cols.caption} column, so its captions "
                           f"step(s) ({names}) train on data: cot")
    return notices


def check(exp: Experiment, hub: bool = False) -> list[str]:
    """Problems of a `files` (or, with `hub`, a hub) source for the enabled stages."""
    columns = source_columns(exp, hub)
    return [] if columns is None else problems(exp, columns)


def files_signature(exp: Experiment) -> str:
    """sha256 over the relative name, size and modification time of every data file of a
    `files` source (not of images they reference by path)."""
    import hashlib

    from r1vflow.data.readers import discover

    root = Path(exp.data.source.path)
    digest = hashlib.sha256()
    for files in discover(root, exp.data.source.splits,
                          exp.data.source.allow_absolute_paths).values():
        for file in files:
            stat = file.stat()
            rel = file.name if root.is_file() else file.relative_to(root).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
