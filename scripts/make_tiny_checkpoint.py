"""Write a tiny random-weight checkpoint in a released family's layout (no download).

    python scripts/make_tiny_checkpoint.py qwen2_5_vl runs/tiny-checkpoints/qwen2_5_vl
    python scripts/make_tiny_checkpoint.py internvl_chat runs/tiny-checkpoints/internvl_chat
    python scripts/make_tiny_checkpoint.py llava runs/tiny-checkpoints/llava   # vision/ llm/
                                                                  # substitute/ (composition)
    python scripts/make_tiny_checkpoint.py llava_internvit runs/tiny-checkpoints/llava_internvit
                                        # the same with a standalone InternViT as vision/
Families: qwen2_5_vl, qwen3_vl, internvl, internvl_chat, llava, llava_internvit.
"""

from __future__ import annotations

import argparse

from r1vflow.models.families.fixtures import build_checkpoint, build_composition_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.family in ("llava", "llava_internvit"):
        vision = "internvit" if args.family == "llava_internvit" else "siglip"
        for name, path in build_composition_parts(args.out_dir, args.seed, vision).items():
            print(f"{name}: {path}")
    else:
        print(build_checkpoint(args.family, args.out_dir, args.seed))


if __name__ == "__main__":
    main()
