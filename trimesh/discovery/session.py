"""The registry session the sidecar runs: keep our instance registered, feed the cache.

```
Discovery.run (in the root nursery)
├── keep-registered: register → heartbeat every interval → (LeaseExpired) register again
└── one watcher per consumed service: registry.watch → cache.update, restarted with backoff
```

Nothing here ever blocks sidecar startup or crashes it: registry failures are
logged, remembered for the admin view, and retried with capped exponential
backoff while the cache keeps serving the last snapshot.

Every registry call the session makes runs under a deadline the session owns:
`call_timeout`, and for a heartbeat min(call_timeout, heartbeat interval,
lease / 3) so a hung registry cannot eat the lease. A call that runs out is a
failure like any other. Once no heartbeat has succeeded for a whole lease, the
registry may have dropped us: we register again instead of heartbeating a
lease that may be dead.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from trimesh.discovery._failover import call_deadline
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    OnChange,
    Registration,
    Registry,
    RegistryError,
    RegistryUnavailable,
    ServiceKey,
    Status,
)
from trimesh.discovery.cache import InstanceCache

__all__ = ["Backoff", "Discovery", "instance_view"]

log = logging.getLogger("trimesh.discovery")

# How long `run` may spend deregistering when it is cancelled before `deregister()`.
DEREGISTER_GRACE = 2.0
# A name the registry did not know is asked about again after this long, not per request.
MISS_TTL = 1.0
MAX_MISSES = 1024


@attrs.define
class Backoff:
    """Capped exponential backoff with "equal jitter": each delay is in [base/2, base].

    Sans-IO: it only computes delays; the caller sleeps.
    """

    initial: float = 0.2
    cap: float = 10.0
    factor: float = 2.0
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    _base: float = attrs.field(init=False, default=0.0)

    def delay(self) -> float:
        base = min(self.cap, self._base or self.initial)
        self._base = base * self.factor
        return base / 2 + self.rng.uniform(0, base / 2)

    def reset(self) -> None:
        self._base = 0.0


def instance_view(i: Instance) -> dict[str, Any]:
    """One instance as JSON for the admin view and `trimesh registry --json`."""
    return {
        "service": i.service,
        "app": i.app,
        "instance_id": i.instance_id,
        "endpoint": i.endpoint,
        "version": i.version,
        "status": i.status,
        "lease_age": None if i.lease_age is None else round(i.lease_age, 3),
    }


@attrs.define
class _Watched:
    started: bool = False
    error: str | None = None


class Discovery:
    """The registry session: our registration's lease, and watchers feeding `cache`.

    Error handling: registry failures inside `run` are never raised; they are
    logged, kept in `last_error` / `state()`, and retried with `Backoff`.
    `resolve` raises `RegistryError` to its caller (the request path).
    Resource handling: owns the tasks in `run`'s nursery; does not own the
    registry (its creator calls `registry.aclose()`).
    """

    def __init__(
        self,
        registry: Registry,
        cache: InstanceCache,
        me: Registration | None,
        *,
        app: str,
        backoff: Callable[[], Backoff] = Backoff,
        miss_ttl: float = MISS_TTL,
        call_timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.app = app
        self.instance_id: str | None = None
        self.registered = False
        # For metrics: failed registrations/heartbeats, and watches started again.
        self.heartbeat_failures = 0
        self.watch_restarts = 0
        self.last_error: str | None = None
        self._me = me
        self._backoff = backoff
        self._miss_ttl = miss_ttl
        self._call_timeout = call_timeout
        self._last_heartbeat: float | None = None
        self._status_wanted: Status = "UP"
        self._status_applied: Status | None = None
        # Serialises every call about our own instance, so deregister never
        # races a heartbeat or a re-registration.
        self._lease_lock = trio.Lock()
        self._lease_scope = trio.CancelScope()
        self._wake = trio.Event()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self._watched: dict[str, _Watched] = {}
        self._resolving: dict[str, trio.Event] = {}
        self._misses: dict[str, float] = {}

    @property
    def lease_current(self) -> bool:
        """Registered, and the last successful register/heartbeat is younger than the lease.

        `registered` alone stays true through a registry outage (we keep
        trying); this says whether the registry can still be listing us.
        """
        if not self.registered or self._me is None or self._last_heartbeat is None:
            return False
        return trio.current_time() - self._last_heartbeat < self._me.lease_ttl

    def __repr__(self) -> str:
        me = f"{self._me.service}@{self._me.endpoint}" if self._me else "consumer-only"
        state = "registered" if self.registered else "unregistered"
        return f"<Discovery {me} {state} id={self.instance_id} watching={sorted(self._watched)}>"

    @property
    def me(self) -> Registration | None:
        return self._me

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the session until cancelled; reports started at once, before any registry I/O.

        If cancelled while still registered (no `deregister()` first), it
        deregisters under a shield bounded by `DEREGISTER_GRACE`.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for service in self._watched:
                    self._start_watcher(service)
                if self._me is not None:
                    nursery.start_soon(self._keep_registered, self._me)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self.registered:
                with trio.move_on_after(DEREGISTER_GRACE, shield=True):
                    await self.deregister()

    def register_self(self, me: Registration) -> None:
        """Start registering `me` (for when our inbound port is known only after `run` started)."""
        if self._me is not None:
            raise RuntimeError(f"already registering {self._me.service} at {self._me.endpoint}")
        self._me = me
        if self._nursery is not None:
            self._nursery.start_soon(self._keep_registered, me)

    # --- our own instance -------------------------------------------------------

    async def _keep_registered(self, me: Registration) -> None:
        backoff = self._backoff()
        expired_in_a_row = 0
        with self._lease_scope:
            while not self._stopping:
                try:
                    async with self._lease_lock:
                        if self._stopping:
                            return
                        await self._renew(me)
                except LeaseExpired as exc:
                    log.warning("registry: %s; registering again", exc)
                    self.registered = False
                    expired_in_a_row += 1
                    # At once the first time; a backend that keeps saying so gets backoff.
                    delay = 0.0 if expired_in_a_row == 1 else backoff.delay()
                except trio.ClosedResourceError:
                    return  # the registry's owner closed it: the session is over
                except Exception as exc:
                    delay = backoff.delay()
                    self.heartbeat_failures += 1
                    self._failed("keep registered", exc, delay)
                    self._drop_lapsed_lease(me)
                else:
                    backoff.reset()
                    expired_in_a_row = 0
                    delay = me.heartbeat_interval
                with trio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _renew(self, me: Registration) -> None:
        """One heartbeat, or a registration when we hold none; then sync our status."""
        self._drop_lapsed_lease(me)
        if self.registered and self.instance_id is not None:
            beat = min(self._call_timeout, me.heartbeat_interval, me.lease_ttl / 3)
            with call_deadline(beat, "heartbeat"):
                await self.registry.heartbeat(self.instance_id)
        else:
            with call_deadline(self._call_timeout, "register"):
                self.instance_id = await self.registry.register(me)
            self.registered = True
            self._status_applied = "UP"
            log.info("registry: registered %s %s as %s", me.service, me.endpoint, self.instance_id)
        self._last_heartbeat = trio.current_time()
        await self._apply_status()
        self.last_error = None

    def _drop_lapsed_lease(self, me: Registration) -> None:
        """Forget a registration whose lease may have run out: only registering again helps."""
        beat = self._last_heartbeat
        if self.registered and beat is not None and trio.current_time() - beat >= me.lease_ttl:
            log.warning(
                "registry: no heartbeat succeeded for %.1f s (lease %g s); registering again",
                trio.current_time() - beat,
                me.lease_ttl,
            )
            self.registered = False

    async def _apply_status(self) -> None:
        # Loops so a status wanted while the call ran is applied too. Lock held.
        while self._status_applied != self._status_wanted and self.instance_id is not None:
            wanted = self._status_wanted
            with call_deadline(self._call_timeout):
                await self.registry.set_status(self.instance_id, wanted)
            self._status_applied = wanted
            log.info("registry: instance %s marked %s", self.instance_id, wanted)

    async def set_status(self, status: Status) -> None:
        """Mark our instance UP or DOWN now; if that fails, the next heartbeat applies it."""
        self._status_wanted = status
        if not self.registered or self._stopping:
            return  # applied right after (re-)registration
        try:
            async with self._lease_lock:
                if self.registered and not self._stopping:
                    await self._apply_status()
        except LeaseExpired as exc:
            log.warning("registry: %s; registering again", exc)
            self.registered = False
            self._wake.set()
        except (RegistryError, trio.ClosedResourceError) as exc:
            self._failed(f"set status {status}", exc, None)

    async def deregister(self) -> None:
        """Stop heartbeating, then remove our instance. Never raises a `RegistryError`.

        Bounded by `call_timeout` and the caller's cancel scope; if it cannot
        finish, our lease simply runs out on the registry side.
        """
        self._stopping = True
        self._lease_scope.cancel()
        async with self._lease_lock:  # waits out an in-flight heartbeat
            if not self.registered or self.instance_id is None:
                return
            try:
                with call_deadline(self._call_timeout):
                    await self.registry.deregister(self.instance_id)
            except (RegistryError, trio.ClosedResourceError) as exc:
                self._failed("deregister", exc, None)
            else:
                log.info("registry: deregistered %s", self.instance_id)
            self.registered = False

    def _failed(self, what: str, exc: Exception, retry_in: float | None) -> None:
        self.last_error = f"{what}: {exc}"
        retry = "" if retry_in is None else f"; retrying in {retry_in:.1f} s"
        if isinstance(exc, RegistryError | trio.ClosedResourceError):
            log.warning("registry: %s failed: %s%s", what, exc, retry)
        else:
            # Not in the registry taxonomy: a bug, logged with its traceback.
            log.error("registry: %s failed unexpectedly%s", what, retry, exc_info=exc)

    # --- consumed services ------------------------------------------------------

    def ensure_watched(self, service: str) -> None:
        """Watch `service` from now on (idempotent; sync, safe on the request path)."""
        if service in self._watched:
            return
        self._watched[service] = _Watched()
        if self._nursery is not None:
            self._start_watcher(service)

    def _start_watcher(self, service: str) -> None:
        watched = self._watched[service]
        if not watched.started and self._nursery is not None:
            watched.started = True
            self._nursery.start_soon(self._watch, service, watched, name=f"watch {service}")

    async def _watch(self, service: str, watched: _Watched) -> None:
        key = ServiceKey(service, self.app)
        backoff = self._backoff()

        def on_change(instances: Sequence[Instance]) -> None:
            backoff.reset()
            watched.error = None
            self._apply_snapshot(service, instances)

        while True:
            try:
                await self._watch_once(key, on_change)
                exc: Exception = RegistryError("watch returned")
            except trio.ClosedResourceError:
                return  # the registry's owner closed it: the session is over
            except Exception as error:
                exc = error
            delay = backoff.delay()
            self.watch_restarts += 1
            watched.error = str(exc)
            self._failed(f"watch {key}", exc, delay)
            await trio.sleep(delay)

    async def _watch_once(self, key: ServiceKey, on_change: OnChange) -> None:
        """`registry.watch`, whose first snapshot (the listing) must come within `call_timeout`.

        After that the backend owns the stream's liveness (it knows what a
        progress notification or a ping looks like).
        """
        with trio.CancelScope(deadline=trio.current_time() + self._call_timeout) as first:

            def on_first(instances: Sequence[Instance]) -> None:
                first.deadline = math.inf
                on_change(instances)

            await self.registry.watch(key, on_first)
        if first.cancelled_caught:
            raise RegistryUnavailable(f"no first answer within {self._call_timeout:g} s")

    def _apply_snapshot(self, service: str, instances: Sequence[Instance]) -> None:
        # An empty list for a name we never saw keeps it unknown (502
        # service-not-found); for a known service it means "no instance" (503).
        if instances or self.cache.lookup(service) is not None:
            self.cache.update(service, instances)

    async def resolve(self, service: str) -> None:
        """Load `service` into the cache on its first request, then watch it.

        Concurrent first requests share one registry call. A name with no
        instances stays out of the cache, and is asked about again only after
        `miss_ttl`. Error handling: `RegistryError` propagates (the caller
        answers it), also when the registry does not answer within
        `call_timeout`; the caller may bound the call further.
        """
        while self.cache.lookup(service) is None and not self._recently_missed(service):
            pending = self._resolving.get(service)
            if pending is not None:
                await pending.wait()  # then re-check: that fetch may have failed
                continue
            done = self._resolving[service] = trio.Event()
            try:
                with call_deadline(self._call_timeout):
                    found = await self.registry.instances(ServiceKey(service, self.app))
            finally:
                del self._resolving[service]
                done.set()
            if not found:
                self._misses.pop(service, None)
                self._misses[service] = trio.current_time()
                while len(self._misses) > MAX_MISSES:
                    del self._misses[next(iter(self._misses))]
                return
            if self.cache.lookup(service) is None:  # a watcher may have been faster
                self.cache.update(service, found)
            self.ensure_watched(service)
            return

    def _recently_missed(self, service: str) -> bool:
        missed = self._misses.get(service)
        if missed is None:
            return False
        if trio.current_time() - missed < self._miss_ttl:
            return True
        del self._misses[service]
        return False

    # --- admin view ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Our registration and every cached service, as JSON for `GET /v1/registry`."""
        now = trio.current_time()
        registration: dict[str, Any] | None = None
        if self._me is not None:
            me = self._me
            beat = self._last_heartbeat
            registration = {
                "service": me.service,
                "app": me.app,
                "version": me.version,
                "instance_id": self.instance_id,
                "endpoint": me.endpoint,
                "registered": self.registered,
                "lease_current": self.lease_current,
                "status": self._status_wanted,
                "last_heartbeat_age": None if beat is None else round(now - beat, 3),
                "last_error": self.last_error,
            }
        snapshot = self.cache.snapshot()
        services = {
            name: {
                "watched": name in self._watched,
                "watch_error": self._watched[name].error if name in self._watched else None,
                "instances": [instance_view(i) for i in snapshot.get(name, ())],
            }
            for name in sorted(set(snapshot) | set(self._watched))
        }
        return {"registry": repr(self.registry), "registration": registration, "services": services}
