"""Pure tests of the experiment config: validation messages, overrides, fingerprint, presets."""

from pathlib import Path

import pytest
import yaml

from r1vflow.config import (
    ConfigError,
    Experiment,
    apply_override,
    experiment_from_dict,
    flatten,
    json_schema,
    load_experiment,
)

PRESETS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.yaml")))
def test_every_preset_validates(preset):
    exp = load_experiment(PRESETS / preset)
    assert exp.stages()[-1] == "evaluate"


def test_presets_exist():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {"smoke", "tiny", "r1v-38b", "r1v2-38b"} <= names


def test_misspelled_key_names_the_path():
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"name": "x", "sft": {"lrr": 1e-3}})
    assert "sft.lrr: unknown key" in str(err.value)


def test_negative_lr_names_the_path_and_value():
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"name": "x"}, ["sft.lr=-1"])
    assert "sft.lr: Input should be greater than 0 (got -1)" in str(err.value)


def test_several_errors_reported_together():
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"name": "x", "sft": {"lr": 0, "batch_size": "many"}})
    assert str(err.value) == (
        "invalid experiment: sft.batch_size: Input should be a valid integer, unable to parse "
        "string as an integer (got 'many'); sft.lr: Input should be greater than 0 (got 0)")


def test_cross_field_rule_says_what_to_do():
    with pytest.raises(ConfigError, match="multiple of model.tiny.patch_size"):
        experiment_from_dict({"name": "x", "data": {"image_size": 36}})
    with pytest.raises(ConfigError, match="accelerator_type and accelerator_count together"):
        experiment_from_dict({"name": "x", "resources": {"sft": {"accelerator_count": 8}}})


def test_unknown_stage_in_resources_rejected():
    with pytest.raises(ConfigError, match="resources.sfft"):
        experiment_from_dict({"name": "x", "resources": {"sfft": {"cpu": "1"}}})


def test_override_parses_yaml_values_and_creates_sections():
    data = {"name": "x"}
    apply_override(data, "sft.trainable=[projector]")
    apply_override(data, "resources.sft.node_selector={pool: gpu}")
    apply_override(data, "sft.lr=2e-5")
    assert data["sft"] == {"trainable": ["projector"], "lr": 2e-5}
    assert data["resources"]["sft"]["node_selector"] == {"pool": "gpu"}
    exp = experiment_from_dict(data)
    assert exp.sft.trainable == ["projector"] and exp.sft.lr == 2e-5


def test_override_value_yaml_cannot_parse_is_kept_as_text():
    data = {"name": "x"}
    apply_override(data, "schedule=@daily")
    assert data["schedule"] == "@daily"


def test_override_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "sft.lr")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_override({"name": "x"}, "name.first=1")


def test_fingerprint_ignores_name_and_tracking_but_not_training():
    base = experiment_from_dict({"name": "a"})
    renamed = experiment_from_dict({"name": "b", "description": "other",
                                    "tracking": {"tracking_uri": "sqlite:///x.db"},
                                    "resources": {"sft": {"cpu": "4"}}})
    changed = experiment_from_dict({"name": "a"}, ["sft.lr=3e-4"])
    assert base.fingerprint() == renamed.fingerprint()
    assert base.fingerprint() != changed.fingerprint()
    assert len(base.fingerprint()) == 64


def test_fingerprint_independent_of_key_order(tmp_path):
    doc = {"name": "a", "sft": {"lr": 1e-3, "epochs": 2}, "data": {"seed": 3}}
    reordered = {"data": {"seed": 3}, "sft": {"epochs": 2, "lr": 1e-3}, "name": "a"}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "b.yaml").write_text("# a comment\n" + yaml.safe_dump(reordered, sort_keys=False))
    assert (load_experiment(tmp_path / "a.yaml").fingerprint()
            == load_experiment(tmp_path / "b.yaml").fingerprint())


def test_json_round_trip_keeps_fingerprint():
    exp = load_experiment(PRESETS / "smoke.yaml")
    again = Experiment.model_validate_json(exp.model_dump_json())
    assert again.fingerprint() == exp.fingerprint()


def test_pretrained_presets_have_no_bootstrap():
    exp = load_experiment(PRESETS / "r1v2-38b.yaml")
    assert exp.bootstrap is None and "bootstrap" not in exp.stages()
    with pytest.raises(ConfigError, match="bootstrap builds tiny models only"):
        load_experiment(PRESETS / "r1v2-38b.yaml", ["bootstrap={}"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_experiment(bad)


def test_flatten_and_schema():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": "{}"}
    schema = json_schema()
    assert "sft" in schema["properties"] and schema["additionalProperties"] is False


def test_may_generate_on_vllm_reads_each_generating_stages_backend():
    """The local runner's warm task server imports vLLM only for runs that may generate on it."""
    smoke = load_experiment(PRESETS / "smoke.yaml")  # grpo and evaluate on `auto`
    assert smoke.may_generate_on_vllm()
    off = ["generation.backend=transformers"]
    assert not load_experiment(PRESETS / "smoke.yaml", off).may_generate_on_vllm()
    # each stage's own override counts: one is enough; all off is off
    assert load_experiment(PRESETS / "smoke.yaml",
                           [*off, "evaluate.generation.backend=vllm"]).may_generate_on_vllm()
    assert not load_experiment(PRESETS / "smoke.yaml", [
        "grpo.generation.backend=transformers",
        "evaluate.generation.backend=transformers"]).may_generate_on_vllm()
