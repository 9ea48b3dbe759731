"""`r1vflow rollout check`: the vLLM engine against transformers on a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r1vflow.cli.common import dumps_json, fail


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="The generation engine GRPO samples from.")
    app.add_typer(group, name="rollout")

    @group.command("check")
    def check(model: Annotated[Path, typer.Argument(help="A saved r1vflow model folder.")],
              perturb: Annotated[bool, typer.Option(
                  "--perturb", help="Move every weight by a seeded random amount and sync it "
                                    "into vLLM first (what each optimizer step does).")] = False,
              json_out: Annotated[Path | None, typer.Option(
                  "--json", help="Write the result (JSON) here too.")] = None,
              max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 24,
              max_gap: Annotated[float, typer.Option(
                  "--max-gap", min=0.0, help="Largest per-token log-probability gap that "
                                             "passes.")] = 1e-2) -> None:
        """Greedy completions and log-probabilities of vLLM against transformers on a few
        prompts with images; exits 1 when a prompt's tokens differ or the gap is too large."""
        from r1vflow.generation.check import WeightSyncError, rollout_check

        if not (model / "config.json").is_file():
            raise fail(f"{model}: not a saved model folder (no config.json)")
        try:
            result = rollout_check(model, perturb, max_new_tokens, max_gap=max_gap)
        except (WeightSyncError, ValueError) as err:
            raise fail(f"rollout check: {err}") from None
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(dumps_json(result.as_dict()) + "\n")
        verdict = "passed" if result.passed else "FAILED"
        typer.echo(f"rollout check {verdict}: {result.family}, {result.prompts} prompts"
                   f"{' after a perturbed sync' if perturb else ''}: greedy tokens match on "
                   f"{result.greedy_match:.0%} (needs 100%), largest log-prob gap "
                   f"{result.logprob_gap_max:.2e} (needs <= {max_gap:g}), sync "
                   f"{result.sync_seconds:.2f} s")
        if not result.passed:
            raise typer.Exit(1)
