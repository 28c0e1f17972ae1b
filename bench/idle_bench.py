"""What cron pays every minute on every host when nothing is due (bench/run.py --idle).

``itsm-notify send-pending`` is run as cron runs it: the installed console script in a
process of its own, from an empty folder (no ``.env``), with a bare environment that
names the database and nothing else, against a database that ``db init`` made and whose
outbox is empty. Its CPU time (user + system) is read from the kernel's accounting of
that one child (``os.wait4``): the median of ``runs`` runs after one untimed run that
warms the file cache and writes the bytecode caches, as a cron job's every minute finds
them. The caches live in a folder of the benchmark's own (``PYTHONPYCACHEPREFIX``), so
the figure does not depend on whether the venv was compiled at install (pip does it, uv
only when asked). Then the same without the installed packages' bytecode (the standard
library's kept): what an install that has none and may not write it pays every minute.

Then ``PYTHONPROFILEIMPORTTIME=1`` (``python -X importtime``) on the same command
attributes the time: the modules by cumulative import time, each outside package's
total (the sum of its modules' own times, whoever imported them) with the first module
of ours that pulled it in, and our own modules. The bare interpreter (``python -c
pass``) is measured too: the floor no lazy import can remove.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, func, select

from itsm_notify.storage import database, schema

OURS = "itsm_notify"


class Checker(Protocol):
    def expect(self, ok: bool, what: str) -> None: ...


@dataclass
class ChildRun:
    """One finished child process: its exit code, output and the kernel's CPU count."""

    returncode: int
    user: float
    system: float
    wall: float
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.system


def console_script() -> Path:
    """The installed ``itsm-notify`` next to this interpreter (the venv's bin)."""
    script = Path(sys.executable).with_name("itsm-notify")
    if not script.exists():
        raise SystemExit(f"{script} is missing: install the project (uv sync) first")
    return script


def cron_environment(url: str, workdir: Path) -> dict[str, str]:
    """What cron gives a job (PATH, HOME, SHELL, LOGNAME), plus the database URL and
    a delivery log in the scratch folder; none of the caller's ITSM_ settings."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "SHELL": "/bin/sh",
            "LOGNAME": os.environ.get("LOGNAME", "bench"), "LANG": "C.UTF-8",
            "DATABASE_URL": url, "ITSM_DELIVERY_LOG": str(workdir / "email.log")}


def run_child(argv: list[str], env: dict[str, str], cwd: Path) -> ChildRun:
    """Run ``argv`` to its end; its own CPU time from ``wait4`` (this child alone, not
    whatever else this process has started)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return ChildRun(process.returncode, usage.ru_utime, usage.ru_stime, wall,
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))


# ------------------------------------------------------------------ -X importtime


@dataclass
class Imported:
    """One line of ``-X importtime``: a module, its own and cumulative microseconds."""

    name: str
    own_us: int
    cumulative_us: int
    depth: int
    parent: Imported | None = None
    children: list[Imported] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.name.split(".", 1)[0]

    def nearest_ours(self) -> str | None:
        """The closest enclosing module of this project: who asked for this import."""
        node = self.parent
        while node is not None and node.package != OURS:
            node = node.parent
        return node.name if node is not None else None


def parse_importtime(stderr: str) -> list[Imported]:
    """Every module in import order of completion (children before their parent, as
    Python prints them), each linked to the module whose import it happened in."""
    modules: list[Imported] = []
    waiting: dict[int, list[Imported]] = {}  # finished, parent not printed yet, by depth
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        module = Imported(name.strip(), int(own), int(cumulative), depth)
        module.children = waiting.pop(depth + 1, [])
        for child in module.children:
            child.parent = module
        waiting.setdefault(depth, []).append(module)
        modules.append(module)
    return modules


@dataclass
class PackageCost:
    package: str
    own_us: int
    modules: int
    first_importer: str
    """The module whose import first pulled this package in."""
    via: str | None
    """The closest module of ours above that (None: imported while a command ran)."""


def package_costs(modules: list[Imported]) -> list[PackageCost]:
    """Each top-level package's total import time (its modules' own times, so nothing
    counted twice), costliest first."""
    costs: dict[str, PackageCost] = {}
    for module in modules:  # completion order: a package's first module comes first
        cost = costs.get(module.package)
        if cost is None:
            first = module
            while first.parent is not None and first.parent.package == module.package:
                first = first.parent
            importer = first.parent.name if first.parent is not None else "(run time)"
            cost = costs[module.package] = PackageCost(module.package, 0, 0, importer,
                                                       first.nearest_ours())
        cost.own_us += module.own_us
        cost.modules += 1
    return sorted(costs.values(), key=lambda c: -c.own_us)


def import_profile(stderr: str, top: int = 25) -> dict[str, Any]:
    modules = parse_importtime(stderr)
    roots = [m for m in modules if m.parent is None]
    total_us = sum(m.cumulative_us for m in roots)
    packages = package_costs(modules)
    ours = sorted((m for m in modules if m.package == OURS), key=lambda m: -m.cumulative_us)
    return {
        "total_ms": total_us / 1000,
        "modules": len(modules),
        "top_cumulative": [{"module": m.name, "cumulative_ms": m.cumulative_us / 1000,
                            "own_ms": m.own_us / 1000, "imported_by": _name(m.parent)}
                           for m in sorted(modules, key=lambda m: -m.cumulative_us)[:top]],
        "packages": [{"package": p.package, "ms": p.own_us / 1000, "modules": p.modules,
                      "stdlib": p.package in sys.stdlib_module_names,
                      "first_imported_by": p.first_importer, "via": p.via}
                     for p in packages if p.package != OURS][:top],
        "ours": [{"module": m.name, "cumulative_ms": m.cumulative_us / 1000,
                  "own_ms": m.own_us / 1000} for m in ours[:top]],
        "ours_own_ms": sum(m.own_us for m in modules if m.package == OURS) / 1000,
        "outside_imports_of_ours": [
            {"module": m.name, "cumulative_ms": m.cumulative_us / 1000,
             "imported_by": _name(m.parent)}
            for m in sorted(modules, key=lambda m: -m.cumulative_us)
            if m.package != OURS and m.parent is not None and m.parent.package == OURS][:top],
        "at_run_time": [{"module": m.name, "cumulative_ms": m.cumulative_us / 1000}
                        for m in sorted(_after_entry(roots), key=lambda m: -m.cumulative_us)
                        if m.cumulative_us >= 1000],
    }


def _after_entry(roots: list[Imported]) -> list[Imported]:
    """The imports made while the command ran: after the console script's own import
    of its entry module (before it: the interpreter's start-up, site and encodings)."""
    names = [m.name for m in roots]
    entry = f"{OURS}.entry"
    return roots[names.index(entry) + 1:] if entry in names else []


def _name(module: Imported | None) -> str:
    return module.name if module is not None else "-"


# ----------------------------------------------------------------------- the run


def outbox_is_untouched(url: str) -> tuple[int, int]:
    """(outbox rows, delivery rows): both must still be 0 after idle runs."""
    engine = database.make_engine(url)
    with engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(schema.outbox)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(schema.deliveries)).scalar_one()
    engine.dispose()
    return int(events), int(rows)


def timed_runs(name: str, argv: list[str], env: dict[str, str], cwd: Path, runs: int,
               check: Checker) -> list[ChildRun]:
    """One untimed run (it warms the file cache and writes the bytecode caches it may),
    then ``runs`` timed ones; each must exit 0 and print nothing."""
    timed: list[ChildRun] = []
    for attempt in range(runs + 1):
        run = run_child(argv, env, cwd)
        check.expect(run.returncode == 0,
                     f"idle {name}: send-pending exited {run.returncode}: {run.stderr[-500:]}")
        check.expect(not run.stdout and not run.stderr,
                     f"idle {name}: an idle run must print nothing (cron mails any output); "
                     f"it printed {(run.stdout + run.stderr)[-500:]!r}")
        if attempt:
            timed.append(run)
    return timed


def without_installed_bytecode(cache: Path, target: Path) -> int:
    """Copy the bytecode cache ``cache`` (a ``PYTHONPYCACHEPREFIX``) to ``target`` without
    the installed packages' and this project's files, so a run with it compiles those
    from source and only the standard library's come ready (what an install without
    bytecode pays on every run when it may not write the caches). Returns the number of
    cached files left out."""
    import itsm_notify

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cache, target)
    left_out = 0
    sources = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
               str(Path(itsm_notify.__file__).parent)}
    for source in sources:
        mirrored = target / source.lstrip("/")
        if mirrored.is_dir():
            left_out += sum(1 for _ in mirrored.rglob("*.pyc"))
            shutil.rmtree(mirrored)
    return left_out


def measure(name: str, url: str, runs: int, workdir: Path, check: Checker) -> dict[str, Any]:
    """``runs`` idle send-pending runs on an initialised, empty database, with bytecode
    caches and without; the import profile of one more."""
    cwd = workdir / f"cron-{name}"
    cwd.mkdir(exist_ok=True)
    argv = [str(console_script()), "send-pending"]
    # The caches in a folder of the benchmark's own: the same state whether or not the
    # venv was compiled or is writable (pip compiles at install, uv only when asked).
    cache = workdir / "pycache"
    env = cron_environment(url, cwd) | {"PYTHONPYCACHEPREFIX": str(cache)}
    timed = timed_runs(name, argv, env, cwd, runs, check)
    events, deliveries = outbox_is_untouched(url)
    check.expect(events == 0 and deliveries == 0,
                 f"idle {name}: the outbox holds {events} events and {deliveries} deliveries "
                 "after idle runs")
    profiled = run_child(argv, env | {"PYTHONPROFILEIMPORTTIME": "1"}, cwd)
    check.expect(profiled.returncode == 0,
                 f"idle {name}: send-pending under -X importtime exited {profiled.returncode}")
    profile = import_profile(profiled.stderr)
    check.expect(any(m["module"] == f"{OURS}.entry" for m in profile["ours"]),
                 f"idle {name}: -X importtime showed no {OURS}.entry import")
    stdlib_only = workdir / "pycache-stdlib-only"
    left_out = without_installed_bytecode(cache, stdlib_only)
    # the idle path imports few installed packages (the driver, python-dotenv, Babel's
    # core): a few dozen files, but never none
    check.expect(left_out > 10, f"idle {name}: only {left_out} cached files of installed "
                                "packages found to leave out")
    uncompiled = timed_runs(f"{name} (no bytecode)", argv, env | {
        "PYTHONPYCACHEPREFIX": str(stdlib_only), "PYTHONDONTWRITEBYTECODE": "1"}, cwd, runs,
        check)
    return {"db": name, "runs": len(timed), **_cpu(timed),
            "profiled_cpu_s": profiled.cpu, "imports": profile,
            "without_bytecode": _cpu(uncompiled)}


def _cpu(runs: list[ChildRun]) -> dict[str, Any]:
    return {"cpu_s": statistics.median(r.cpu for r in runs),
            "cpu_all_s": [r.cpu for r in runs],
            "user_s": statistics.median(r.user for r in runs),
            "system_s": statistics.median(r.system for r in runs),
            "wall_s": statistics.median(r.wall for r in runs)}


def interpreter_floor(runs: int, workdir: Path) -> float:
    """Median CPU seconds of ``python -c pass`` with this venv's interpreter: start-up
    and site, what any Python command costs."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
    cpu = [run_child([sys.executable, "-c", "pass"], env, workdir).cpu
           for _ in range(runs + 1)][1:]
    return statistics.median(cpu)


def run(databases: list[tuple[str, str]], runs: int, workdir: Path, check: Checker,
        reset_schema: Callable[[Engine], None]) -> dict[str, Any]:
    """Each database emptied and initialised by ``reset_schema``, then measured."""
    floor = interpreter_floor(runs, workdir)
    print(f"\n== idle send-pending (nothing due), {runs} runs each after a warm-up; "
          f"the bare interpreter (python -c pass): {1000 * floor:.0f} ms CPU", flush=True)
    results: dict[str, Any] = {"interpreter_cpu_s": floor, "databases": []}
    for name, url in databases:
        engine = database.make_engine(url)
        reset_schema(engine)
        engine.dispose()
        result = measure(name, url, runs, workdir, check)
        imports = result["imports"]
        print(f"  {name:10s} CPU {1000 * result['cpu_s']:.0f} ms (user "
              f"{1000 * result['user_s']:.0f} + sys {1000 * result['system_s']:.0f}; runs "
              f"{', '.join(f'{1000 * c:.0f}' for c in result['cpu_all_s'])}), wall "
              f"{1000 * result['wall_s']:.0f} ms; under -X importtime: imports "
              f"{imports['total_ms']:.0f} ms of {1000 * result['profiled_cpu_s']:.0f} ms CPU, "
              f"{imports['modules']} modules", flush=True)
        bare = result["without_bytecode"]
        print(f"  {'':10s} installed packages without bytecode (compiled from source each run): "
              f"CPU {1000 * bare['cpu_s']:.0f} ms (runs "
              f"{', '.join(f'{1000 * c:.0f}' for c in bare['cpu_all_s'])})", flush=True)
        results["databases"].append(result)
    print_imports(results["databases"][-1]["imports"], results["databases"][-1]["db"])
    return results


def print_imports(profile: dict[str, Any], db: str) -> None:
    print(f"\n  -X importtime of the idle run ({db}): top modules by cumulative time")
    print("    cumulative    own  module  (imported by)")
    for m in profile["top_cumulative"]:
        print(f"    {m['cumulative_ms']:7.1f} ms {m['own_ms']:5.1f}  {m['module']}  "
              f"({m['imported_by']})")
    print("\n  by package (its modules' own times added up; who first pulled it in)")
    for p in profile["packages"]:
        via = f", in {p['via']}" if p["via"] and p["via"] != p["first_imported_by"] else ""
        std = " (stdlib)" if p["stdlib"] else ""
        print(f"    {p['ms']:7.1f} ms  {p['package']}{std}, {p['modules']} modules: "
              f"{p['first_imported_by']}{via}")
    print(f"\n  {OURS} itself: {profile['ours_own_ms']:.1f} ms own; by cumulative:")
    for m in profile["ours"][:15]:
        print(f"    {m['cumulative_ms']:7.1f} ms {m['own_ms']:5.1f}  {m['module']}")
    print("\n  what our modules import from outside (cumulative: what that import loaded first)")
    for m in profile["outside_imports_of_ours"]:
        print(f"    {m['cumulative_ms']:7.1f} ms  {m['module']}  ({m['imported_by']})")
    if profile["at_run_time"]:
        print("  imported while the command ran (after the CLI module was loaded): " + ", ".join(
            f"{m['module']} {m['cumulative_ms']:.0f} ms" for m in profile["at_run_time"]))
