"""Container image references: the one place components and pipelines read them from.

Three images run r1vflow's components (built by `images/build.sh` from `images/<role>/Dockerfile`):

| role      | contents                                   | runs                                       |
|-----------|--------------------------------------------|--------------------------------------------|
| `base`    | the project on CPU torch                   | CPU stages, every stage of the tiny presets |
| `trainer` | CUDA torch + DeepSpeed + the project       | GPU training stages, multi-node TrainJobs  |
| `rollout` | the trainer image + vLLM (extra `gpu`)     | the stages that generate: distill, mpo, grpo, evaluate |

The references below repeat `images/versions.env`, which is the source of truth for every pinned
version; `tests/test_images.py` fails when the two disagree. `images/` is not installed with the
package, hence the copy here.
"""

from __future__ import annotations

from typing import Literal, get_args

ImageRole = Literal["base", "trainer", "rollout"]

IMAGE_ROLES: tuple[ImageRole, ...] = get_args(ImageRole)

# Mirrors BASE_IMAGE, TRAINER_IMAGE and ROLLOUT_IMAGE in images/versions.env.
_IMAGES: dict[ImageRole, str] = {
    "base": "ghcr.io/r1vflow/r1vflow-base:0.1.0",
    "trainer": "ghcr.io/r1vflow/r1vflow-trainer:0.1.0",
    "rollout": "ghcr.io/r1vflow/r1vflow-rollout:0.1.0",
}


def image_for(role: ImageRole) -> str:
    """The pinned image reference (registry/name:tag) for a component role.

    Raises ValueError naming the valid roles when `role` is not one of them.
    """
    try:
        return _IMAGES[role]
    except KeyError:
        raise ValueError(
            f"unknown image role {role!r}; expected one of {', '.join(IMAGE_ROLES)}"
        ) from None
