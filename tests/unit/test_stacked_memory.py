"""A population member's memory, counted (pipeline/shards/memory.py), and the one-line refusal of
a population whose members cannot fit the device in one call."""
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.members import PopulationSpec
from pipeline.shards.memory import PeakMemory, available_bytes
from pipeline.shards.stacked import PopulationShards

MB = 2**20


def test_peak_memory_counts_live_storages_once_and_frees_them():
    with PeakMemory() as m:
        a = torch.ones(MB // 4)  # 1 MiB of float32
        b = a * 2  # 2 MiB alive
        view = b.view(-1)[:10]  # a view: no new storage
        del a
        c = b + 1  # b and c: 2 MiB again
        del b, c, view
    assert m.peak == 2 * MB and m.live == 0


def conv_population(members: int, tasks: int, filters: int = 64):
    cfgs = [load_config("omniglot_5w1s_cpu", {"task.name": "synthetic_images", "task.data": [], "task.query": 15,
                                              "model.filters": filters, "meta_batch_size": tasks,
                                              "train.compile": "never", "alpha": 0.1 + 0.01 * i})
            for i in range(members)]
    logs = []
    shards = PopulationShards(PopulationSpec.from_configs(cfgs), log=logs.append)
    params = {k: v.expand(members, *v.shape).clone() for k, v in shards.experiment.init_params().items()}
    return shards, params, logs


def test_a_members_memory_grows_with_its_tasks_and_is_said_at_the_start():
    counted = {}
    for tasks in (4, 16):
        shards, params, logs = conv_population(2, tasks, filters=16)
        result = shards.train_shard(params, 0, range(tasks))
        counted[tasks] = shards.member_bytes
        assert result.grads["conv0.W"].shape[0] == 2
        assert len(logs) == 1 and logs[0].startswith("population: 2 members on cpu, ") and \
            f"counted on one member's shard of {tasks} tasks" in logs[0], logs
    # activations are per task: 4x the tasks, about 4x the memory (parameters and moments aside)
    assert 3.3 < counted[16] / counted[4] < 4.2, counted


def test_a_population_that_cannot_fit_is_refused_in_one_line_before_its_first_call():
    probe, params, _ = conv_population(2, 32)
    probe.train_shard(params, 0, range(32))
    members = int(1.3 * 0.8 * available_bytes("cpu") / probe.member_bytes) + 2
    if members > 120:
        pytest.skip(f"this machine fits {members} conv members; the refusal needs more than this test builds")
    shards, params, logs = conv_population(members, 32)
    with pytest.raises(ConfigError) as e:
        shards.train_shard(params, 0, range(32))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"pack.max_members: {members} members per call on cpu need "
                                                      "about "), message
    fit = int(message.split("at most ")[1].split(" fit")[0])
    assert 0 < fit < members and f"set pack.max_members: {fit}" in message
    assert logs and f"{fit:,} fit in one call" in logs[0]
