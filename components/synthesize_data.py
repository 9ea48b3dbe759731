"""synthesize_data: procedural visual reasoning tasks with verifiable answers, caption pairs and
chosen/rejected pairs, in disjoint train/val/test splits (see docs/tasks.md)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def synthesize_data(experiment_json: str, dataset: Output[Dataset], metrics: Output[Metrics],
                    report: Output[Markdown],
                    html_report: Output[HTML]) -> str:
    from r1vflow.runtime.execute import execute

    return execute("synthesize_data", experiment_json, inputs={},
                   outputs={"dataset": dataset.path}, metrics=metrics, report=report, html_report=html_report)
