"""Run config: defaults, bad input failing before any compute with the key named, checkpoint steps, launcher
command lines and the accelerate config files."""

import shlex
from types import SimpleNamespace
from pathlib import Path

import pytest
import yaml

from conspo.distributed import configure_deepspeed, launch_command
from conspo.objective import available_objectives
from conspo.runconfig import ConfigError, check_world_size, checkpoint_steps, load_config, parse_config, total_steps


@pytest.fixture
def inputs(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a", "problem": "Compute 1+1.", "answer": "2", "source": "s"}\n')
    return str(model), str(data)


def raw(inputs, **sections):
    model, data = inputs
    config = {"model": {"path": model}, "data": {"train": data}, "method": {"name": "conspo"},
              "train": {"prompts_per_step": 4}, "rollout": {"group_size": 4}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_defaults_are_filled_and_the_paper_values_kept(inputs):
    cfg = parse_config(raw(inputs))
    assert cfg.rollout.temperature == 1.0 and cfg.train.lr == 2e-6 and cfg.train.epochs == 4
    assert cfg.method.params == {} and cfg.train.mini_batches_per_step == 1 and cfg.model.trust_remote_code is False
    assert cfg.rollouts_per_step == 16


def test_yaml_file_with_numbers_written_without_a_dot(inputs, tmp_path):
    path = tmp_path / "run.yaml"
    text = yaml.safe_dump(raw(inputs)).replace("prompts_per_step: 4", "prompts_per_step: 4\n  lr: 2e-6")
    path.write_text(text)
    assert load_config(path).train.lr == 2e-6


@pytest.mark.parametrize("mutation,key", [
    ({"method": {"name": "consop"}}, "method.name"),
    ({"method": {"name": "conspo", "params": {"temperature": 3}}}, "method.params"),
    ({"method": {"name": "conspo", "params": {"tau": -1.0}}}, "method.params"),
    ({"model": {"path": "/nonexistent/model"}}, "model.path"),
    ({"data": {"train": "/nonexistent.jsonl"}}, "data.train"),
    ({"trian": {"lr": 1.0}}, "trian"),
    ({"train": {"learning_rate": 1.0}}, "train.learning_rate"),
    ({"rollout": {"group_size": 0}}, "rollout.group_size"),
    ({"rollout": {"engine": "sglang"}}, "rollout.engine"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"epochs": 1.5}}, "train.epochs"),
    ({"model": {"trust_remote_code": "yes"}}, "model.trust_remote_code"),
    ({"train": {"rollouts_per_step": 18}}, "train.rollouts_per_step"),  # not a multiple of G=4
    ({"train": {"rollouts_per_step": 20}}, "train.rollouts_per_step"),  # a multiple of G, != prompts * G
    ({"train": {"mini_batches_per_step": 3}}, "train.mini_batches_per_step"),  # 4 prompts into 3 mini-batches
    ({"train": {"micro_batch_size": 8}}, "train.micro_batch_size"),  # retired: micro-batches are sized in tokens
    ({"train": {"max_tokens_per_micro_batch": 9000}}, "train.max_tokens_per_micro_batch"),  # < 1024 + 8192
    ({"train": {"logit_chunk_tokens": 0}}, "train.logit_chunk_tokens"),
    ({"rollout": {"prompts_per_generation": 3}}, "rollout.prompts_per_generation"),
    ({"overlong_shaping": {"enabled": True, "buffer": 9000}}, "overlong_shaping.buffer"),
])
def test_bad_input_fails_naming_the_key(inputs, mutation, key):
    with pytest.raises(ConfigError) as err:
        parse_config(raw(inputs, **mutation))
    assert str(err.value).startswith(key), str(err.value)


def test_missing_required_keys_are_named(inputs):
    config = raw(inputs)
    del config["model"]["path"]
    with pytest.raises(ConfigError, match=r"^model\.path: required"):
        parse_config(config)


def test_world_size_must_keep_groups_whole(inputs):
    cfg = parse_config(raw(inputs, train={"prompts_per_step": 6}))
    check_world_size(cfg, 2)  # 3 prompts x 4 rollouts per rank
    with pytest.raises(ConfigError, match=r"^train\.prompts_per_step"):
        check_world_size(cfg, 4)


def test_every_registered_method_parses(inputs):
    for name in available_objectives():
        assert parse_config(raw(inputs, method={"name": name})).method.name == name


def test_checkpoint_steps(inputs):
    cfg = parse_config(raw(inputs, train={"checkpoint_every": 3, "epochs": 2}))
    assert total_steps(cfg, 9) == 6  # 2 epochs x ceil(9 / 4)
    assert checkpoint_steps(cfg, 9) == [3, 6]
    assert checkpoint_steps(cfg, 10) == [3, 6]
    cfg = parse_config(raw(inputs, train={"checkpoint_every": 4, "epochs": 2}))
    assert checkpoint_steps(cfg, 9) == [4, 6]  # the last step is always saved
    cfg = parse_config(raw(inputs, train={"checkpoint_every": 100, "total_steps": 5}))
    assert checkpoint_steps(cfg, 1000) == [5]


def test_paths_may_be_unchecked_for_planning(inputs):
    cfg = parse_config(raw(inputs, model={"path": "results/models/x"}), check_paths=False)
    assert cfg.model.path == "results/models/x"


# ------------------------------------------------------------------------------------------------ launcher


def test_single_node_command():
    command = launch_command(config="run.yaml", out="results/runs/a", nodes=1, gpus_per_node=8)
    assert command == ("srun --nodes 1 --ntasks 1 accelerate launch --config_file config/accelerate/fsdp_8gpu.yaml "
                       "--num_processes 8 -m conspo.cli train --config run.yaml --out results/runs/a")


def test_four_node_command_reads_the_machine_rank_on_each_node():
    command = launch_command(config="run.yaml", out="out dir", nodes=4, gpus_per_node=8, max_steps=10)
    head, inner = command.split(" bash -c ")
    assert head.startswith('MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) srun --nodes 4 '
                           "--ntasks-per-node 1")
    words = shlex.split(shlex.split(inner)[0])
    assert words[:4] == ["accelerate", "launch", "--config_file", "config/accelerate/fsdp_4x8gpu.yaml"]
    flags = dict(zip(words[4::2], words[5::2]))
    assert flags["--num_processes"] == "32" and flags["--num_machines"] == "4"
    assert flags["--machine_rank"] == "$SLURM_NODEID" and flags["--main_process_ip"] == "$MAIN_HOST"
    assert words[-9:] == ["-m", "conspo.cli", "train", "--config", "run.yaml", "--out", "out dir", "--max-steps", "10"]


def test_cpu_command_and_bad_layouts():
    assert launch_command(config="c.yaml", out="o", gpus_per_node=0, use_srun=False) == (
        "accelerate launch --config_file config/accelerate/cpu_2proc.yaml --num_processes 2 "
        "-m conspo.cli train --config c.yaml --out o")
    with pytest.raises(ValueError):
        launch_command(config="c.yaml", out="o", nodes=2, gpus_per_node=0)
    with pytest.raises(ValueError):
        launch_command(config="c.yaml", out="o", nodes=0)


@pytest.mark.parametrize("name,kind,processes,machines", [
    ("fsdp_8gpu", "FSDP", 8, 1), ("fsdp_4x8gpu", "FSDP", 32, 4), ("cpu_2proc", "MULTI_GPU", 2, 1),
    ("deepspeed_zero2_8gpu", "DEEPSPEED", 8, 1), ("deepspeed_cpu_2proc", "DEEPSPEED", 2, 1)])
def test_accelerate_configs_parse(name, kind, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parent.parent / "config" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind
    assert (config.num_processes, config.num_machines) == (processes, machines)


def deepspeed_plugin(stage):
    return SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}, "gradient_clipping": "auto",
                                             "train_micro_batch_size_per_gpu": "auto"})


def test_deepspeed_config_is_filled_from_the_run_config(inputs):
    plugin = deepspeed_plugin(2)
    configure_deepspeed(plugin, parse_config(raw(inputs, train={"max_grad_norm": 0.5})), world=2)
    ds = plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["train_batch_size"] == 16
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 0.5


@pytest.mark.parametrize("stage,sections,key", [
    (2, {"dynamic_sampling": {"enabled": True}}, "dynamic_sampling.enabled"),
    (3, {}, "rollout.engine"),
])
def test_what_deepspeed_cannot_run_is_refused_naming_the_key(inputs, stage, sections, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        configure_deepspeed(deepspeed_plugin(stage), parse_config(raw(inputs, **sections)), world=2)
