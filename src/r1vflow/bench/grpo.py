"""Benchmark our GRPO against TRL's GRPOTrainer, and the SSB against no SSB, in one run.

    r1vflow bench grpo --json OUT        (the CLI calls run_bench)

Policy: both trainers train the same tiny text-only Qwen2 causal LM (the bootstrap LLM: a
byte-level BPE tokenizer and a Qwen2 decoder pretrained here on the "reasoning" text corpus,
i.e. the task families stated in words, with <think>/<answer>). TRL's GRPOTrainer trains a
VLM only through a multimodal *processor*, which the tiny Llava models of this project do not
have, so the fair common ground is the text-only policy: the prompts are the text versions of
the tasks (`r1vflow.data.synth.text_corpus`: the scene in words, then the question), the
rewards the same accuracy + format callables (`r1vflow.rl.rewards`), weights 1 + 1.

Task mix: a small pool (`tasks_per_family` questions of each family) that the policy comes to
master, sampled at temperature 0.7, so groups saturate (all right, or all wrong) as training
goes on: the vanishing advantages the SSB is for. Every run below uses it.

1. speed (`ours`, `trl`): same initial weights, prompts, group size, prompts per step, max new
   tokens, steps, learning rate and cosine schedule, temperature (no top-k/top-p), clip 0.2,
   no KL, seq-mean-token-mean loss (TRL loss_type="grpo"), group-std scaling, one optimizer
   step per rollout batch, same number of CPU threads. TRL's gradient checkpointing (on by
   default in its GRPOConfig) is turned off, as ours does not recompute activations. Each
   trainer's whole train() call is timed, in interleaved rounds; `speedup` is the median over
   rounds of (TRL seconds / our seconds); each trainer's figures come from its median round.
   `prompts_per_s` = steps x prompts_per_step / seconds, `tokens_per_s` = completion tokens /
   seconds. Ours runs without SSB here (TRL has none). `where_time_goes`: our seconds per
   phase (rollout / reward / train); TRL's `rollout_s` is the time inside its
   GRPOTrainer._generate (its rollouts: tokenize, generate, decode), `step_time_sum` its own
   per-step timer. `rollout_tokens_per_s` = completion tokens / rollout seconds, for each.
2. SSB (`ssb.on`, `ssb.off`): our trainer with and without the buffer (`off` is the first
   timed `ours` run). `effective_ratio_late` is the mean share of non-zero-advantage samples in
   the trained batch (after SSB) over the second half of the steps (`_before_late`: before
   SSB); `accuracy` is greedy accuracy on held-out prompts from another seed stream.
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from r1vflow.config import GRPOConfig, SSBConfig
from r1vflow.config.generation import GenerationConfig
from r1vflow.data.synth import text_corpus, tokenizer_corpus
from r1vflow.generation import Sampling, TransformersEngine, build_engine
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import build_tiny_llm
from r1vflow.rl.grpo import GRPOPrompt, train_grpo
from r1vflow.rl.rewards import accuracy_reward, format_reward, hybrid_reward
from r1vflow.rl.rollout import Rollout
from r1vflow.train.bootstrap import PretrainSettings, pretrain_llm

FAMILIES = ("counting", "digit_arithmetic", "comparison")
TextTask = tuple[str, str]  # (prompt text, gold answer)


def text_tasks(n_per_family: int, seed: int) -> list[TextTask]:
    """Text versions of the tasks: "The picture shows: <scene>. <question> " -> answer."""
    tasks: list[TextTask] = []
    for family in FAMILIES:
        for doc in text_corpus("reasoning", n_per_family, seed, families=[family]):
            if "<think>" in doc:  # every fifth document is an arithmetic fact, not a task
                answer = doc[doc.index("<answer>") + len("<answer>") : doc.index("</answer>")]
                tasks.append((doc[: doc.index("<think>")], answer))
    return tasks


def build_text_policy(seed: int, pretrain_steps: int, hidden: int = 64, layers: int = 2):
    """(tokenizer, Qwen2 LM pretrained on the reasoning text corpus, pretraining seconds)."""
    tokenizer = train_tokenizer(tokenizer_corpus(seed), 512)
    torch.manual_seed(seed)
    llm = build_tiny_llm(len(tokenizer), hidden, layers, 2, 2 * hidden, 256)
    texts = text_corpus("reasoning", 3000, seed + 20_011)
    stats = pretrain_llm(llm, tokenizer, texts, PretrainSettings(
        steps=pretrain_steps, lr=3e-3, batch_size=32, max_length=160, seed=seed, progress=False))
    return tokenizer, llm, stats["seconds"]


def _reward():
    return hybrid_reward({"accuracy": accuracy_reward, "format": format_reward},
                         {"accuracy": 1.0, "format": 1.0})


def _prompts(tokenizer, tasks: list[TextTask]) -> list[GRPOPrompt]:
    return [GRPOPrompt(str(i), tokenizer.encode(p, add_special_tokens=False), a, p)
            for i, (p, a) in enumerate(tasks)]


def greedy_accuracy(model, tokenizer, tasks: list[TextTask], max_new_tokens: int) -> float:
    """Share of `tasks` answered right with greedy decoding."""
    engine = TransformersEngine(model, tokenizer, batch_size=128)
    ids = [tokenizer.encode(p, add_special_tokens=False) for p, _ in tasks]
    texts = [g[0].text for g in engine.generate(ids, None, Sampling(max_new_tokens))]
    return sum(accuracy_reward(texts, [a for _, a in tasks])) / len(tasks)


def run_ours(model, tokenizer, tasks, grpo: GRPOConfig, backend: str = "transformers") -> dict:
    """Our trainer with the settings of a `grpo` config section (as the grpo stage runs it:
    its SSB when `grpo.ssb.enabled`, its monitor), generating on `backend` (transformers or a
    colocated vLLM engine; its build is timed apart as `engine_build_s`: it happens once per
    run, not per step)."""
    steps, prompts_per_step = grpo.steps, grpo.prompts_per_step
    built = time.perf_counter()
    engine = build_engine(GenerationConfig(backend=backend, batch_size=prompts_per_step,
                                           max_model_len=256), model, tokenizer, say=None)
    build_s = time.perf_counter() - built
    rollout = Rollout(engine, grpo.max_new_tokens, grpo.temperature)
    start = time.perf_counter()
    result = train_grpo(model, tokenizer, _prompts(tokenizer, tasks), _reward(), rollout, grpo,
                        progress=False)
    seconds = time.perf_counter() - start
    engine.close()
    tokens = sum(h["completion_tokens"] for h in result.history)
    s = result.summary
    return {
        "seconds": seconds,
        "prompts_per_s": steps * prompts_per_step / seconds,
        "tokens_per_s": tokens / seconds,
        "completion_tokens": tokens,
        "backend": backend, "engine_build_s": build_s,
        "rollout_tokens_per_s": s["rollout_tokens_per_s"],
        "weight_syncs": s["weight_syncs"],
        "logprob_gap_mean": s.get("logprob_gap_mean"),
        "where_time_goes": {k: s[f"{k}_mean"] * steps for k in ("rollout_s", "reward_s",
                                                                 "train_s", "sync_s")},
        "effective_ratio_late": s["effective_ratio_late"],
        "effective_ratio_before_late": s["effective_ratio_before_late"],
        "effective_ratio_mean": s["effective_ratio_mean"],
        "train_accuracy_late": s.get("accuracy_late"),
        "history": [{k: round(v, 4) for k, v in h.items() if k in _HISTORY_KEYS}
                    for h in result.history],
    }


_HISTORY_KEYS = ("accuracy", "format_rate", "effective_ratio_before", "effective_ratio_after",
                 "replay_fraction", "buffer_size", "loss", "completion_tokens_mean", "step_s")


_TRL_LOSS = {"seq-mean-token-mean": "grpo", "token-mean": "dapo",
             "seq-mean-token-sum-norm": "dr_grpo"}


def run_trl(model, tokenizer, tasks, grpo: GRPOConfig, workdir: Path) -> dict:
    """TRL GRPOTrainer on CPU with the settings matching `run_ours` (see module docstring)."""
    if (grpo.ppo_epochs, grpo.warmup_ratio, grpo.clip_low) != (1, 0.0, grpo.clip_high) or \
            grpo.loss == "gspo":
        raise ValueError("run_trl maps one optimizer step per rollout batch, no warmup, a "
                         "symmetric clip range and per-token ratios (loss grpo or dr_grpo) only")
    steps, prompts_per_step, group_size = grpo.steps, grpo.prompts_per_step, grpo.group_size
    seed = grpo.seed
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def accuracy(prompts, completions, answer, **kw):
        return accuracy_reward(completions, answer)

    def fmt(prompts, completions, answer, **kw):
        return format_reward(completions, answer)

    collected: list[dict] = []

    class Collect(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                collected.append(dict(logs))

    args = GRPOConfig(
        output_dir=str(workdir), use_cpu=True, seed=seed, data_seed=seed, max_steps=steps,
        per_device_train_batch_size=prompts_per_step * group_size, num_generations=group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=grpo.max_new_tokens, temperature=grpo.temperature, top_k=0,
        top_p=1.0, learning_rate=grpo.lr, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=grpo.weight_decay, max_grad_norm=1.0, beta=grpo.kl_coef,
        epsilon=grpo.clip_low, loss_type=_TRL_LOSS[grpo.aggregation],
        scale_rewards="group" if grpo.scale_by_std else "none",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, bf16=False,
        dataloader_num_workers=0, log_completions=False, gradient_checkpointing=False,
    )
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in tasks])
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, fmt], args=args,
                          train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[Collect()])
    trainer.remove_callback(PrinterCallback)  # printing every log line is no part of the work
    # TRL's rollout: GRPOTrainer._generate (tokenize, generate, decode), timed on the instance.
    # TRL's own profiling timers reach only wandb, MLflow and trackio, not the logs.
    generating = Stopwatch()
    trainer._generate = generating.wrap(trainer._generate)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if not generating.calls:
        raise RuntimeError(f"TRL {trl.__version__}: GRPOTrainer._generate never ran, so the "
                           "bench timed none of its rollouts; its timer needs updating")
    steps_logged = [entry for entry in collected if "completions/mean_length" in entry]
    n = prompts_per_step * group_size
    tokens = sum(entry["completions/mean_length"] * n for entry in steps_logged)
    return {
        "seconds": seconds,
        "prompts_per_s": steps * prompts_per_step / seconds,
        "tokens_per_s": tokens / seconds,
        "completion_tokens": tokens,
        "rollout_s": generating.seconds,
        "rollout_tokens_per_s": tokens / max(generating.seconds, 1e-9),
        "frac_reward_zero_std_mean": statistics.mean(
            e.get("frac_reward_zero_std", float("nan")) for e in steps_logged),
        "step_time_sum": sum(float(e.get("step_time", 0.0)) for e in steps_logged),
    }


class Stopwatch:
    """Seconds spent inside the callables it wraps, summed over their calls (`clock`: the
    time source, time.perf_counter by default)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock, self.seconds, self.calls = clock, 0.0, 0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += self.clock() - start
                self.calls += 1
        return timed


_GRPO_DEFAULTS = GRPOConfig()


@dataclass(frozen=True)
class BenchSettings:
    """One bench configuration (both trainers, both SSB arms). GRPO settings not named here
    (clip range, KL, loss aggregation, std scaling, ...) and the SSB's are the config defaults
    (GRPOConfig, SSBConfig), as in the grpo stage."""

    pretrain_steps: int = 600
    hidden: int = 128  # the policy's width and depth: where the rollouts' cost starts to count
    layers: int = 4
    tasks_per_family: int = 10  # small pool: the policy masters it, groups saturate
    heldout_per_family: int = 40
    steps: int = 40
    prompts_per_step: int = _GRPO_DEFAULTS.prompts_per_step
    group_size: int = _GRPO_DEFAULTS.group_size
    max_new_tokens: int = _GRPO_DEFAULTS.max_new_tokens
    temperature: float = 0.7
    lr: float = 3e-4
    rounds: int = 3  # interleaved timing rounds (ours, trl, ours, trl, ...); medians reported
    threads: int = 1
    seed: int = 0

    def grpo(self) -> GRPOConfig:
        """The `grpo` section both trainers run (config defaults for the rest), without the
        SSB (TRL has none; the SSB arm turns it on)."""
        return GRPOConfig(steps=self.steps, prompts_per_step=self.prompts_per_step,
                          group_size=self.group_size, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, lr=self.lr, seed=self.seed,
                          ssb=SSBConfig(enabled=False))


FULL = BenchSettings()
QUICK = BenchSettings(pretrain_steps=60, hidden=64, layers=2, tasks_per_family=4,
                      heldout_per_family=6, steps=4, prompts_per_step=4, group_size=4,
                      max_new_tokens=24, rounds=1)


def _median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "rounds_seconds": [r["seconds"] for r in runs]}


def _round(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def run_bench(out_json: Path, quick: bool = False) -> dict:
    """Run the whole bench (see the module docstring), write `out_json`, return the result."""
    import transformers
    import trl

    cfg = QUICK if quick else FULL
    torch.set_num_threads(cfg.threads)
    tokenizer, base, pretrain_s = build_text_policy(cfg.seed, cfg.pretrain_steps, cfg.hidden,
                                                    cfg.layers)
    tasks = text_tasks(cfg.tasks_per_family, cfg.seed + 101)
    heldout = text_tasks(cfg.heldout_per_family, cfg.seed + 202)
    grpo = cfg.grpo()
    ours_runs, vllm_runs, trl_runs, off_model = [], [], [], None
    for _ in range(cfg.rounds):
        model = copy.deepcopy(base)
        ours_runs.append(run_ours(model, tokenizer, tasks, grpo))
        off_model = off_model or model
        vllm_runs.append(run_ours(copy.deepcopy(base), tokenizer, tasks, grpo, backend="vllm"))
        with tempfile.TemporaryDirectory() as tmp:
            trl_runs.append(run_trl(copy.deepcopy(base), tokenizer, tasks, grpo,
                                    workdir=Path(tmp)))
    ssb_cfg = SSBConfig()
    on_model = copy.deepcopy(base)
    on = run_ours(on_model, tokenizer, tasks, grpo.model_copy(update={"ssb": ssb_cfg}))
    ours, theirs = _median_run(ours_runs), _median_run(trl_runs)
    ours_vllm = _median_run(vllm_runs)
    arms = {"off": (ours_runs[0], off_model), "on": (on, on_model)}
    result = {
        "setup": {
            **asdict(cfg), "quick": quick, "policy": POLICY_NOTE,
            **{f"ssb_{k}": v for k, v in ssb_cfg.model_dump().items()
               if k not in ("enabled", "prefilter")},
            "train_prompts": len(tasks), "heldout_prompts": len(heldout),
            "pretrain_seconds": pretrain_s,
            "base_heldout_accuracy": greedy_accuracy(base, tokenizer, heldout,
                                                     cfg.max_new_tokens),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "trl": trl.__version__, "vllm": _vllm_version()},
        },
        "ours": {k: v for k, v in ours.items() if k != "history"},
        "ours_vllm": {k: v for k, v in ours_vllm.items() if k != "history"},
        "trl": theirs,
        "speedup_vllm": statistics.median(t["seconds"] / o["seconds"]
                                          for o, t in zip(vllm_runs, trl_runs, strict=True)),
        # per-round ratios: each round runs both trainers back to back under the same load
        "speedup": statistics.median(t["seconds"] / o["seconds"]
                                     for o, t in zip(ours_runs, trl_runs, strict=True)),
        "speedup_per_round": [t["seconds"] / o["seconds"]
                              for o, t in zip(ours_runs, trl_runs, strict=True)],
        "ssb": {name: {
            "effective_ratio_late": run["effective_ratio_late"],
            "effective_ratio_before_late": run["effective_ratio_before_late"],
            "accuracy": greedy_accuracy(model, tokenizer, heldout, cfg.max_new_tokens),
            "train_accuracy_late": run["train_accuracy_late"],
            "history": run["history"]} for name, (run, model) in arms.items()},
    }
    late = {name: arm["effective_ratio_late"] for name, arm in result["ssb"].items()}
    result["targets_met"] = {
        "speedup_ge_1": result["speedup"] >= 1.0,
        "vllm_speedup_ge_3": result["speedup_vllm"] >= 3.0,
        "ssb_off_effective_ratio_late_le_0.45": late["off"] <= 0.45,
        "ssb_on_effective_ratio_late_ge_0.6": late["on"] >= 0.6,
    }
    result = _round(result)
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


POLICY_NOTE = (
    "text-only tiny Qwen2 causal LM (the bootstrap LLM, pretrained here on the reasoning text "
    "corpus) with text prompts from r1vflow.data.synth.text_corpus: TRL's GRPOTrainer needs a "
    "multimodal processor to train a VLM, which the tiny Llava models lack, so both trainers run "
    "the same text policy. ssb.off is the first timed 'ours' run.")
