"""`r1vflow eval score|run`: published benchmarks scored by their official rules.

    r1vflow eval score --benchmark mmmu --data /data/MMMU --predictions pred.jsonl --json out.json
    r1vflow eval run --model runs/smoke/.../model --benchmark mathvista --data /data/MathVista \\
        --samples 5 --temperature 1.0 --limit 100

Benchmarks: mmmu, mathvista, math500, mathvision, aime2024, olympiadbench (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from r1vflow.cli.common import dumps_json, fail

BenchOpt = Annotated[str, typer.Option("--benchmark", "-b", help="mmmu, mathvista, math500, "
                                       "mathvision, aime2024 or olympiadbench.")]
DataOpt = Annotated[Path, typer.Option("--data", help="The benchmark's file or folder, in its "
                                       "published layout (docs/evaluation.md).")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split (default: the "
                                              "benchmark's usual one, e.g. MMMU validation).")]
SubsetOpt = Annotated[list[str] | None, typer.Option(
    "--subset", help="Keep only this subject / task / subset (repeatable).")]
JsonOpt = Annotated[Path, typer.Option("--json", help="Where the score report goes.")]


def _fail(message: str) -> None:
    raise fail(message)


def _summary(report: dict) -> str:
    extra = "".join(f"  {k}={v:.4f}" for k, v in report["metrics"].items())
    passk = "".join(f"  {k}={v:.4f}" for k, v in report.items() if k.startswith("pass@"))
    return (f"{report['benchmark']}: n={report['n']} samples={report['samples']} "
            f"accuracy={report['accuracy']:.4f}{passk}{extra}")


def _items(benchmark: str, data: Path, split: str | None, subsets: list[str] | None,
           limit: int | None = None) -> list:
    from r1vflow.eval.benchmarks import iter_items

    return list(iter_items(benchmark, data, split=split, limit=limit, subsets=subsets))


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Score models on published benchmarks.")
    app.add_typer(group, name="eval")

    @group.command("score")
    def score(benchmark: BenchOpt, data: DataOpt,
              predictions: Annotated[Path, typer.Option(
                  "--predictions", help='JSON lines {"id": <benchmark id>, "response": text}; '
                                        "several lines per id for pass@k.")],
              json_out: JsonOpt, split: SplitOpt = None, subset: SubsetOpt = None) -> None:
        """Grade existing predictions with the benchmark's official rules."""
        from r1vflow.eval.benchmarks import BenchmarkDataError, get_benchmark
        from r1vflow.eval.benchmarks.run import read_predictions
        from r1vflow.eval.benchmarks.score import score_predictions

        try:
            bench = get_benchmark(benchmark)
            items = {item.id: item for item in _items(benchmark, data, split, subset)}
            report = score_predictions(benchmark, bench, items, read_predictions(predictions))
        except BenchmarkDataError as err:
            _fail(str(err))
        _write_json(json_out, report)
        typer.echo(_summary(report))

    @group.command("run")
    def run(model: Annotated[Path, typer.Option("--model", help="A saved r1vflow VLM folder.")],
            benchmark: BenchOpt, data: DataOpt, split: SplitOpt = None, subset: SubsetOpt = None,
            samples: Annotated[int, typer.Option("--samples", min=1, help="Responses per item "
                                                 "(the reports: 5); needs --temperature > 0.")] = 1,
            limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
            temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.0,
            max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 512,
            batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
            backend: Annotated[str, typer.Option(
                "--backend", help="Generation engine: auto (vLLM where it serves the model, "
                                  "else transformers), vllm or transformers.")] = "auto",
            predictions: Annotated[Path | None, typer.Option(
                "--predictions", help="Where the responses go (default <benchmark>.predictions"
                                      ".jsonl).")] = None,
            json_out: Annotated[Path | None, typer.Option(
                "--json", help="Where the report goes (default <benchmark>.json).")] = None) -> None:
        """Generate responses with a model (batched; on a GPU when there is one) and score them;
        a progress line (items done, tokens/s, ETA) goes to stderr after every batch."""
        from r1vflow.eval.benchmarks.run import write_jsonl

        if samples > 1 and temperature == 0:
            _fail("--samples > 1 needs --temperature > 0 (greedy copies would be identical)")
        if backend not in ("auto", "vllm", "transformers"):
            _fail(f"--backend {backend!r}: choose auto, vllm or transformers")
        if not (model / "config.json").is_file():
            _fail(f"{model}: not a saved model folder (no config.json)")
        report = _generate(model, benchmark, lambda: _items(benchmark, data, split, subset, limit),
                           samples, max_new_tokens, batch_size, temperature, backend)
        predictions = predictions or Path(f"{benchmark}.predictions.jsonl")
        try:
            predictions.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(predictions, report["items"])
        except OSError as err:
            _fail(f"{predictions}: cannot write the predictions ({err.strerror or err})")
        _write_json(json_out or Path(f"{benchmark}.json"), report)
        typer.echo(_summary(report))


def _generate(model_dir: Path, benchmark: str, items: Callable[[], list], samples: int,
              max_new_tokens: int, batch_size: int, temperature: float,
              backend: str = "auto") -> dict:
    """Read the items, load the model, build the generation engine (its choice on stderr),
    generate (progress on stderr) and score: the report; a benchmark or model problem
    (ValueError: a model that won't load) is one error line."""
    from r1vflow.config.generation import GenerationConfig
    from r1vflow.eval.benchmarks import BenchmarkDataError, get_benchmark
    from r1vflow.eval.benchmarks.run import run_benchmark
    from r1vflow.generation import build_engine

    try:
        bench, read = get_benchmark(benchmark), items()
        vlm, tokenizer = _load(model_dir)
        engine = build_engine(GenerationConfig(backend=backend, batch_size=batch_size), vlm,
                              tokenizer, say=lambda line: typer.echo(line, err=True))
        try:
            return run_benchmark(benchmark, bench, vlm, tokenizer, read, None, samples,
                                 max_new_tokens, batch_size, temperature,
                                 on_batch=_progress(benchmark), engine=engine)
        finally:
            engine.close()
    except (BenchmarkDataError, ValueError) as err:
        _fail(str(err))


def progress_line(name: str, done: int, total: int, tokens: int, seconds: float) -> str:
    """``mathvista: 16/100 items, 2,048 tokens, 85.3 tokens/s, ETA 0:01:12``."""
    rate = tokens / seconds if seconds > 0 else 0.0
    left = seconds / done * (total - done) if done else 0.0
    eta = f"{int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
    return (f"{name}: {done}/{total} items, {tokens:,} tokens, {rate:.1f} tokens/s, "
            f"ETA {eta}")


def _progress(name: str):
    """Prints a progress line to stderr after every batch."""
    def on_batch(done: int, total: int, tokens: int, seconds: float) -> None:
        typer.echo(progress_line(name, done, total, tokens, seconds), err=True)
    return on_batch


def _write_json(path: Path, report: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps_json(report, indent=1, ensure_ascii=False) + "\n")
    except OSError as err:  # a directory, a full disk, no permission
        _fail(f"{path}: cannot write the report ({err.strerror or err})")


def _load(model_dir: Path):
    import torch

    from r1vflow.models.io import load_model
    from r1vflow.models.tokenizer import load_tokenizer

    model = load_model(model_dir, "vlm")
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, load_tokenizer(model_dir)
