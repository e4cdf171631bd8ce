"""The bug zoo (``shared/spec/BUGZOO.md``) as mutants: each row's bug as a patch of the production
source, kept here and never in ``refimpl/``.

Each :class:`Mutant` says the bug in one line, the layer whose tests can see it (``core``,
``protocol``, ``child``, ``process``, ``proxy``) and its edits. An edit's ``new`` text carries a
``# the bug`` comment so that a traceback through mutated code says what it is running.
"""

from __future__ import annotations

from dataclasses import dataclass

from .patch import Edit

LAYERS = ("core", "protocol", "child", "process", "proxy")

ROUTER = "refimpl.core.router"
SCHEDULER = "refimpl.core.scheduler"
PROTOCOL = "refimpl.core.protocol"
ANNOUNCER = "refimpl.child.announcer"
PROCESSES = "refimpl.router.processes"
APP = "refimpl.router.app"


@dataclass(frozen=True)
class Mutant:
    id: str
    bug: str
    layer: str
    edits: tuple[Edit, ...]

    def __post_init__(self) -> None:
        assert self.layer in LAYERS, self.layer


MUTANTS: dict[str, Mutant] = {m.id: m for m in [
    Mutant("Z1", "A/B thrash: the scheduler runs before a loaded model's waiters are forwarded, "
                 "so the model is evicted before it serves them", "core", (
        Edit(ROUTER,
             """        waiters, model.waiters = model.waiters, []
        for req in waiters:
            self._dispatch_again(req, model, now, out)
        self.scheduler.run(now, out)
""",
             """        waiters, model.waiters = model.waiters, []
        self.scheduler.run(now, out)  # the bug: before the waiters hold the model
        for req in waiters:
            self._dispatch_again(req, model, now, out)
"""),
    )),
    Mutant("Z2", "a model with in-flight requests can be evicted", "core", (
        Edit(SCHEDULER,
             '        self.evict_busy = config.policy == "naive-lru"\n',
             "        self.evict_busy = True  # the bug: busy models are victims too\n"),
    )),
    Mutant("Z3", "capacity counted without the LOADING children: concurrent cold loads exceed "
                 "models_max", "core", (
        Edit(SCHEDULER,
             """                continue
            out.append(core.models[inst.model])
""",
             """                continue
            if core.models[inst.model].status is Status.LOADING:  # the bug: takes no slot
                continue
            out.append(core.models[inst.model])
"""),
    )),
    Mutant("Z4", "a child asked to stop no longer counts: the next child spawns before the "
                 "victim exits", "core", (
        Edit(SCHEDULER,
             "            if inst.stopping and projected:  # a stop frees its slot only once "
             "the child exits\n",
             "            if inst.stopping:  # the bug: a stop frees its slot at once\n"),
        Edit(SCHEDULER,
             "        blocked = self._plan_evictions(now, out) if self.queue else False\n",
             "        blocked = self._plan_evictions(now, out) if self.queue else False\n"
             "        self._spawn_heads(now, out)  # the bug: into the slots just asked to stop\n"),
    )),
    Mutant("Z5", "a child that dies while LOADING leaves its model LOADING forever", "core", (
        Edit(ROUTER,
             """            return
        model.instance = None
        model.exit_code = code
""",
             """            return
        if model.status is Status.LOADING and not inst.stopping:
            return  # the bug: the model stays LOADING and its waiters wait forever
        model.instance = None
        model.exit_code = code
"""),
    )),
    Mutant("Z6", "unloading a LOADING child sends the exit command and waits the stop timeout",
           "core", (
        Edit(ROUTER,
             """        if model.status is Status.LOADING:  # it may read stdin only once loaded (#21814)
            out.append(Kill(inst.id))
        else:
            out.append(SendExit(inst.id, group=group))
            inst.kill_at = now + model.spec.stop_timeout
""",
             """        out.append(SendExit(inst.id, group=group))  # the bug: a LOADING child too
        inst.kill_at = now + model.spec.stop_timeout
"""),
    )),
    Mutant("Z7", "the queue is looked at only when a request arrives: a second waiter never "
                 "loads", "core", (
        Edit(ROUTER,
             """            model.last_used = now
        self.scheduler.run(now, out)
""",
             """            model.last_used = now
        # the bug: a response that ends does not wake the queue
"""),
        Edit(ROUTER,
             """        # Forwarded requests end through ResponseEnded from the proxy; their refs go with them.
        self.scheduler.run(now, out)
""",
             """        # the bug: a child's exit (the slot it frees) does not wake the queue
"""),
    )),
    Mutant("Z8", "a LOADING model can be evicted before it serves the request it was loaded "
                 "for", "core", (
        Edit(SCHEDULER,
             """            if model.status is Status.LOADING:  # loaded for its waiters: it serves them first
                continue
            if model.busy and not busy_too:
""",
             """            if model.busy and not busy_too and model.status is not Status.LOADING:  # the bug
"""),
        Edit(SCHEDULER,
             """    def _evict(self, victim: Model, now: float, out: list[Command]) -> None:
""",
             """    def _evict(self, victim: Model, now: float, out: list[Command]) -> None:
        if victim.status is Status.LOADING:  # the bug: its waiters get upstream's 500
            waiters, victim.waiters = victim.waiters, []
            self.core.fail_waiters(waiters, 500, errors.LOAD_FAILED,
                                   "could not establish connection", out)
"""),
    )),
    Mutant("Z9", "requests are forwarded to a child that is stopping", "core", (
        Edit(ROUTER,
             "        if inst is not None and not inst.stopping and name not in self.scheduler"
             ".draining \\\n",
             "        # the bug: a stopping child still takes requests\n"
             "        if inst is not None and name not in self.scheduler.draining \\\n"),
    )),
    Mutant("Z10", "running out of capacity answers 500 'model limit reached' instead of "
                  "queueing", "core", (
        Edit(SCHEDULER,
             """        for victim in chosen:
            self._evict(victim, now, out)
        return blocked_entry is not None
""",
             """        for victim in chosen:
            self._evict(victim, now, out)
        if blocked_entry is not None and not chosen and not any(
                i.stopping for i in self.core.instances.values()):  # the bug: no queueing
            entry = self.queue.pop(blocked_entry)
            self.core.fail_waiters(entry.waiters, 500, "model_limit_reached",
                                   "model limit reached, try again later", out)
            return False
        return blocked_entry is not None
"""),
    )),
    Mutant("Z11", "a log line that contains the command prefix mid-line is taken as a command",
           "protocol", (
        Edit(PROTOCOL,
             """    if not line.startswith(STATE_PREFIX):
        return LogLine(line.decode("utf-8", errors="replace"))
    body = line[len(STATE_PREFIX):]
""",
             """    if STATE_PREFIX not in line:  # the bug: the prefix anywhere makes a command
        return LogLine(line.decode("utf-8", errors="replace"))
    body = line[line.index(STATE_PREFIX) + len(STATE_PREFIX):]
"""),
    )),
    Mutant("Z12", "a line split across reads is parsed as two lines (the end of a read taken "
                  "for the end of a line)", "protocol", (
        Edit(PROTOCOL,
             """        else:
            self._buf += rest
""",
             """        elif rest:  # the bug: a read that ends mid-line ends the line
            out.append(_strip_cr(bytes(self._buf) + rest))
            self._buf.clear()
"""),
    )),
    Mutant("Z13", "child output lines are not atomic: messages from several threads are written "
                  "in pieces, without the lock, and interleave", "child", (
        Edit(ANNOUNCER,
             """        with self._lock:
            try:
                written = os.write(self._fd, line)
""",
             """        if True:  # the bug: no lock, and each message goes out in pieces
            try:
                for piece in (line[:len(line) // 2], line[len(line) // 2:]):
                    os.write(self._fd, piece)
                written = len(line)
"""),
    )),
    Mutant("Z14", "an unknown child state aborts the router", "core", (
        Edit(ROUTER,
             """            out.append(Log(inst.id, f"ignored child message: {parsed.reason}"))
""",
             """            if parsed.reason.startswith("unknown state"):  # the bug
                raise RuntimeError(f"router abort: {parsed.reason}")
            out.append(Log(inst.id, f"ignored child message: {parsed.reason}"))
"""),
    )),
    Mutant("Z15", "a finished download's entry is left for the next reload to erase, and the "
                  "reload waits for it: GET /models?reload=1 never answers", "core", (
        Edit(ROUTER,
             """        if model.status is Status.DOWNLOADED and not model.removing:
""",
             """        if model.status is Status.DOWNLOADED and not model.removing:
            return  # the bug: the entry stays DOWNLOADED until a reload erases it
"""),
        Edit(APP,
             """        if request.query_params.get("reload", "").lower() in ("1", "true"):
""",
             """        if request.query_params.get("reload", "").lower() in ("1", "true"):
            # the bug: the reload waits for finished downloads' entries to go, and only a
            # reload makes them go
            while any(m.status.value == "downloaded"
                      for m in self.driver.core.models.values()):
                await anyio.sleep(0.05)
"""),
    )),
    Mutant("Z16", "kill on a dead child signals its pid although it was reaped (a reused pid, "
                  "or pid <= 0: the router's own process group)", "process", (
        Edit(PROCESSES,
             """        if self.process.returncode is None and self.process.pid > 0:
            try:
                self.process.kill()
""",
             """        if True:  # the bug: the pid is signalled whether or not the child was reaped
            try:
                os.kill(self.process.pid, 9)
"""),
    )),
    Mutant("Z17", "models_max 0 is taken literally: nothing can ever load", "core", (
        Edit(SCHEDULER,
             "        self.models_max: int | None = config.models_max or None  # 0 means unlimited\n",
             "        self.models_max: int | None = config.models_max  # the bug: 0 is taken literally\n"),
    )),
    Mutant("Z18", "an unload the router asked for is reported as failed", "core", (
        Edit(ROUTER,
             "        model.failed = code != 0 and not requested\n",
             "        model.failed = code != 0  # the bug: even when the router asked it to stop\n"),
    )),
    Mutant("Z19", "drain fallback: a busy model is force-evicted after the drain timeout",
           "core", (
        Edit(SCHEDULER,
             '        self.drain_fallback = config.policy == "drain-timeout"\n',
             "        self.drain_fallback = True  # the bug: busy models force-evicted in time\n"),
    )),
    Mutant("Z20", "the proxy copies the child's hop-by-hop headers next to the router's own: "
                  "duplicated headers", "proxy", (
        Edit(APP,
             "            return Response(content, status_code=upstream.status, "
             "headers=out_headers)\n",
             "            response = Response(content, status_code=upstream.status, "
             "headers=out_headers)\n"
             "            response.raw_headers += upstream.headers  # the bug: all of them\n"
             "            return response\n"),
    )),
    Mutant("Z21", "the proxy drops the query string", "proxy", (
        Edit(APP,
             """            upstream = await self.upstream.send(request.method, host, int(port), target, headers,
""",
             """            upstream = await self.upstream.send(request.method, host, int(port),
                                                target.partition("?")[0], headers,  # the bug
"""),
    )),
]}

# The mutants of the router's own policies (ROUTER.md section 7, P1-P4) join the bug zoo's rows:
# ``policies.py`` builds them from the names above, so it is imported last.
from .policies import POLICY_MUTANTS  # noqa: E402

MUTANTS.update(POLICY_MUTANTS)
# And the groups' mutant (ROUTER.md section 7, G1), built the same way.
from .groups import GROUP_MUTANTS  # noqa: E402

MUTANTS.update(GROUP_MUTANTS)
