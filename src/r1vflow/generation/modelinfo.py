"""Write vLLM's model-class cache for the architectures r1vflow serves, ahead of time.

The first time a process builds a vLLM engine for an architecture, vLLM inspects the model
class in a new Python (to keep CUDA uninitialized in the caller) and caches what it found in
`$VLLM_CACHE_ROOT/modelinfos/` (default `~/.cache/vllm`), keyed by the model file's hash. A
container starts with an empty cache, so every GRPO, evaluate, MPO or distill pod paid that
subprocess: about 10 s per engine here. The rollout image runs this module at build time
(`python -m r1vflow.generation.modelinfo`), so its pods find the cache filled.

The inspection runs in this process instead: there is no GPU at image build time, so there is
no CUDA to keep uninitialized, and one import of vLLM serves every architecture (11 s for the
five here, against 64 s through vLLM's subprocess per architecture).
"""

from __future__ import annotations

import sys

from r1vflow.models.families import FAMILIES

TEXT_ONLY = ("Qwen2ForCausalLM",)  # a text policy (GRPO on a causal LM, the bench)


def served_architectures() -> list[str]:
    """The model classes of r1vflow's families, and the text-only LLM it serves."""
    return sorted({f.model_class for f in FAMILIES.values()} | set(TEXT_ONLY))


def cache_model_info(architectures: list[str]) -> list[str]:
    """Fill vLLM's model-class cache for `architectures`; returns those vLLM does not know."""
    import vllm.model_executor.models.registry as registry

    registry._run_in_subprocess = lambda fn: fn()  # in this process (see the module doc)
    return [arch for arch in architectures
            if registry.ModelRegistry._try_inspect_model_cls(arch) is None]


def main() -> int:
    architectures = served_architectures()
    unknown = cache_model_info(architectures)
    if unknown:
        print(f"vLLM does not know {', '.join(unknown)}", file=sys.stderr)
        return 1
    print(f"vLLM's model-class cache holds {', '.join(architectures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
