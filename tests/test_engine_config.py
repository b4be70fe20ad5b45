"""The run configuration: defaults, YAML loading, overrides and validation messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fishertune.engine.config import (
    RunConfig,
    config_from_dict,
    load_config,
    parse_override,
)


def test_defaults_are_the_papers_settings() -> None:
    config = load_config()
    assert config == RunConfig()
    assert config.model.head == "mask2former"
    assert config.data.crop == 512
    assert config.data.batch_size == 4
    assert config.total_steps == 40_000
    assert config.schedule.lr == 1e-4
    assert config.schedule.weight_decay == 0.05
    assert config.schedule.poly_power == 0.9
    assert config.schedule.amp == "auto"
    assert config.evaluation.protocol == "rein"


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n"
        "  backbone: vit_small_patch14_dinov2\n"
        "  head: linear\n"
        "  checkpoint: weights/dinov2_s.safetensors\n"
        "method:\n"
        "  name: lora\n"
        "  options: {rank: 8, targets: [Q, V]}\n"
        "data:\n"
        "  source: synthetic\n"
        "  targets: [fog]\n"
        "schedule:\n"
        "  lr: 1e-4\n"
        "  weight_decay: 0\n"
        "  grad_clip: 1.0\n"
        "  amp: bf16\n"
        "evaluation: {mode: whole}\n"
    )
    config = load_config(path)
    assert config.model.backbone == "vit_small_patch14_dinov2"
    assert config.model.head == "linear"
    assert config.model.checkpoint == "weights/dinov2_s.safetensors"
    assert config.method.options == {"rank": 8, "targets": ["Q", "V"]}
    assert config.data.targets == ["fog"]
    assert config.schedule.lr == 1e-4  # YAML 1.1 alone would read "1e-4" as a string
    assert isinstance(config.schedule.weight_decay, float)
    assert config.schedule.grad_clip == 1.0
    assert config.schedule.amp == "bf16"
    assert config.evaluation.mode == "whole"
    assert config.data.crop == 512  # untouched keys keep their defaults


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == RunConfig()


def test_overrides_use_yaml_scalar_rules(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("schedule:\n  lr: 1.0e-3\nmodel:\n  checkpoint: a.pth\n")
    config = load_config(
        path,
        [
            "schedule.lr=2e-4",
            "method.options.variant=dF",
            "method.options.fraction=0.05",
            "model.checkpoint=null",
            "data.targets=[cityscapes, acdc]",
            "schedule.ema=0.999",
            "data.root=/data/gta",
            "output.run_dir=runs/x",
        ],
    )
    assert config.schedule.lr == 2e-4
    assert config.method.options == {"variant": "dF", "fraction": 0.05}
    assert config.model.checkpoint is None
    assert config.data.targets == ["cityscapes", "acdc"]
    assert config.schedule.ema == 0.999
    assert config.data.root == "/data/gta"
    assert config.output.run_dir == "runs/x"
    assert parse_override("a.b = 3") == (["a", "b"], 3)


def test_to_dict_round_trips_through_json_and_yaml() -> None:
    config = load_config(overrides=["method.options.variant=dF", "schedule.seed=7"])
    data = config.to_dict()
    assert data["schedule"]["seed"] == 7
    assert config_from_dict(json.loads(json.dumps(data))) == config
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.lrr=1"], "schedule.lrr; allowed keys in section 'schedule': ['amp', "),
        (["train.lr=1"], "unknown key(s) train;"),
        (["train.lr=1"], "allowed keys in the top level: ['data', 'evaluation', 'method', "),
        (["model.img_size.x=1"], "model.img_size: expected int | list[int], got {'x': 1} (dict)"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_the_allowed_ones(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.warmup_steps=abc", "schedule.warmup_steps: expected int, got 'abc' (str)"),
        ("schedule.warmup_steps=1.5", "schedule.warmup_steps: expected int, got 1.5 (float)"),
        ("schedule.seed=true", "schedule.seed: expected int, got True (bool)"),
        ("schedule.lr=fast", "schedule.lr: expected float, got 'fast' (str)"),
        ("schedule.grad_clip=[1]", "schedule.grad_clip: expected float | None, got [1] (list)"),
        ("data.targets=cityscapes", "data.targets: expected list[str], got 'cityscapes' (str)"),
        ("data.targets=[1]", "data.targets[0]: expected str, got 1 (int)"),
        ("method.options=3", "method.options: expected dict[str, Any], got 3 (int)"),
        ("model=3", "model: expected a mapping of keys to values, got 3"),
    ],
)
def test_wrong_types_name_the_key_the_type_and_the_value(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head=unet", "model.head: 'unet' is not one of the allowed values "),
        ("model.head=unet", "['linear', 'mask2former']"),
        ("schedule.amp=fp16", "schedule.amp: 'fp16' is not one of the allowed values"),
        ("schedule.amp=fp16", "['auto', 'bf16', 'off']"),
        ("evaluation.mode=tiles", "evaluation.mode: 'tiles' is not one of the allowed values"),
        ("evaluation.mode=tiles", "['slide', 'whole']"),
        ("evaluation.protocol=mmseg", "evaluation.protocol: 'mmseg' is not one of the allowed"),
        ("evaluation.protocol=mmseg", "['fullres', 'rein', 'synthetic']"),
    ],
)
def test_enumerations_list_the_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    "override",
    [
        "data.batch_size=0",
        "schedule.lr=0",
        "schedule.decoder_lr_mult=0",
        "schedule.tune_steps=-1",
        "schedule.ema=1.5",
        "schedule.grad_clip=0",
        "schedule.grad_accumulation=0",
    ],
)
def test_out_of_range_values_are_rejected(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ValueError, match=re.escape(f"{key}: invalid value")):
        load_config(overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.lr=.inf", "schedule.lr: invalid value inf (must be a finite number)"),
        ("schedule.poly_power=.nan", "schedule.poly_power: invalid value nan (must be a finite"),
        ("schedule.poly_power=-1", "schedule.poly_power: invalid value -1.0 (out of range)"),
        ("method.options.fraction=abc", "method.options.fraction: expected float | None, got"),
        ("method.options.gamma=-.inf", "method.options.gamma: invalid value -inf (must be a"),
        ("method.options.fraction=2.0", "method.options (fishertune): "),
        ("method.options.bogus=1", "method.options: unknown option(s) ['bogus'] for method"),
        ("schedule.tune_steps=0", "schedule.warmup_steps + schedule.tune_steps is 0"),
        ("model.num_classes=10", "model.num_classes: 10 is fewer than the 19 classes of data"),
        ("data.scale_range=[2.0, 1.0]", "data.scale_range: invalid value [2.0, 1.0]"),
        ("data.scale_range=[1.0]", "data.scale_range: invalid value [1.0]"),
    ],
)
def test_non_finite_numbers_zero_steps_and_method_options_fail_at_load(
    override: str, message: str
) -> None:
    extra = ["schedule.warmup_steps=0"] if "tune_steps" in override else []
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=[*extra, override])


def test_a_directory_or_a_repeated_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"config file {re.escape(str(tmp_path))} is a directory"):
        load_config(tmp_path)
    twice = tmp_path / "twice.yaml"
    twice.write_text("model:\n  head: linear\nschedule:\n  lr: 0.1\nmodel:\n  head: linear\n")
    with pytest.raises(ValueError, match=r"twice\.yaml is not valid YAML.*duplicate key 'model'"):
        load_config(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("schedule:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ValueError, match=r"duplicate key 'lr'(.|\n)*line 3"):
        load_config(nested)


def test_file_and_override_syntax_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml is not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_config(listing)
    with pytest.raises(ValueError, match=re.escape("section.key=value")):
        load_config(overrides=["schedule.lr"])
    with pytest.raises(ValueError, match=re.escape("section.key=value")):
        load_config(overrides=["schedule..lr=1"])
    sized = tmp_path / "sized.yaml"
    sized.write_text("model:\n  img_size: 512\n")
    with pytest.raises(ValueError, match=r"model\.img_size is a value, not a section"):
        load_config(sized, ["model.img_size.x=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.source=gta", "data.source: 'gta' is not one of the allowed values ['synthetic', "),
        ("data.targets=[cityscape]", "data.targets[0]: 'cityscape' is not one of the allowed "),
        ("method.name=fishertun", "method.name: 'fishertun' is not one of the allowed values"),
        ("model.img_size=[64]", "model.img_size: invalid value [64]"),
        ("data.crop=[0, 64]", "data.crop: invalid value [0, 64]"),
        ("data.eval_images=0", "data.eval_images: invalid value 0"),
    ],
)
def test_names_and_sizes_are_checked(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=[override])


def test_synthetic_targets_are_styles_and_sizes_may_be_pairs() -> None:
    config = load_config(
        overrides=[
            "data.source=synthetic",
            "data.targets=[fog, night]",
            "model.img_size=[64, 128]",
            "data.crop=[64, 128]",
        ]
    )
    assert config.model.image_size == (64, 128)
    assert config.data.crop_size == (64, 128)
    with pytest.raises(ValueError, match=re.escape("data.targets[1]: 'cityscapes' is not one")):
        load_config(overrides=["data.source=synthetic", "data.targets=[fog, cityscapes]"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.source=dark_zurich"],
            "data.source: 'dark_zurich' is not one of the allowed values ['synthetic', 'gtav', ",
        ),
        (
            ["data.targets=[cityscapes, synthetic]"],
            "data.targets[1]: 'synthetic' is not one of the allowed datasets ['acdc', ",
        ),
        (
            ["data.source=synthetic", "data.targets=[source]"],
            "data.targets[0]: 'source' is not one of the allowed domains of 'synthetic' ",
        ),
    ],
)
def test_sources_train_and_targets_are_domains(overrides: list[str], message: str) -> None:
    """A source must declare a training split; a source of several domains (the benchmark) is
    evaluated on its other domains, any other source on data sets of one domain."""
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=overrides)
    assert load_config(overrides=["data.targets=[dark_zurich, gtav]"]).data.targets == [
        "dark_zurich",
        "gtav",
    ]


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_yaml_errors_are_one_line_naming_the_place(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  head: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML") as error:
        load_config(broken)
    assert "\n" not in str(error.value)
    assert re.search(
        r"broken\.yaml is not valid YAML: .* at line \d+, column \d+", str(error.value)
    )
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"weights\.yaml is not UTF-8 text"):
        load_config(binary)


def test_alias_bombs_and_deep_nesting_are_refused_at_once(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(["model:", "  options:"] + [f"    {line}" for line in lines]) + "\n")
    with pytest.raises(ValueError, match=r"bomb\.yaml holds more than 100,000 values"):
        load_config(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("model:\n  options:\n    x: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ValueError, match=r"deep\.yaml is nested too deeply"):
        load_config(deep)
    with pytest.raises(ValueError, match=r"override 'model.options' is nested too deeply"):
        load_config(overrides=["model.options=" + "[" * 100 + "]" * 100])


def test_model_and_head_options_are_checked_against_the_constructors() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) model\.options\.bogus for"):
        load_config(DEMO_CONFIG, ["model.options={depth: 2, bogus: 1}"])
    with pytest.raises(ValueError, match=r"model\.head_options\.nope for 'linear'; allowed"):
        load_config(DEMO_CONFIG, ["model.head_options={subpixel: 2, nope: 3}"])
    with pytest.raises(ValueError, match=r"model\.head_options\.subpixel for 'mask2former'"):
        load_config(overrides=["model.head=mask2former", "model.head_options={subpixel: 2}"])
    config = load_config(overrides=["model.options={depth: 2, drop_path_rate: 0.1}"])
    assert config.model.options == {"depth": 2, "drop_path_rate": 0.1}


def test_a_record_without_a_key_added_since_is_the_same_run() -> None:
    """A key added to the configuration after a run was recorded, left at its default, does
    not make the recorded run another run; any other difference does."""
    config = load_config(DEMO_CONFIG)
    recorded = config.identity()
    del recorded["data"]["val_share"]
    assert config.is_run(recorded)
    assert config.is_run(config.identity())
    changed = load_config(DEMO_CONFIG, ["schedule.lr=0.5"])
    assert not changed.is_run(recorded)


def test_switching_methods_drops_the_file_methods_options_with_a_notice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    paper = DEMO_CONFIG.parent / "paper" / "gtav_dinov2_l.yaml"
    config = load_config(paper, ["method.name=rein"])
    assert (config.method.name, config.method.options) == ("rein", {})
    assert "method.options (for 'fishertune') are not used" in capsys.readouterr().err
    config = load_config(paper, ["method.name=rein", "method.options={num_tokens: 50}"])
    assert config.method.options == {"num_tokens": 50}
    kept = load_config(paper, ["method.name=fishertune"])
    assert kept.method.options["variant"] == "DRF"
    assert "notice" not in capsys.readouterr().err
