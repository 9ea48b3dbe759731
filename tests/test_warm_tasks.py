"""Warm task starts (r1vflow.pipelines.warm_tasks): kfp.local tasks forked from a server that
has imported the stages' modules, each still a new process with the driver's environment, cwd
and exit status, its own RNG state, and Python's shutdown steps; commands of any other shape run
as kfp.local runs them; a driver that dies takes its task and the server with it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from kfp import dsl, local
from kfp.local import subprocess_task_handler as handler

from r1vflow.pipelines.warm_tasks import (
    SERVER_ENV,
    WARM_ENV,
    WarmTasks,
    shared_server,
    task_request,
    warm_tasks,
)

from conftest import ROOT, clean_env


def _own_env(**changes: str) -> dict[str, str]:
    """This process's environment without the session's shared server (conftest): a run
    that starts a server of its own."""
    return {**{k: v for k, v in os.environ.items() if k != SERVER_ENV}, **changes}


def _without_vllms_variables(monkeypatch) -> None:
    """This process has imported vLLM in earlier tests, which set VLLM_SETS here too."""
    for key in VLLM_SETS:
        monkeypatch.delenv(key, raising=False)


# two of the variables vLLM's import sets (vllm/env_override.py: both to "1")
VLLM_SETS = ("TORCHINDUCTOR_COMPILE_THREADS", "PYTORCH_NVML_BASED_CUDA_CHECK")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def facts(tag: str) -> str:
    import json
    import os
    import random

    import numpy

    return json.dumps({"tag": tag, "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                       "pgid": os.getpgid(0),
                       "parent": open(f"/proc/{os.getppid()}/comm").read().strip(),
                       "value": os.environ.get("WARM_TEST_VALUE"), "random": random.random(),
                       "numpy": float(numpy.random.rand()), "torch": "torch" in __import__("sys").modules,
                       "lazy": [m for m in ("mlflow.store.tracking.sqlalchemy_store", "math_verify")
                                if m in __import__("sys").modules],
                       "vllm": "vllm.entrypoints.llm" in __import__("sys").modules,
                       "gc": [__import__("gc").isenabled(), __import__("gc").get_freeze_count()],
                       "env": {k: os.environ.get(k) for k in (  # VLLM_SETS: no globals here
                           "TORCHINDUCTOR_COMPILE_THREADS", "PYTORCH_NVML_BASED_CUDA_CHECK")}})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def evaluate() -> str:
    """Named as a stage that generates: a server started with vllm=True imports vLLM first."""
    import gc
    import json
    import os
    import sys

    return json.dumps({"vllm": "vllm.entrypoints.llm" in sys.modules, "frozen": gc.get_freeze_count(),
                       "env": {k: os.environ.get(k) for k in (  # VLLM_SETS: no globals here
                           "TORCHINDUCTOR_COMPILE_THREADS", "PYTORCH_NVML_BASED_CUDA_CHECK")}})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def exits(code: int):
    import sys

    print("about to exit")
    sys.exit(code)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def raises():
    raise ValueError("boom in the component")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def leaves_work_for_exit(folder: str):
    import atexit
    import threading
    import time
    from pathlib import Path

    atexit.register(lambda: (Path(folder) / "atexit").write_text("ran"))

    def late():
        time.sleep(0.5)
        (Path(folder) / "thread").write_text("ran")

    threading.Thread(target=late).start()  # non-daemon: the interpreter waits for it


@pytest.fixture
def kfp_local(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), enable_caching=False, raise_on_error=False)
    return tmp_path


def _codes():
    """Record each task's exit status as kfp.local's handler gets it."""
    codes, run = [], handler.run_local_subprocess

    def recording(full_command, env_vars=None):
        codes.append(run(full_command, env_vars))
        return codes[-1]

    handler.run_local_subprocess = recording
    return codes, run


def test_tasks_fork_from_the_server_as_new_processes(kfp_local, monkeypatch):
    os.chdir(kfp_local)  # the task's cwd is the driver's at the task's start
    _without_vllms_variables(monkeypatch)
    with warm_tasks(kfp_local / "warm.log", _own_env(), vllm=True) as tasks:
        monkeypatch.setenv("WARM_TEST_VALUE", "set after the server started")
        monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "0")  # the driver's own value
        first = json.loads(facts(tag="a").output)
        second = json.loads(facts(tag="b").output)
        generating = json.loads(evaluate().output)
        after = json.loads(facts(tag="c").output)
    assert tasks.warm_tasks == 4 and tasks.failed is None
    for seen in (first, second):
        assert seen["ppid"] == tasks.process.pid  # forked from the server, not started by sh
        assert seen["value"] == "set after the server started"
        assert seen["cwd"] == str(kfp_local)
        assert seen["torch"]  # imported before the task began
        # and what the stages import only on first use (warm_tasks.LAZY_IMPORTS)
        assert seen["lazy"] == ["mlflow.store.tracking.sqlalchemy_store", "math_verify"]
        # collections on (as in a new process), skipping the server's frozen objects
        assert seen["gc"][0] and seen["gc"][1] > 500_000, seen["gc"]
        assert not seen["vllm"]  # no task of a stage that generates came yet
        assert seen["pgid"] == os.getpgid(0)  # in the driver's process group
    # vllm=True: the server imported vLLM's engine before forking the first task of a stage
    # that generates (and froze it too); what the import set in the environment reaches the
    # task as it would if the task imported vLLM itself, but where the driver set a value
    assert generating["vllm"] and after["vllm"]
    assert generating["frozen"] > first["gc"][1] + 200_000, (generating, first["gc"])
    assert generating["env"] == after["env"] == {"TORCHINDUCTOR_COMPILE_THREADS": "1",
                                                 "PYTORCH_NVML_BASED_CUDA_CHECK": "0"}
    assert first["env"] == {"TORCHINDUCTOR_COMPILE_THREADS": None,
                            "PYTORCH_NVML_BASED_CUDA_CHECK": "0"}
    assert first["pid"] != second["pid"]
    assert first["random"] != second["random"] and first["numpy"] != second["numpy"]
    assert tasks.process.poll() == 0  # the server ended with the block
    assert handler.run_local_subprocess is tasks.cold


def test_off_switch_starts_every_task_as_a_new_python(kfp_local):
    with warm_tasks(kfp_local / "warm.log", _own_env(**{WARM_ENV: "0"})) as tasks:
        seen = json.loads(facts(tag="cold").output)
    assert tasks is None
    assert seen["ppid"] != os.getpid() and not seen["torch"]  # sh's child, nothing preloaded
    assert seen["lazy"] == [] and not seen["vllm"] and seen["gc"] == [True, 0]
    assert seen["parent"] == "sh"  # kfp.local's `sh -ec '... python -m kfp...'`


def test_exit_status_failures_and_shutdown_steps_are_a_processes(kfp_local, capsys):
    with warm_tasks(kfp_local / "warm.log", _own_env()) as tasks:
        codes, run = _codes()
        try:
            exits(code=3)
            exits(code=0)
            raises()
            leaves_work_for_exit(folder=str(kfp_local))
        finally:
            handler.run_local_subprocess = run
    out = capsys.readouterr().out
    assert codes == [3, 0, 1, 0]
    assert tasks.warm_tasks == 4
    assert "about to exit" in out
    assert "ValueError: boom in the component" in out  # the traceback reaches the task log
    assert (kfp_local / "atexit").read_text() == "ran"  # atexit functions ran
    assert (kfp_local / "thread").read_text() == "ran"  # the non-daemon thread was joined


def test_only_kfps_lightweight_shape_runs_warm():
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "smoke.yaml").read_text()))
    container = spec["deploymentSpec"]["executors"]["exec-sft"]["container"]
    command = [*container["command"], *container["args"]]
    ours = handler.replace_python_executable(command, sys.executable)
    request = task_request(ours)
    assert request["code"] == command[3] and "def sft(" in request["code"]
    assert request["args"] == command[4:]
    assert task_request(handler.replace_python_executable(command, "/usr/bin/python3")) is None
    assert task_request(command) is None  # python3 as compiled: not this interpreter
    pip = [*ours[:2], "python3 -m pip install torch && " + ours[2], *ours[3:]]
    assert task_request(pip) is None
    assert task_request(["python", "-c", "print(1)"]) is None


DRIVER = """
import os, sys, time
from pathlib import Path
from kfp import dsl, local
from r1vflow.pipelines.warm_tasks import warm_tasks

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def sleeper(folder: str):
    import os, time
    from pathlib import Path
    (Path(folder) / "task.pid").write_text(str(os.getpid()))
    time.sleep(120)

folder = Path(sys.argv[1])
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(folder / "root"),
           enable_caching=False)
with warm_tasks(folder / "warm.log") as tasks:
    (folder / "server.pid").write_text(str(tasks.process.pid))
    sleeper(folder=str(folder))
"""


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie counts as gone
            if stat.read().split(")")[-1].split()[0] == "Z":
                return True
        time.sleep(0.1)
    return False


def test_a_killed_driver_takes_its_task_and_the_server_with_it(tmp_path):
    script = tmp_path / "driver.py"  # kfp reads a component's source from its file
    script.write_text(DRIVER)
    env = {k: v for k, v in clean_env().items() if k != SERVER_ENV}
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "task.pid").exists():
        assert driver.poll() is None and time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)
    task, server = (int((tmp_path / f"{n}.pid").read_text()) for n in ("task", "server"))
    driver.send_signal(signal.SIGKILL)  # the driver alone, not its process group
    driver.wait()
    assert _gone(task, 20), "the task outlived its driver"
    assert _gone(server, 20), "the server outlived its driver"


def test_runs_share_a_server_whose_tasks_lead_their_own_groups(kfp_local, monkeypatch):
    monkeypatch.delenv(SERVER_ENV, raising=False)
    with shared_server() as address:
        assert os.environ[SERVER_ENV] == address
        with shared_server() as again:  # a caller's server is used as it is
            assert again == address
        seen = []
        for tag in ("first run", "second run"):
            with warm_tasks(kfp_local / "warm.log") as tasks:
                seen.append(json.loads(facts(tag=tag).output))
            assert tasks.shared and tasks.process is None and tasks.warm_tasks == 1
    assert SERVER_ENV not in os.environ
    assert seen[0]["ppid"] == seen[1]["ppid"] != os.getpid()  # one server for both runs
    assert seen[0]["parent"] != "sh"
    for task in seen:
        assert task["pgid"] == task["pid"] and task["torch"]
        assert not task["vllm"]  # a server imports vLLM only when asked to


SHARED_DRIVER = DRIVER.replace("    (folder / \"server.pid\").write_text(str(tasks.process.pid))\n", "") \
    .replace("    time.sleep(120)", "    import subprocess\n"
             "    child = subprocess.Popen(['sleep', '120'])\n"
             "    (Path(folder) / 'grandchild.pid').write_text(str(child.pid))\n"
             "    time.sleep(120)")


def test_a_shared_servers_task_dies_as_a_group_with_its_driver(tmp_path, monkeypatch):
    monkeypatch.delenv(SERVER_ENV, raising=False)
    script = tmp_path / "driver.py"
    script.write_text(SHARED_DRIVER)
    with shared_server() as address:
        driver = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                                  env={**clean_env(), SERVER_ENV: address},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (tmp_path / "grandchild.pid").exists():
            assert driver.poll() is None and time.monotonic() < deadline, "no task started"
            time.sleep(0.1)
        task, grandchild = (int((tmp_path / f"{n}.pid").read_text())
                            for n in ("task", "grandchild"))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _gone(task, 20), "the task outlived its driver"
        assert _gone(grandchild, 20), "the task's own child outlived its driver"
        with warm_tasks(tmp_path / "warm.log") as tasks:  # the server itself goes on
            local.init(runner=local.SubprocessRunner(use_venv=False),
                       pipeline_root=str(tmp_path / "root2"), enable_caching=False)
            assert json.loads(facts(tag="after").output)["torch"]
        assert tasks.failed is None



def test_a_server_of_another_interpreter_sends_the_task_back_cold(monkeypatch, capsys):
    """A driver whose Python is not the shared server's gets its task back unstarted, and runs
    it (and the rest of its run) as kfp.local does."""
    monkeypatch.delenv(SERVER_ENV, raising=False)
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "smoke.yaml").read_text()))
    container = spec["deploymentSpec"]["executors"]["exec-configure"]["container"]
    other = "/opt/another/bin/python"
    command = handler.replace_python_executable([*container["command"], *container["args"]],
                                                other)
    with shared_server() as address:
        cold = []
        tasks = WarmTasks(address, None, lambda c, e=None: cold.append(c) or 42)
        monkeypatch.setattr(sys, "executable", other)  # this driver's environment
        monkeypatch.setattr(sys, "prefix", "/opt/another")
        assert tasks.run(command) == 42
    assert cold == [command] and tasks.warm_tasks == 0
    assert "the server ended before starting the task" in tasks.failed
    assert "warm task starts are off for the rest of this run" in capsys.readouterr().out
