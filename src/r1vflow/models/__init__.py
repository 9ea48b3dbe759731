"""Models: tokenizer, VLM assembly (vision + MLP projector + LLM), safetensors I/O, prompts,
batched generation. Submodules are imported directly, e.g. `from r1vflow.models.vlm import
assemble_vlm`; see each module's docstring."""
