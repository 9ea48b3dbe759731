"""`r1vflow models import`: released checkpoints -> an r1vflow model directory.

    r1vflow models import ckpt/Qwen2.5-VL-7B-Instruct --output models/qwen-base
    r1vflow models import ckpt/Skywork-R1V2-38B --output models/r1v2-base     # internvl_chat
    r1vflow models import --vision ckpt/siglip --llm ckpt/r1-distill \\
        --substitute ckpt/qwen-instruct --output models/r1v-base
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r1vflow.cli.common import fail


def register(app: typer.Typer) -> None:
    models = typer.Typer(no_args_is_help=True, help="Import released checkpoints.")
    app.add_typer(models, name="models")

    @models.command("import")
    def import_(
        source: Annotated[str | None, typer.Argument(
            help="Whole-VLM checkpoint directory (qwen2_5_vl, qwen3_vl, internvl, "
                 "internvl_chat).")] = None,
        output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to "
                                              "write.")] = Path("models/base"),
        family: Annotated[str | None, typer.Option(help="Override the family read from "
                                                   "config.json.")] = None,
        vision: Annotated[str | None, typer.Option(help="Composition: SigLIP / CLIP vision "
                                                   "tower checkpoint.")] = None,
        llm: Annotated[str | None, typer.Option(help="Composition: reasoning LLM.")] = None,
        substitute: Annotated[str | None, typer.Option(help="Composition: substitute LLM "
                                                       "(align_projector).")] = None,
        substitute_output: Annotated[Path | None, typer.Option(
            help="Where the substitute LLM goes (default: <output>-substitute).")] = None,
        dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "float32",
        min_pixels: Annotated[int | None, typer.Option(help="Qwen-VL min_pixels.")] = None,
        max_pixels: Annotated[int | None, typer.Option(help="Qwen-VL max_pixels.")] = None,
    ) -> None:
        """Import a whole VLM (SOURCE) or R1V's composition (--vision and --llm)."""
        from r1vflow.models.importer import DTYPES, import_checkpoint, import_composition

        if dtype not in DTYPES:
            _fail(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        composition = vision is not None or llm is not None
        if (source is not None) == composition or (composition and None in (vision, llm)):
            _fail("give SOURCE (a whole VLM) or both --vision and --llm (the composition)")
        try:
            if source is not None:
                made = {"base_model": import_checkpoint(source, output, family, dtype,
                                                        min_pixels, max_pixels)}
            else:
                made = import_composition(
                    vision, llm, output, substitute=substitute, dtype=dtype,
                    substitute_output=substitute_output or Path(f"{output}-substitute"))
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            _fail(str(err))
        for name, path in made.items():
            typer.echo(f"{name}: {path}", err=True)


def _fail(message: str) -> None:
    raise fail(message)
