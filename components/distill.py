"""distill: R1V AL-CoTD before SFT: the model before SFT writes each train sample's chain at a
repetition penalty set by its difficulty scores; the data set with those chains is the output."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def distill(experiment_json: str, dataset: Input[Dataset], base_model: Input[Model],
            distilled: Output[Dataset], metrics: Output[Metrics], report: Output[Markdown],
            html_report: Output[HTML],
            aligned_model: Input[Model] = None, reward_model: Input[Model] = None) -> str:
    from r1vflow.runtime.execute import execute

    models = {"aligned_model": aligned_model, "reward_model": reward_model}
    return execute("distill", experiment_json,
                   inputs={"dataset": dataset.path, "base_model": base_model.path,
                           **{k: m.path for k, m in models.items() if m is not None}},
                   outputs={"distilled": distilled.path}, metrics=metrics, report=report,
                   html_report=html_report)
