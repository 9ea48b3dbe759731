"""Warm task starts for the local runner: each KFP task forked from a process that has already
imported what the stages import.

kfp.local's SubprocessRunner starts every task as a new Python (`sh -ec '... python -m
kfp.dsl.executor_main ...'`), and a stage's task then spends 6-7 s of CPU importing torch,
transformers, mlflow, peft and the stage's modules before it does any work: about a minute of a
smoke run's two. Inside `warm_tasks()` a server process (`python -m r1vflow.pipelines.warm_tasks
SOCKET`, started with the driver's environment) imports those modules once; each task the
runner starts is then forked from it, and runs the same `kfp.dsl.executor_main` on the same
arguments, with the environment, working directory and exit status a new process would have:

- the driver sends the task's component code, arguments, environment and working directory and
  the write end of a pipe, over a Unix socket; the forked child writes its stdout and stderr
  into that pipe, which the driver prints line by line as kfp.local does with the
  subprocess's; the server answers the child's exit status (negative: the signal, as Popen);
- the child is a new process for everything a task can see: its own pid, `os.environ` and
  cwd set from the request, Python's and numpy's global RNGs reseeded from the OS, the
  component module loaded from a new temporary file, and at the end Python's own shutdown
  steps (non-daemon threads joined, atexit functions run, streams flushed);
- the server imports modules only: it runs no torch op and starts no thread of its own, so a
  child starts with no thread pool to inherit; with `vllm=True` (runs whose stages may
  generate on vLLM) it imports vLLM's engine as well, before it forks the first task of a
  stage that generates; the environment variables the imports set reach each task as the
  task's own import would set them;
- what the server imported sits in gc's permanent generation (`gc.freeze`): a child's
  collections skip those objects, so vLLM's gc.collect() calls cost nothing for them (vLLM's
  engine shutdown would unfreeze them: VLLMEngine keeps them frozen, see
  r1vflow.generation.vllm_engine.heap_freeze_kept) and their memory pages stay shared;
- tasks stay in the driver's process group (a SIGKILL of the group ends them as before); a
  driver that goes away takes its running task with it (the server kills a child whose
  connection closed), and the server ends with the driver (EOF on its stdin).

Runs in a row can share one server (`shared_server()`: `r1vflow gitops apply --local` runs its
experiments on one; the test suite its runs): it sets `R1VFLOW_WARM_SERVER` to the server's
socket, which `warm_tasks()` then uses instead of starting its own. A task of a shared server is
not in its driver's process group; it leads a group of its own, which the server kills whole
when the task's driver goes away. A server takes tasks only from drivers of its own Python
environment (prefix and version); any other driver runs its tasks cold.

A command not in kfp's lightweight-component shape (packages to install, a container
component) runs as kfp.local runs it, and so does every task when the server cannot start
(what it printed: `<output-dir>/logs/warm-tasks.log`) or `R1VFLOW_WARM_TASKS=0` is set. Containers
(`--runner docker`) always start their tasks cold, as a cluster does.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from r1vflow.config.stage_table import GENERATING_STAGES

WARM_ENV = "R1VFLOW_WARM_TASKS"  # "0": every task starts as a new Python
SERVER_ENV = "R1VFLOW_WARM_SERVER"  # the socket of a server shared by several runs
_HEADER = struct.Struct("!Q")  # length of the JSON request that follows

# kfp's lightweight-component command, the python replaced by the driver's interpreter
# (kfp.local.subprocess_task_handler.replace_python_executable), whitespace folded.
_KFP_SHAPE = re.compile(
    r'program_path=\$\(mktemp -d\) printf "%s" "\$0" > "\$program_path/ephemeral_component\.py" '
    r'_KFP_RUNTIME=true (?P<python>\S+) -m kfp\.dsl\.executor_main --component_module_path '
    r'"\$program_path/ephemeral_component\.py" "\$@"')


def task_request(full_command: list[str]) -> dict[str, Any] | None:
    """The component code and executor arguments of a kfp.local lightweight task started
    with this interpreter, or None for any other command (it then runs as kfp runs it)."""
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"]:
        return None
    shape = _KFP_SHAPE.fullmatch(" ".join(full_command[2].split()))
    if shape is None or shape["python"] != sys.executable:
        return None
    return {"code": full_command[3], "args": list(full_command[4:])}


def _interpreter() -> str:
    """Which Python environment this is (its prefix and version): a shared server takes the
    tasks of drivers in its own environment only."""
    return f"{sys.prefix} (Python {sys.version.split()[0]})"


# --------------------------------------------------------------------------- the driver's side


class WarmTasks:
    """The driver's handle on a running server: `run` replaces kfp.local's
    `run_local_subprocess` for the tasks it can start warm."""

    def __init__(self, address: str, process: subprocess.Popen | None, cold) -> None:
        self.address, self.process, self.cold = address, process, cold
        self.shared = process is None  # another block's server: its tasks lead own groups
        self.failed: str | None = None  # why the server could not take a task: cold from then
        self.warm_tasks = 0

    def run(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        request = task_request(full_command)
        if request is None or self.failed:
            return self.cold(full_command, env_vars)
        request.update(env={**os.environ, **(env_vars or {}), "_KFP_RUNTIME": "true"},
                       cwd=os.getcwd(), own_group=self.shared, python=_interpreter())
        read, write = os.pipe()
        with open(read, encoding="utf-8", errors="replace") as out, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            try:
                conn.connect(self.address)
                body = json.dumps(request).encode()
                socket.send_fds(conn, [_HEADER.pack(len(body))], [write])
                conn.sendall(body)
            except OSError as err:
                return self._fall_back(f"the server did not take the task: {err}",
                                       full_command, env_vars)
            finally:
                os.close(write)  # the child writes into its own copy: EOF when it ends
            answers = conn.makefile("rb")
            if not answers.readline().startswith(b"pid "):  # no child was forked
                return self._fall_back("the server ended before starting the task",
                                       full_command, env_vars)
            self.warm_tasks += 1
            for line in out:  # as kfp.local prints the subprocess's output
                print(line, end="")
            print("\n")
            status = answers.readline()
        if not status.startswith(b"exit "):
            print("r1vflow: the warm task server ended while the task ran")
            return 1
        return int(status.split()[1])

    def _fall_back(self, why: str, full_command, env_vars) -> int:
        self.failed = why
        print(f"r1vflow: warm task starts are off for the rest of this run ({why}); this task "
              "starts as a new Python\n")
        return self.cold(full_command, env_vars)


@contextlib.contextmanager
def warm_tasks(log_path: Path, environ: dict[str, str] | None = None,
               vllm: bool = False) -> Iterator[WarmTasks | None]:
    """kfp.local's SubprocessRunner starts its tasks from a warm server inside the block: the
    shared one `R1VFLOW_WARM_SERVER` names, else one of the block's own, whose output is kept
    in `log_path` when it printed anything. None and cold starts when `R1VFLOW_WARM_TASKS=0`.
    The server imports while the driver goes on; the first task waits for it. `vllm`: the
    block's own server imports vLLM too (where it is installed) when the first task of a
    stage that generates arrives (`Imports`)."""
    from kfp.local import subprocess_task_handler as handler

    env = dict(os.environ if environ is None else environ)
    if env.get(WARM_ENV, "1") == "0":
        yield None
        return
    with contextlib.ExitStack() as stack:
        if env.get(SERVER_ENV):
            address, process = env[SERVER_ENV], None
        else:
            process, address = stack.enter_context(_server(env, keep_log=log_path, vllm=vllm))
        tasks = WarmTasks(address, process, handler.run_local_subprocess)
        handler.run_local_subprocess = tasks.run
        try:
            yield tasks
        finally:
            handler.run_local_subprocess = tasks.cold


@contextlib.contextmanager
def shared_server(vllm: bool = False) -> Iterator[str | None]:
    """One server for the runs inside the block (their `warm_tasks()` use it): its socket is
    `R1VFLOW_WARM_SERVER` meanwhile; one already named there is used as it is. Yields the
    socket (None when `R1VFLOW_WARM_TASKS=0`). `vllm`: as for `warm_tasks`."""
    if os.environ.get(WARM_ENV, "1") == "0":
        yield None
        return
    if os.environ.get(SERVER_ENV):  # the caller's already
        yield os.environ[SERVER_ENV]
        return
    with _server(dict(os.environ), vllm=vllm) as (_, address):
        os.environ[SERVER_ENV] = address
        try:
            yield address
        finally:
            os.environ.pop(SERVER_ENV, None)


@contextlib.contextmanager
def _server(env: dict[str, str], keep_log: Path | None = None,
            vllm: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:
    """A server process on a new socket, once it accepts connections: (process, socket). On
    exit it is stopped, and what it printed (an import error, a refusal) copied to `keep_log`."""
    folder = Path(tempfile.mkdtemp(prefix="r1vflow-warm-"))
    address, server_log = str(folder / "tasks.sock"), folder / "server.log"
    try:
        with open(server_log, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "r1vflow.pipelines.warm_tasks", address,
                 *(["--vllm"] if vllm else [])],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60  # the socket appears listening (serve renames it)
            while not os.path.exists(address) and process.poll() is None and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            yield process, address
        finally:
            _stop(process)
            if keep_log is not None and server_log.stat().st_size:
                keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(server_log, keep_log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """Close the server's lifeline (it ends on EOF, killing tasks still running) and reap it."""
    if process.stdin and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- the server's side


# What the tasks import on first use rather than at import: measured as the modules a forked task
# still imported (smoke preset: 1,100-1,700 per task, 1.5-2 s of CPU each). Imports only: no
# connection, thread or device query (DeepSpeed stays out: its import picks its accelerator by
# asking torch.cuda, which would initialize CUDA in the server and break it in every fork).
LAZY_IMPORTS = (
    "mlflow.store.tracking.sqlalchemy_store",  # the first MLflow call on a sqlite store: 1.3 s
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.system_metrics.system_metrics_monitor",  # mlflow.start_run
    "mlflow.tracing.provider",
    "alembic.command",  # a new store's tables
    "git",  # MLflow's git run context
    "math_verify",  # grading of answers that are not plain integers
    "sklearn.datasets",  # the digits family's images
    "scipy.stats",  # AL-CoTD's rank correlation
)


def preload() -> None:
    """Import what the stages' tasks import (no torch op runs, no thread starts)."""
    import kfp.dsl.executor_main  # noqa: F401
    import PIL.Image

    import r1vflow.runtime.execute  # noqa: F401
    from r1vflow.config.stage_table import STAGES
    from r1vflow.stages import stage_function

    for stage in STAGES:
        stage_function(stage)
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    PIL.Image.init()  # its file-format plugins, loaded on the first image opened


def preload_vllm() -> None:
    """Import vLLM's engine (`vllm.LLM`), where vLLM is installed. It initializes no CUDA (vLLM
    itself forks its workers after this import); the one thread it starts (OpenCV's, on
    loading cv2) is not in a forked child, as in any fork of a process that imported cv2."""
    if importlib.util.find_spec("vllm") is None:
        return
    try:
        import vllm

        vllm.LLM  # noqa: B018 (vllm's __init__ imports the engine on this first access)
    except Exception as err:  # the task imports it itself, and reports what fails
        print(f"warm tasks: vLLM not preloaded: {type(err).__name__}: {err}", flush=True)


class Imports:
    """What the server has imported, and what those imports set in os.environ (`changes`:
    name -> (before, after)), which each task gets as its own import would set it.

    `vllm`: import vLLM's engine too, in the server, when the first task of a stage that
    generates (GENERATING_STAGES) arrives: 6 s of CPU in a new Python, 2-3 s in a forked task,
    that each such task would spend again (the smoke preset's grpo and evaluate), and that a
    run whose generating stages are all served from cache does not pay.

    Each import's objects (over a million with vLLM) then go to gc's permanent generation
    (`gc.freeze`): a child's collections skip them instead of walking them all (0.54 s a
    gc.collect() with vLLM imported, which vLLM calls 7 times building and closing one
    engine; 0 s frozen, as long as the engine's shutdown does not unfreeze them:
    vllm_engine.heap_freeze_kept) and do not write to their pages (copy-on-write keeps them
    shared).
    The server collects nothing itself (gc.disable), so no collection leaves holes in them."""

    def __init__(self, vllm: bool) -> None:
        self.vllm_pending = vllm
        self.changes: dict[str, tuple[str | None, str]] = {}
        gc.disable()
        self._import(preload)

    def _import(self, load) -> None:
        before = dict(os.environ)
        load()
        self.changes.update({k: (before.get(k), v) for k, v in os.environ.items()
                             if before.get(k) != v})
        gc.freeze()

    def before_task(self, request: dict[str, Any]) -> None:
        """Import vLLM before forking the first task of a generating stage (`vllm`)."""
        if self.vllm_pending and _function(request["args"]) in GENERATING_STAGES:
            self.vllm_pending = False
            self._import(preload_vllm)

    def task_environ(self, env: dict[str, str]) -> None:
        """(In the child) os.environ := the driver's `env`, with each variable the server's
        imports set where the driver's value is the one those imports started from."""
        os.environ.clear()
        os.environ.update(env)
        for key, (old, new) in self.changes.items():
            if os.environ.get(key) == old:
                os.environ[key] = new


def _function(args: list[str]) -> str | None:
    """The component function a task's executor arguments name (--function_to_execute)."""
    with contextlib.suppress(ValueError, IndexError):
        return args[args.index("--function_to_execute") + 1]
    return None


def _receive(conn: socket.socket) -> tuple[dict[str, Any], int]:
    """(request, the pipe's write end) from the driver."""
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 1)
    if len(header) != _HEADER.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("incomplete request")
    (size,) = _HEADER.unpack(header)
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            os.close(fds[0])
            raise ConnectionError("incomplete request")
        body += chunk
    return json.loads(body), fds[0]


def _exit_code(code: Any) -> int:
    """SystemExit's argument -> a process's exit status, as the interpreter maps it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_task(request: dict[str, Any], out: int, imports: Imports) -> int:
    """(In the forked child) what `sh -ec '... python -m kfp.dsl.executor_main ...'` does."""
    import random
    import runpy
    import traceback

    if request.get("own_group"):  # a shared server's task: killed as a group (see serve)
        os.setpgid(0, 0)
    null = os.open(os.devnull, os.O_RDONLY)  # not the server's stdin (the driver's lifeline)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    imports.task_environ(request["env"])
    if sys.path and sys.path[0] == os.getcwd():  # `-m` put the server's cwd first
        sys.path[0] = request["cwd"]
    os.chdir(request["cwd"])
    random.seed()
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed()
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
    program = Path(tempfile.mkdtemp()) / "ephemeral_component.py"
    program.write_text(request["code"])
    sys.modules.pop("kfp.dsl.executor_main", None)  # runpy runs it as __main__, afresh
    sys.argv = ["executor_main", "--component_module_path", str(program), *request["args"]]
    try:
        runpy.run_module("kfp.dsl.executor_main", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:  # what the interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    return code


def _finish_child(code: int) -> None:
    """Python's own shutdown steps, then the exit (never back into the server's loop)."""
    import atexit
    import threading

    try:
        threading._shutdown()  # join non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _kill(pid: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def serve(address: str, vllm: bool = False) -> None:
    """Accept tasks on `address` until stdin closes; each runs in a forked child. `vllm`: see
    `Imports`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".binding")
    listener.listen(16)  # tasks that arrive while preloading wait in the backlog
    os.rename(address + ".binding", address)  # the socket appears ready to connect to
    imports = Imports(vllm)
    # a child's exit wakes the loop (SIGCHLD writes a byte to `ended`): no polling
    ended, wake = socket.socketpair()
    for end in (ended, wake):
        end.setblocking(False)
    signal.set_wakeup_fd(wake.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "driver")
    selector.register(ended, selectors.EVENT_READ, "ended")
    children: dict[int, tuple[socket.socket, bool]] = {}  # pid -> (its driver, leads a group)
    while True:
        for key, _ in selector.select():
            if key.data == "driver" and not sys.stdin.buffer.read1(1 << 10):
                for pid, (_, group) in children.items():  # the driver is gone: its tasks too
                    _kill(pid, group)
                return
            if key.data == "accept":
                _start_task(listener, selector, children, (ended, wake), imports)
            elif key.data == "ended":
                with contextlib.suppress(BlockingIOError):
                    while ended.recv(1 << 10):
                        pass
            elif not key.fileobj.recv(1):  # a task's driver went away (data: the task's pid)
                _kill(key.data, children[key.data][1])
                selector.unregister(key.fileobj)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn, _ = children.pop(pid)
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(conn)
            conn.close()


def _start_task(listener: socket.socket, selector: selectors.BaseSelector,
                children: dict[int, tuple[socket.socket, bool]],
                wakeup: tuple[socket.socket, ...],
                imports: Imports) -> None:
    """Accept one request and fork its task (the child never returns here)."""
    conn, _ = listener.accept()
    try:
        request, out = _receive(conn)
    except (ConnectionError, OSError, ValueError) as err:
        print(f"warm tasks: refused a request: {err}", flush=True)
        conn.close()
        return
    if request.get("python") != _interpreter():  # the driver runs its task cold
        print(f"warm tasks: refused a task of {request.get('python')}: this server runs "
              f"{_interpreter()}", flush=True)
        os.close(out)
        conn.close()
        return
    group = bool(request.get("own_group"))
    imports.before_task(request)
    pid = os.fork()
    if pid == 0:  # the task: none of the server's sockets, SIGCHLD as in a new process
        gc.enable()  # collects what the task creates (the server's objects stay frozen)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for other in (listener, conn, *wakeup, *(c for c, _ in children.values())):
            other.close()
        selector.close()
        _finish_child(_run_task(request, out, imports))
    os.close(out)
    conn.sendall(f"pid {pid}\n".encode())
    children[pid] = (conn, group)
    if group:
        with contextlib.suppress(OSError):  # the child sets it too: no race
            os.setpgid(pid, pid)
    selector.register(conn, selectors.EVENT_READ, pid)


if __name__ == "__main__":
    serve(sys.argv[1], vllm="--vllm" in sys.argv[2:])
