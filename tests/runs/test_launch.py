# .venv/bin/python -m pytest tests/runs/test_launch.py -q
"""The exact DeepSpeed launcher argv for each placement (one host CPU/GPU, pdsh hostfile, no_ssh per node), hostfile
validation, and that no path or persona ever turns into shell code."""

import os
import shlex
import subprocess
import sys

import pytest

from trainer_core.common import paths
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError
from trainer_core.runs.launch import (all_node_commands, hostfile_text, launch_env, node_argv, parse_hostfile,
                                 runner_prefix, shell_line, threads_per_rank)

HOSTS = "node1 slots=2; node2 slots=2"


def cfg(*sets):
    return load_config(None, list(sets))


def train_args(run):
    return ["--module", "trainer_core.training.train", "--run-dir", str(run)]


def test_runner_is_deepspeeds_module_under_this_interpreter():
    assert runner_prefix() == [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]


def test_local_cpu_ranks(tmp_path):
    run = tmp_path / "run"
    assert node_argv(cfg("placement.num_ranks=2"), run, has_gpu=False) == runner_prefix() + [
        "--no_local_rank", "--master_port", "29500", "--num_gpus", "2", "--master_addr", "127.0.0.1",
        *train_args(run)]


def test_local_gpu_list(tmp_path):
    run = tmp_path / "run"
    argv = node_argv(cfg("placement.num_ranks=2", "placement.gpus=1,3"), run, has_gpu=True)
    assert argv == runner_prefix() + [
        "--no_local_rank", "--master_port", "29500", "--include", "localhost:1,3", "--master_addr", "127.0.0.1",
        *train_args(run)]
    assert "--num_gpus" not in argv  # DeepSpeed refuses --num_gpus together with --include


def test_local_gpu_default_is_the_first_num_ranks_gpus(tmp_path):
    argv = node_argv(cfg("placement.num_ranks=2"), tmp_path, has_gpu=True)
    assert argv[argv.index("--include") + 1] == "localhost:0,1"


def test_master_port_and_resume(tmp_path):
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "checkpoint-5"
    argv = node_argv(cfg(), run, master_port=31337, resume_from=ckpt)
    assert argv[argv.index("--master_port") + 1] == "31337"
    assert argv[-2:] == ["--resume-from", str(ckpt)]


def test_pdsh_with_an_inline_hostfile(tmp_path):
    run = tmp_path / "run"
    c = cfg("placement.launcher=pdsh", f"placement.hostfile={HOSTS}", "placement.num_nodes=2",
            "placement.num_ranks=2", "placement.master_addr=10.0.0.1")
    assert hostfile_text(c) == "node1 slots=2\nnode2 slots=2\n"
    assert all_node_commands(c, run) == [runner_prefix() + [
        "--no_local_rank", "--master_port", "29500", "--hostfile", str(run / "hostfile"),
        "--master_addr", "10.0.0.1", "--launcher", "pdsh", "--num_nodes", "2", "--num_gpus", "2",
        *train_args(run)]]


def test_ssh_launcher_is_deepspeeds_pdsh(tmp_path):
    # DeepSpeed has no "ssh" backend: `--launcher ssh` dies with "Unknown launcher"; pdsh runs over ssh.
    c = cfg("placement.launcher=ssh", f"placement.hostfile={HOSTS}", "placement.num_nodes=2")
    argv = node_argv(c, tmp_path)
    assert argv[argv.index("--launcher") + 1] == "pdsh"


def test_spare_slots_do_not_add_ranks(tmp_path):
    # A host with 8 slots and num_ranks 2 must start 2 ranks, not 8: DeepSpeed uses every slot unless told.
    c = cfg("placement.launcher=pdsh", "placement.hostfile=a slots=8; b slots=8", "placement.num_nodes=2",
            "placement.num_ranks=2")
    argv = node_argv(c, tmp_path)
    assert argv[argv.index("--num_gpus") + 1] == "2" and argv[argv.index("--num_nodes") + 1] == "2"


def test_pdsh_gpu_list_names_every_host(tmp_path):
    c = cfg("placement.launcher=pdsh", f"placement.hostfile={HOSTS}", "placement.num_nodes=2",
            "placement.num_ranks=2", "placement.gpus=0,1")
    argv = node_argv(c, tmp_path, has_gpu=True)
    assert argv[argv.index("--include") + 1] == "node1:0,1@node2:0,1"
    assert "--num_gpus" not in argv and "--num_nodes" not in argv


def test_no_ssh_gives_one_argv_per_node(tmp_path):
    run = tmp_path / "run"
    c = cfg("placement.launcher=no_ssh", "placement.hostfile=n0 slots=1; n1 slots=1", "placement.num_nodes=2",
            "placement.master_addr=10.1.2.3", "placement.master_port=29511")
    commands = all_node_commands(c, run)
    assert len(commands) == 2
    for rank, argv in enumerate(commands):
        assert argv == runner_prefix() + [
            "--no_local_rank", "--master_port", "29511", "--hostfile", str(run / "hostfile"),
            "--master_addr", "10.1.2.3", "--no_ssh", "--node_rank", str(rank), "--num_nodes", "2",
            "--num_gpus", "1", *train_args(run)]


def test_parse_hostfile_accepts_deepspeed_format():
    text = "# cluster\nnode-1 slots=4  # big one\n\nnode_2.example.com slots=2\n"
    assert parse_hostfile(text) == [("node-1", 4), ("node_2.example.com", 2)]
    assert parse_hostfile(HOSTS) == [("node1", 2), ("node2", 2)]


@pytest.mark.parametrize("text,expect", [
    ("node1", "line 1 'node1' must look like 'host1 slots=4'"),
    ("node1 slots=2; node2 4", "line 2"),
    ("node1 slots=0", "slots must be a positive number"),
    ("node1 slots=x", "slots must be a positive number"),
    ("node1 slots=²", "slots must be a positive number"),
    ("-node slots=1", "is not a host name"),
    ("nöde slots=1", "is not a host name"),
    ("node1 slots=1; node1 slots=1", "listed twice"),
    ("# nothing\n", "lists no hosts"),
])
def test_parse_hostfile_errors(text, expect):
    with pytest.raises(UserError, match="placement.hostfile") as e:
        parse_hostfile(text)
    assert expect in str(e.value)


def test_hostfile_slots_below_num_ranks():
    c = cfg("placement.launcher=pdsh", "placement.hostfile=a slots=2; b slots=1", "placement.num_nodes=2",
            "placement.num_ranks=2")
    with pytest.raises(UserError, match="gives b 1 slots but placement.num_ranks is 2"):
        hostfile_text(c)


def test_hostfile_host_count_must_match_num_nodes():
    c = cfg("placement.launcher=pdsh", f"placement.hostfile={HOSTS}", "placement.num_nodes=3")
    with pytest.raises(UserError, match="lists 2 hosts but placement.num_nodes is 3"):
        hostfile_text(c)


def test_hostfile_gpu_ids_must_exist_in_the_slots():
    c = cfg("placement.launcher=pdsh", f"placement.hostfile={HOSTS}", "placement.num_nodes=2",
            "placement.num_ranks=2", "placement.gpus=1,3")
    with pytest.raises(UserError, match="placement.gpus asks for GPU 3"):
        hostfile_text(c)


def test_hostfile_from_a_path(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("a slots=1\nb slots=1\n", encoding="utf-8")
    assert hostfile_text(cfg("placement.launcher=pdsh", f"placement.hostfile={f}", "placement.num_nodes=2")) == \
        "a slots=1\nb slots=1\n"
    with pytest.raises(UserError, match="neither a file nor"):
        hostfile_text(cfg("placement.launcher=pdsh", f"placement.hostfile={tmp_path / 'missing'}"))


HOSTILE = "$(touch pwned); `id` 'q\" & rm -rf ~"


def all_argvs(tmp_path):
    run = tmp_path / "runs root" / HOSTILE
    yield run, node_argv(cfg("placement.num_ranks=2"), run)
    yield run, node_argv(cfg("placement.num_ranks=2", "placement.gpus=0,1"), run, has_gpu=True,
                         resume_from=run / "checkpoints" / "checkpoint-1")
    for argv in all_node_commands(cfg("placement.launcher=no_ssh", f"placement.hostfile={HOSTS}",
                                      "placement.num_nodes=2"), run):
        yield run, argv


def test_hostile_run_dir_stays_one_argv_element(tmp_path):
    for run, argv in all_argvs(tmp_path):
        assert all(isinstance(a, str) for a in argv)
        assert argv[argv.index("--run-dir") + 1] == str(run)
        assert shlex.split(shell_line(argv)) == argv


def test_shell_line_passes_through_a_real_shell_unchanged(tmp_path):
    _, argv = next(all_argvs(tmp_path))
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + shell_line(argv)], cwd=tmp_path, capture_output=True,
                         check=True).stdout
    assert out.decode().split("\0")[:-1] == argv
    assert not (tmp_path / "pwned").exists()


def test_persona_never_reaches_the_command_line(tmp_path):
    c = cfg(f"data.persona={HOSTILE}")
    argv = node_argv(c, tmp_path / "run")
    assert not any("pwned" in a for a in argv)  # the persona travels in config.yaml, not in argv


def test_pdsh_refuses_paths_its_remote_shell_would_run(tmp_path):
    # pdsh joins DeepSpeed's remote command into one shell line, so such a path would execute on every node.
    c = cfg("placement.launcher=pdsh", f"placement.hostfile={HOSTS}", "placement.num_nodes=2")
    with pytest.raises(UserError, match="placement.launcher pdsh"):
        node_argv(c, tmp_path / "$(touch pwned)")
    node_argv(c, tmp_path / "plain-run_1.x")  # ordinary paths pass


def test_launch_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = launch_env(cfg("placement.num_ranks=2"), has_gpu=False)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(paths.PROJECT_ROOT), "/elsewhere"]
    assert int(env["OMP_NUM_THREADS"]) == max(1, len(os.sched_getaffinity(0)) // 2)
    # GPU ranks too: with the optimizer offloaded, each one's CPU Adam would otherwise take every core.
    gpu = launch_env(cfg("placement.num_ranks=2", "deepspeed.offload_optimizer=cpu"), has_gpu=True)
    assert gpu["OMP_NUM_THREADS"] == env["OMP_NUM_THREADS"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch_env(cfg("placement.num_ranks=2"), has_gpu=True)["OMP_NUM_THREADS"] == "3"  # the user's own wins


def test_threads_per_rank():
    assert [threads_per_rank(16, r) for r in (1, 2, 4, 3, 32)] == [16, 8, 4, 5, 1]
