"""Where sweep cells and Monte Carlo chunks run: in this process, in local worker processes, or on Ray.

:meth:`Engine.run` takes a list of :class:`Task` (a module-level function and its picklable
arguments) and yields one :class:`Outcome` per task in completion order: the function's return
value or a one-line error (it raised, or its worker died more often than ``retries`` allows).
Engines never write files; the caller (the driver process) records outcomes.

* :class:`InlineEngine` - one task after the other in this process (``--workers 0``);
* :class:`LocalEngine` - a process pool of at most ``workers`` spawned workers; a dead worker
  rebuilds the pool and costs every task in flight one attempt;
* :class:`RayEngine` - Ray tasks with ``num_cpus`` / ``num_gpus`` and ``max_retries = retries``, on
  the cluster at ``address`` or a local Ray started for the run; Ray is imported only here.

Ctrl-C cancels what is queued, stops the workers and re-raises ``KeyboardInterrupt``. Workers die
with the driver, even when it is killed outright (:func:`die_with_parent`).

Fault handling and measured Ray behaviour: docs/design.md, section 'Engines (training/engines.py)'.
"""
from __future__ import annotations

import abc
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

RAY_INSTALL_HINT = 'the ray engine needs Ray: pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9,<3")'
ENGINES = ("local", "ray")


E = TypeVar("E", bound="Engine")


class EngineError(RuntimeError):
    """The engine cannot run (e.g. Ray is not installed or the cluster cannot be reached); one line."""


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args)`` where ``fn`` is a module-level function (picklable by name)."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class Outcome:
    """What became of a task: ``value`` when it returned, else ``error`` (one line); ``attempts`` made."""

    key: Hashable
    value: Any = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: message"`` on a single line, at most ``limit`` characters."""
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Engine(abc.ABC):
    """Base class: ``run(tasks)`` yields an :class:`Outcome` per task; use as a context manager."""

    name = "engine"

    @abc.abstractmethod
    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """Run every task; yield one :class:`Outcome` per task as it finishes."""

    def close(self) -> None:
        """Release what the engine started (pools, a local Ray session)."""

    def describe(self) -> str:
        return self.name

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineEngine(Engine):
    """Runs tasks in this process, in order (no isolation: a crash ends the driver)."""

    name = "inline"

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for t in tasks:
            try:
                value = t.fn(*t.args)
            except Exception as e:  # noqa: BLE001 - reported as the task's outcome
                yield Outcome(t.key, error=one_line(e))
                continue
            yield Outcome(t.key, value=value)

    def describe(self) -> str:
        return "inline (this process)"


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int, death_signal: bool = True, poll_s: float = PARENT_POLL_S) -> None:
    """Make this (worker) process end when ``parent_pid``, the driver that started it, dies.

    A driver killed outright (``kill -9``, the out-of-memory killer) cannot stop its workers; left
    running they would go on writing into run folders that a rerun of the sweep then uses. On
    Linux, with ``death_signal``, the kernel sends SIGKILL the moment the parent dies
    (``prctl(PR_SET_PDEATHSIG)``; it fires when the *thread* that spawned us ends, hence only for
    pools made on the driver's main thread). Then, in case the parent died before that was armed,
    the parent pid is checked once; and a daemon thread checks it every ``poll_s`` seconds (every
    platform, and a worker whose signal was not armed), exiting at once when it has changed.
    """
    if death_signal and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the driver is gone already
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), name="cimsim-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent_pid:  # reparented: the driver died
            os._exit(1)


def _worker_init(parent_pid: int, death_signal: bool) -> None:
    """Pool worker initializer: Ctrl-C is handled by the driver alone, which then stops the workers;
    and the worker dies with its driver (:func:`die_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid, death_signal)


class LocalEngine(Engine):
    """A process pool on this machine that survives dead workers (see the module doc)."""

    name = "local"

    def __init__(self, workers: int = 1, retries: int = 2):
        if workers < 1:
            raise ValueError("LocalEngine needs workers >= 1 (use InlineEngine for in-process runs)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.workers, self.retries = workers, retries
        self._pool: ProcessPoolExecutor | None = None
        self._pool_thread: threading.Thread | None = None
        self.pool_restarts = 0

    def describe(self) -> str:
        return f"local ({self.workers} worker process(es), {self.retries} retries)"

    def _new_pool(self) -> ProcessPoolExecutor:
        # Workers are spawned by the thread that submits; PR_SET_PDEATHSIG would kill them when that
        # thread ends, so it is armed only for the main thread (which lives as long as the driver).
        main = threading.current_thread() is threading.main_thread()
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                         initializer=_worker_init, initargs=(os.getpid(), main))
        self._pool_thread = threading.current_thread()
        return self._pool

    def _pool_or_new(self) -> ProcessPoolExecutor:
        if self._pool is not None and self._pool_thread is not threading.current_thread():
            self.close()  # its workers' death signal belongs to another thread: start afresh here
        return self._pool if self._pool is not None else self._new_pool()

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        queue = list(tasks)[::-1]  # pop() takes them in the given order
        attempts: dict[Hashable, int] = {}
        inflight: dict = {}
        try:
            while queue or inflight:
                pool = self._pool_or_new()
                broken_on_submit = False
                while queue and len(inflight) < self.workers:
                    t = queue.pop()
                    try:  # a worker may have died since the last wait: the pool refuses new work
                        fut = pool.submit(t.fn, *t.args)
                    except BrokenProcessPool:
                        queue.append(t)  # never started: no attempt charged
                        broken_on_submit = True
                        break
                    attempts[t.key] = attempts.get(t.key, 0) + 1
                    inflight[fut] = t
                if broken_on_submit:
                    yield from self._after_crash(inflight, queue, attempts)
                    continue
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = False
                for f in done:
                    t = inflight.pop(f)
                    try:
                        value = f.result()
                    except BrokenProcessPool:
                        broken = True
                        inflight[f] = t  # handled with the rest of the broken pool below
                        continue
                    except Exception as e:  # noqa: BLE001 - the task raised
                        yield Outcome(t.key, error=one_line(e), attempts=attempts[t.key])
                        continue
                    yield Outcome(t.key, value=value, attempts=attempts[t.key])
                if broken:
                    yield from self._after_crash(inflight, queue, attempts)
        except BaseException:
            self._kill_pool()
            raise

    def _after_crash(self, inflight: dict, queue: list, attempts: dict) -> Iterator[Outcome]:
        """A worker died: drop the pool, requeue the in-flight tasks with retries left, fail the rest."""
        self._kill_pool()
        self.pool_restarts += 1
        for f, t in inflight.items():
            exc = f.exception() if f.done() and not f.cancelled() else BrokenProcessPool()
            if exc is None:  # finished just before the crash
                yield Outcome(t.key, value=f.result(), attempts=attempts[t.key])
            elif not isinstance(exc, BrokenProcessPool):
                yield Outcome(t.key, error=one_line(exc), attempts=attempts[t.key])
            elif attempts[t.key] > self.retries:
                yield Outcome(t.key, error=f"worker process died ({attempts[t.key]} attempt(s), "
                              f"retry limit {self.retries})", attempts=attempts[t.key])
            else:
                queue.append(t)
        inflight.clear()

    def _kill_pool(self) -> None:
        """Stop the pool now: cancel queued work and terminate its worker processes (ours)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop running workers before Python 3.14
        # (terminate_workers); its private process table holds exactly the workers it spawned.
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def import_ray():
    """Import Ray or raise :class:`EngineError` with the install hint."""
    try:
        import ray
    except ImportError:
        raise EngineError(RAY_INSTALL_HINT) from None
    return ray


class RayEngine(Engine):
    """Tasks as Ray tasks on a cluster (``address``) or on a local Ray started for the run."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
                 retries: int = 2, init_kwargs: dict | None = None):
        if cpus_per_task < 0 or gpus_per_task < 0:
            raise ValueError("cpus/gpus per task must be >= 0")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.ray = import_ray()
        self.address, self.cpus, self.gpus, self.retries = address, cpus_per_task, gpus_per_task, retries
        self._started = False
        self._connect(init_kwargs or {})

    def _connect(self, init_kwargs: dict) -> None:
        """Join the open session, the cluster at ``address``, or start a local Ray (stopped by close())."""
        ray = self.ray
        if ray.is_initialized():
            return
        kw = {"include_dashboard": False, **init_kwargs}
        if self.address:
            kw.pop("include_dashboard")
            kw["address"] = self.address
        try:
            ray.init(**kw)
        except Exception as e:  # noqa: BLE001 - connection problems become one line
            raise EngineError(f"cannot start or reach Ray{' at ' + self.address if self.address else ''}: "
                              f"{one_line(e)}") from None
        self._started = True

    def describe(self) -> str:
        where = self.address or ("local Ray started for this run" if self._started else "the open Ray session")
        res = self.ray.cluster_resources()
        return (f"ray ({where}: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU; per task "
                f"{self.cpus:g} CPU, {self.gpus:g} GPU; max_retries {self.retries})")

    def _remote(self, fn: Callable) -> Any:
        return self.ray.remote(fn).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
                                           retry_exceptions=False)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        ray = self.ray
        remotes: dict[Callable, Any] = {}
        refs: dict = {}
        for t in tasks:
            if t.fn not in remotes:
                remotes[t.fn] = self._remote(t.fn)
            refs[remotes[t.fn].remote(*t.args)] = t
        try:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    yield self._outcome(ref, refs[ref])
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def _outcome(self, ref: Any, task: Task) -> Outcome:
        """The task's value, or one line saying why there is none (its error, or its worker died)."""
        ray = self.ray
        try:
            return Outcome(task.key, value=ray.get(ref))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            return Outcome(task.key, error=one_line(cause))
        except ray.exceptions.RayError as e:
            return Outcome(task.key, error=f"{type(e).__name__}: worker died or task lost after "
                           f"{self.retries} retries ({one_line(e, 200)})")

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_engine(name: str, workers: int = 1, retries: int = 2, address: str | None = None,
                cpus_per_task: float | None = None, gpus_per_task: float = 0.0,
                ray_init: dict | None = None) -> Engine:
    """The engine the command line asks for: ``local`` (``workers`` 0 = inline) or ``ray``."""
    if name == "local":
        if address:
            raise EngineError("--address needs --engine ray")
        if gpus_per_task:
            raise EngineError("--gpus-per-cell needs --engine ray (local cells use --torch-device)")
        return InlineEngine() if workers == 0 else LocalEngine(workers, retries)
    if name == "ray":
        return RayEngine(address, 1.0 if cpus_per_task is None else cpus_per_task, gpus_per_task, retries,
                         ray_init)
    raise EngineError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")


def noop(x: Any = None) -> Any:
    """A task that does nothing (engine overhead benchmarks)."""
    return x


def time_tasks(engine: Engine, tasks: Sequence[Task]) -> tuple[float, list[Outcome]]:
    """Wall time of running ``tasks`` on ``engine`` and their outcomes (benchmarks)."""
    t0 = time.perf_counter()
    outs = list(engine.run(tasks))
    return time.perf_counter() - t0, outs
