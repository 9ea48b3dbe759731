"""bootstrap: build the tiny tokenizer, vision encoder and LLM, pretrain them briefly, assemble the
base VLM. Tiny presets only; on a cluster the base model is imported from the model store."""

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model, Output

from r1vflow.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def bootstrap(experiment_json: str, base_model: Output[Model], metrics: Output[Metrics],
              report: Output[Markdown]) -> str:
    from r1vflow.components.runtime import execute

    return execute("bootstrap", experiment_json, inputs={},
                   outputs={"base_model": base_model.path}, metrics=metrics, report=report)
