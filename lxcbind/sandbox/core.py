"""A policy applied to one container: ``Sandbox`` owns the container's whole life.

Setup order: refuse what cannot be enforced (network) → reap orphans of dead runners → take
the container name's lock → write the ownership record → (networked policies) note "network"
in it, lease an address and install the container's nftables table, all before the container
exists → define the container (root filesystem overlay, filesystem policy as mount entries,
no network device for a deny-all policy, else one routed veth) or reuse a kept one with the
*current* policy → write its resolv.conf → start.  Teardown order (``close``, on every path,
fatal signals shielded): kill the workload → stop → destroy (``destroyOnExit``; a kept
networked container is stopped) → delete the table (unless ``preservePolicy``) and release the
lease → remove the record → release the lock.  Network rules never go while a process of the
container can still run; if that cannot be guaranteed the record stays for ``gc``.

``run(cmd, policy=..., ...)`` is the one-call API: a fresh sandbox, one command captured, torn
down.  ``Sandbox.run(cmd, ...)`` runs commands in a kept-up one with the same keywords, and
``Sandbox.put``/``get`` copy files in and out.

Over 500 lines as one thing: ``Sandbox`` is the setup and the teardown of one container,
and the two are mirror images that are checked against each other line by line.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lxcbind._lite import replace
from lxcbind.command import (
    CallOptions,
    Command,
    CommandDefaults,
    check_call,
)
from lxcbind.errors import LxcbindError, PolicyError, SandboxError
from lxcbind.lxc import cgroups
from lxcbind.lxc.container import default_lxcpath
from lxcbind.policy.defaults import default_policy
from lxcbind.policy.model import Policy
from lxcbind.policy.parse import load_policy, load_policy_file
from lxcbind.proc import files as _files
from lxcbind.proc import runner as _runner
from lxcbind.proc import session as _session
from lxcbind.proc import users as _users
from lxcbind.proc.runner import Container
from lxcbind.result import DEFAULT_MAX_OUTPUT, CompletedRun, MaxOutput
from lxcbind.sandbox import cleanup, disk, idmap, imagefs, kept, mounts, rootfs, security
from lxcbind.sandbox.initspawner import InitChannel
from lxcbind.sandbox.netcheck import network_notice as network_notice  # re-exported
from lxcbind.sandbox.netcheck import network_refusal as network_refusal
from lxcbind.state import STATE_ROOT

if TYPE_CHECKING:
    from lxcbind.image import Image
    from lxcbind.image.snapshot import Snapshot
    from lxcbind.net import network
    from lxcbind.policy.model import Rootfs

# ``network`` (and what it imports: socket, netlink, nftables) is imported only by the code
# paths that need it, so a run with no network device never loads it.

Log = Callable[[str], None]

PolicyLike = Policy | Mapping[str, Any] | str | bytes | os.PathLike[str]


def as_policy(policy: PolicyLike, *, command_required: bool = True) -> Policy:
    """A ``Policy`` from a Policy, a parsed dict, JSON text, or a path to a JSON file.
    ``command_required=False``: ``process.commandLine`` may be missing (see ``load_policy``)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return load_policy(dict(policy), command_required=command_required)
    if isinstance(policy, (str, bytes)) and policy.lstrip()[:1] in ("{", b"{"):
        return load_policy(policy, command_required=command_required)
    if not isinstance(policy, (str, bytes, os.PathLike)):
        raise TypeError("a policy is a Policy, a dict, JSON text or a path to a JSON file, not "
                        f"{type(policy).__name__}")
    return load_policy_file(policy, command_required=command_required)


def is_policy_like(obj: object) -> bool:
    """Whether ``run``'s first argument is a policy (the old ``run(policy)`` form) rather than
    a command.  A policy is a ``Policy``, a mapping, ``bytes``, an ``os.PathLike``, or a
    ``str`` that is a JSON object (``{...}`` that parses as one) or a path ending in ``.json``
    that names an existing file.  Any other ``str``, and any list or tuple, is a command: a
    JSON object is never a useful shell command, and a command that is the bare name of an
    existing ``*.json`` file would not run anyway (a JSON file is not a program)."""
    if isinstance(obj, (Policy, Mapping, bytes, bytearray, os.PathLike)):
        return True
    if not isinstance(obj, str):
        return False
    text = obj.strip()
    if text.startswith("{"):
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    return text == obj and obj.endswith(".json") and not any(c.isspace() for c in obj) \
        and os.path.isfile(obj)


def _remove_named(name: str, lxcpath: str) -> None:
    with Container(name, lxcpath) as c:
        rootfs.remove_container(c)


def _release_orphan(record: cleanup.OwnershipRecord) -> None:
    """gc: the network state a dead runner left (table, veth, lease), after its container
    is destroyed — or, for a kept one, stopped: rules never go while its processes can run."""
    if "network" not in record.created:
        return
    from lxcbind.net import network

    with Container(record.container, record.lxcpath) as c:
        if c.defined:
            c.stop()
    network.teardown_orphan(record.container)


def _any_unowned_lease() -> bool:
    """Whether ``network``'s lease file (``<STATE_DIR>/net/leases.json``) names a container
    that has no ownership record: the only leases ``_reap_stale_leases`` may release.  Read
    without its lock and without importing ``network``: the file is replaced atomically, so
    this sees a whole snapshot, as ``leases.leases()`` would; a lease made after the read
    belongs to a run starting now, which ``leases.leases()`` would not have seen either.
    When in doubt (unreadable, malformed), True: the full check decides."""
    try:
        with open(os.path.join(STATE_ROOT, "net", "leases.json"), "rb") as f:
            leases = json.loads(f.read())["leases"]
        names = list(leases)
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True
    owners = os.path.join(STATE_ROOT, "owners")
    return any(not isinstance(n, str) or not os.path.exists(os.path.join(owners, f"{n}.json"))
               for n in names)


def _reap_stale_leases(log: Log) -> None:
    """Leases whose runner is dead and whose ownership record is gone (a runner killed after
    removing its record, or a record removed by an older gc): stop the container if it still
    runs, then remove the table, veth and lease.  Under the container's lock, like gc."""
    if not _any_unowned_lease():
        return
    from lxcbind.net import leases, network

    for name, lease in leases.leases().items():
        owned = os.path.exists(os.path.join(STATE_ROOT, "owners", f"{name}.json"))
        if lease.runner_alive() or owned:
            continue
        lock = cleanup.ContainerLock(name)
        if not lock.acquire(blocking=False):
            continue
        try:
            held = leases.leases().get(name)  # re-read under the lock
            if held is None or held.runner_alive():
                continue
            log(f"gc: releasing the network of {name!r} left by dead runner {held.runner_pid}")
            with Container(name, held.lxcpath or None) as c:
                if c.defined:
                    c.stop()
            network.teardown_orphan(name)
        finally:
            lock.release()


def _warning(message: str) -> None:
    """A library's warning: through ``logging`` (imported only when there is one to give)."""
    import logging

    logging.getLogger("lxcbind").warning("%s", message)


class Sandbox:
    """One container set up for a policy (context manager).

    ``container`` is the running ``Container`` once entered.  ``signals`` (a
    ``cleanup.FatalSignals``) is shielded during teardown so a second Ctrl-C cannot cut it short.
    ``start_timeout``: how long the container's init (the session spawner, in a throwaway
    container) may take to connect to this process once started.
    Not thread-safe: one thread sets up and tears down; commands may come from any thread.
    """

    def __init__(self, policy: PolicyLike | None = None, *, lxcpath: str | None = None,
                 log: Log | None = None, warn: Log | None = None,
                 signals: cleanup.FatalSignals | None = None,
                 lock_timeout: float = 60.0, start_timeout: float = 10.0,
                 image: object = None) -> None:
        # The commands come from run(cmd): process.commandLine is optional here.
        self.policy = imagefs.with_image(default_policy() if policy is None else
                                         as_policy(policy, command_required=False), image)
        self.image: Image | None = None   # the stored image it runs on, once open
        self._snapshot: Snapshot | None = None   # that image, when it is a snapshot
        self._base: Rootfs = self.policy.lxc.rootfs   # what the container's base is, once open
        self.lxcpath = lxcpath or default_lxcpath()
        self.name = self.policy.container_id or f"lxcbind-{os.urandom(4).hex()}"
        self._container: Container | None = None
        self.reused = False
        self._log = log or (lambda message: None)
        self._warn = warn or _warning
        self._signals = signals
        self._lock = cleanup.ContainerLock(self.name, lock_timeout)
        self._start_timeout = start_timeout   # for the init spawner to reach us and say hello
        self._record: cleanup.OwnershipRecord | None = None
        self._locked = False
        self._net: network.ContainerNetwork | None = None
        self._ids: idmap.IdRange | None = None
        self._limits = security.resolve(self.policy.lxc.limits)
        self._disk_size = disk.resolve(self.policy.lxc.limits.disk, self.lxcpath)
        self._disk: disk.Layer | None = None   # the limited writable layer, while it runs
        self._rootfs_path = ""
        self._event_files: tuple[str | None, str | None] | None = None   # found after start
        self._sessions: list[Session] = []   # closed first, before the container goes
        # The spawner that is the container's init (fresh throwaway containers; see
        # ``initspawner``): what run() uses, and what Session.from_policy hands out.
        self._init_channel: InitChannel | None = None
        self._init_session: Session | None = None
        # A kept container's init and what it ran when this run began: all that survives
        # the run (``_stop_workload``).
        self._spare: tuple[int, set[tuple[int, str]]] | None = None
        # A kept container's commands go through one attached spawner, made on first use
        # (``_kept_session``), so that what a command leaves never meets a later one.
        self._kept: Session | None = None
        self._kept_lock = threading.Lock()

    # -- setup -------------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        try:
            self.open()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def open(self) -> None:
        refusal = network_refusal(self.policy)
        if refusal:
            raise SandboxError(refusal)
        cgroups.prime_migration()   # the grace period start() waits for, off its path
        cleanup.collect_garbage(_remove_named, release=_release_orphan, log=self._log,
                                warn=self._warn)
        disk.sweep()   # images a killed runner's containers used (one directory read)
        _reap_stale_leases(self._log)
        self._log(f"locking container name {self.name!r}")
        if not self._lock.acquire(blocking=False):
            # Two runs with one containerId run one after the other: say so once, or four
            # parallel runs silently take four times as long.
            self._warn(f"containerId {self.name!r} is in use by another run; waiting for it "
                       f"(up to {self._lock.timeout:g}s)")
            self._lock.acquire()
        self._locked = True
        fs = self.policy.filesystem
        spec = self.policy.lxc.rootfs
        if spec.kind == "image":   # found (or imported) once: everything below names its id
            self.image, spec = imagefs.resolve(spec)
            from lxcbind.image import snapshot  # a snapshot: its layers over its own base

            self._snapshot, spec = snapshot.layered(self.image, spec)
        self._base = spec
        privileged = self.policy.lxc.privileged
        planned = mounts.plan_mounts(fs.readwrite_paths, fs.readonly_paths, fs.denied_paths,
                                     rootfs_kind=spec.kind, idmapped=not privileged)
        probe = Container(self.name, self.lxcpath)
        self.reused = probe.defined
        self._record = cleanup.OwnershipRecord.for_this_process(
            self.name, self.lxcpath, destroy=self.policy.lifecycle.destroy_on_exit)
        if not self.reused:   # noted before it is made, like everything: one write, not two
            self._record.created.append("container")
            if self._disk_size is not None:
                self._record.created.append("disk")   # image, loop device, mount: in its dir
        self._record.save()
        if not privileged:
            # Held while the container's directory exists or this runner lives: a SIGKILL
            # cannot leak it (the next acquire or gc frees it).
            self._ids = idmap.acquire(self.name, self.lxcpath)
        isolation = security.Isolation(
            self._ids, self.policy.lxc.allow, self._limits,
            deny_setid=mounts.maps_host_root_writable(planned), template=self._template)
        effective = self.policy.network.effective()
        net_config: list[tuple[str, str]] = []
        if not effective.is_deny_all():
            from lxcbind.net import network

            # Lease and rules exist before the container does: its veth is filtered from the
            # first packet.  Noted first, so gc finds them if this runner is killed midway.
            self._net = network.ContainerNetwork(self.name, effective, log=self._log,
                                                 lxcpath=self.lxcpath)
            self._record.note("network")
            self._net.prepare()
            net_config = self._net.config
        if self.reused:
            self._log(f"reusing kept container {self.name!r} with the current policy")
            self._container = probe
            probe.stop()  # mount entries only apply at start
            kept.check_isolation(probe, self._ids)
            rootfs.replace_mounts(probe, spec, planned, isolation)
            cdir = os.path.join(self.lxcpath, self.name)
            if disk.has_layer(cdir):   # its writes are in its image; the size it was made with
                disk.mount_existing(cdir)   # after a reboot, or a run that failed to start
            imagefs.rebind_layers(cdir, self._ids)   # detached after its last start
            from lxcbind.net import network

            network.configure_existing(probe, net_config)
        else:
            probe.close()
            cdir = os.path.join(self.lxcpath, self.name)
            spawner_init = self.policy.lifecycle.destroy_on_exit
            d = self.command_defaults()
            init_config = self._init_config(cdir, d) if spawner_init else []
            self._log(f"defining container {self.name!r} on a {spec.kind} root filesystem")
            self._container = rootfs.define_container(self.name, spec, lxcpath=self.lxcpath,
                                                     mounts=planned,
                                                     config=net_config + init_config,
                                                     isolation=isolation,
                                                     disk_size=self._disk_size,
                                                     layers=self._image_layers())
            if spawner_init:
                self._init_channel = self._make_init_channel(cdir)
        rootfs_path = self._rootfs_path = self._container.get_config_item("lxc.rootfs.path")
        # A fresh container on one of lxcbind's own bases starts from an empty upper layer over
        # a base nothing writes to, so only a kept container or a caller's directory (which mxc
        # may have used) can hold a pin.
        if self._net is not None or self.reused or spec.kind == "dir":
            from lxcbind.net import dns, etcfiles

            if dns.unpin_hosts(rootfs_path):
                # A pin an earlier run (or mxc) left names an address this policy never allowed.
                self._log("removed a stale proxy pin from /etc/hosts")
            if self._net is not None:
                self._net.write_files(rootfs_path)
            elif self.reused:
                etcfiles.write_etc_file(rootfs_path, "resolv.conf", "")  # no stale resolver
        cdir = os.path.join(self.lxcpath, self.name)
        if self._ids is not None:
            for owner in sorted({e.owner for e in planned if e.owner is not None}):
                idmap.bind_userns(cdir, owner, self._ids)
            for entry in planned:
                if entry.staged:
                    idmap.stage_bind(cdir, entry.source)
        if disk.has_layer(cdir):
            self._disk = disk.Layer(cdir)
        self._log("starting")
        try:
            self._container.start()
        except LxcbindError as exc:
            raise SandboxError(f"container {self.name!r} failed to start: {exc}") from None
        finally:
            idmap.unbind_all(cdir)  # liblxc has made its idmapped mounts by now
            if self.policy.lifecycle.destroy_on_exit:
                # The container's overlay holds the layer from now on: when its last process
                # is gone the kernel frees the filesystem and the loop device, whoever dies.
                # (A kept container's layer stays mounted on the host with it, where lxcbind
                # repairs its /etc between runs; removing the container unmounts it.)
                disk.detach(cdir)
        init_pid = self._container.init_pid
        if init_pid is None:
            why = (": its init, lxcbind's session spawner, exited before it reached the host"
                   if self._init_channel is not None else "")
            raise SandboxError(f"container {self.name!r} stopped right after starting{why}")
        control = None
        if self._init_channel is not None:   # first: an init that died says so, not a limit
            control = self._init_channel.accept(init_pid, timeout=self._start_timeout)
            self._init_channel = None   # accept() closed it
        try:
            security.verify_limits(init_pid, self._limits)
            # They do not move while it runs: limit_events reads them without asking liblxc
            # for the init's pid and /proc for its cgroups twice per command.
            self._event_files = cgroups.event_files(init_pid)
            if not self.policy.lifecycle.destroy_on_exit:
                self._spare = kept.init_processes(self._container, init_pid)
        except BaseException:
            if control is not None:
                control.close()
            raise
        if control is not None:
            self._adopt_init(control)

    # Hooks for a container whose init is not the session spawner (``sandbox.template``: a
    # Pool's warm template, whose init is the cloner).

    _template = False   # a Pool's template: see security.hardening_config

    def _init_config(self, cdir: str, d: CommandDefaults) -> list[tuple[str, str]]:
        return InitChannel.config(cdir, d.uid, d.gid)

    def _make_init_channel(self, cdir: str) -> InitChannel:
        return InitChannel(cdir)

    def _adopt_init(self, control: Any) -> None:
        """The init connected (``control``, its checked socket): make it the sandbox's
        session."""
        d = self.command_defaults()
        self._init_session = Session(self._running("run"), env=d.env or None, cwd=d.cwd,
                                     timeout=d.timeout, uid=d.uid, gid=d.gid,
                                     init_control=control, start_timeout=self._start_timeout)
        self._init_session._disk = self._disk
        self._init_session._image = self.image.id if self.image else None

    def _image_layers(self) -> Callable[[int | None], list[str]] | None:
        if self._snapshot is None:
            return None
        snap, cdir = self._snapshot, os.path.join(self.lxcpath, self.name)
        return lambda start: imagefs.lowers(snap, cdir, self._ids)

    def snapshot(self, name: str | None = None) -> Snapshot:
        """Capture the running sandbox's root filesystem as an image (``lxcbind.sandbox.fork``:
        processes frozen meanwhile; host binds and tmpfs mounts are not part of it)."""
        from lxcbind.sandbox import fork

        return fork.snapshot(self, name)

    def fork(self, n: int) -> list[Sandbox]:
        """``n`` started sandboxes of this policy, each from this one's current filesystem,
        isolated from it and from each other, each closed on its own (``sandbox.fork``)."""
        from lxcbind.sandbox import fork

        return fork.fork(self, n, Sandbox)

    # -- commands ----------------------------------------------------------------------------

    def command_defaults(self, policy: Policy | None = None) -> CommandDefaults:
        """The policy's process (env, cwd, timeout, ``lxc.uid``/``gid``): every command's
        defaults.  In proxy mode the environment also points at the proxy.  ``policy``:
        another policy's process and user on this sandbox's image (a warm server's client,
        ``sandbox.warm``)."""
        policy = policy or self.policy
        process = policy.process
        env = process.env_dict()
        if self._net is not None:
            env.update(self._net.env())
        lxc = policy.lxc
        d = CommandDefaults(env, process.cwd or "/", process.timeout, lxc.uid,
                            lxc.gid if lxc.uid is not None else None)
        if self.image is None:
            return d
        image = self.image
        if self._snapshot is not None:   # its account files may be in any of its layers
            from lxcbind.image import snapshot

            image = snapshot.accounts(self._snapshot, image)
        return imagefs.defaults(d, image, policy)

    def session(self, *, start_timeout: float = 10.0) -> Session:
        """A warm ``Session`` in this sandbox (many commands, one spawner): the policy's env,
        cwd, timeout and user are its defaults, as for ``run``.  The sandbox owns it: closing
        the sandbox closes its sessions first.  Closing a session leaves the sandbox up."""
        d = self.command_defaults()
        session = Session(self._running("session"), env=d.env or None, cwd=d.cwd,
                          timeout=d.timeout, uid=d.uid, gid=d.gid, start_timeout=start_timeout)
        session._disk = self._disk
        session._image = self.image.id if self.image else None
        self._sessions.append(session)
        return session

    @property
    def container(self) -> Container:
        """The running container: the bare binding (neither the policy's env nor its cwd
        apply to ``box.container.run``).  ``SandboxError`` outside ``with``."""
        if self._container is None or self._container.closed:
            raise SandboxError("Sandbox.container: the sandbox is not running; use "
                               "`with lxcbind.Sandbox(policy) as box: box.container`")
        return self._container

    def _running(self, call: str) -> Container:
        if self._container is None or self._container.closed:
            raise SandboxError(f"Sandbox.{call}(): the sandbox is not running; use "
                               f"`with lxcbind.Sandbox(policy) as box: box.{call}(...)`")
        return self._container

    def policy_argv(self, call: str = "run") -> list[str]:
        """The policy's own command (``process.commandLine``) as an argv, else the image's
        (``Entrypoint + Cmd``)."""
        return imagefs.argv(self.image, self.policy, call)

    def run(self, cmd: Command | None = None, *, env: Mapping[str, str] | None = None,
            cwd: str | None = None, input: bytes | str | None = None, text: bool = False,
            encoding: str | None = None, errors: str | None = None,
            timeout: float | None = None, check: bool = False, max_output: MaxOutput = None,
            tty: bool = False, user: str | int | None = None) -> CompletedRun:
        """Run ``cmd`` (a str for ``/bin/sh -c``, or an argv list; None: the policy's own
        command) in this sandbox, captured, under the policy's ``process`` settings: ``env``
        is merged over ``process.env``, ``cwd`` replaces ``process.cwd``, ``timeout``
        (seconds) replaces ``process.timeout``.  ``input`` goes to stdin, then EOF; ``text``
        (or ``encoding``/``errors``) decodes stdout/stderr (UTF-8, invalid bytes replaced);
        ``max_output`` caps each stream (head and tail kept, a marker where it was cut; None:
        16 MiB, ``lxcbind.DEFAULT_MAX_OUTPUT``; ``lxcbind.UNLIMITED`` keeps everything);
        ``tty`` runs on a pty (merged output).  ``check``: a timeout raises
        ``lxcbind.TimeoutExpired``, a non-zero exit ``lxcbind.CalledProcessError``.

        ``user``: another user of the container (a name, a uid or ``"uid:gid"``; see
        ``Session.run``); a policy that fixes ``lxc.uid`` accepts only that user.

        Raises ``TypeError``/``ValueError`` on bad keywords, ``PolicyError`` when ``cmd`` is
        None and the policy has no command, ``SandboxError`` when the sandbox is not running.
        """
        opts = check_call(cmd, env=env, cwd=cwd, input=input, timeout=timeout,
                          max_output=max_output, text=text, encoding=encoding, errors=errors,
                          call="Sandbox.run")
        spec = _users.check_user(user, "Sandbox.run")
        if spec is not None:   # through a spawner: it sets the user's groups (see Session.run)
            session = self._files_session("run")
            argv = opts.argv if opts.argv is not None else self.policy_argv("run")
            d = self.command_defaults().overridden(opts)
            return session._run(opts._replace(argv=argv, env=d.env, cwd=d.cwd,
                                              timeout=d.timeout),
                                check=check, tty=tty, user=session._user(spec, "Sandbox.run"))
        return self._run(opts, check=check, tty=tty)

    def _run(self, opts: CallOptions, *, check: bool = False, tty: bool = False,
             call: str = "run") -> CompletedRun:
        from lxcbind.proc.runner import run as run_captured

        container = self._running(call)
        argv = opts.argv if opts.argv is not None else self.policy_argv(call)
        d = self.command_defaults().overridden(opts)
        init = self._init_session or self._kept_session(call)
        if init is not None and init.alive:
            # The spawner already runs as the container's init: no attach (see initspawner);
            # or, in a kept container, the one attached for its commands.
            return init._run(opts._replace(argv=argv, env=d.env, cwd=d.cwd, timeout=d.timeout),
                             check=check, tty=tty, forward_signals=True)
        before = self.limit_events()
        result = run_captured(container, argv, input=opts.input, tty=tty,
                              max_output=opts.max_output, env=d.env, cwd=d.cwd,
                              timeout=d.timeout, uid=d.uid, gid=d.gid)
        result = self.with_limit_events(result, before)
        if opts.encoding is not None:
            result = result.decoded(opts.encoding, opts.errors)
        if check:
            result.check_returncode()
        return result

    def _kept_session(self, call: str) -> Session | None:
        """The spawner that runs ``run``'s commands in a kept container (None in a throwaway
        one: its init is the spawner).  Attached on first use, and replaced if a command
        killed it: closing the dead one kills what its commands left in the container (its
        last resort), so a leftover never meets a later command here either."""
        if self.policy.lifecycle.destroy_on_exit:
            return None
        with self._kept_lock:
            session = self._kept
            if session is not None and not session.alive:
                self._kept = None
                session.close()
                session = None
            if session is None:
                d = self.command_defaults()
                session = self._kept = Session(self._running(call), env=d.env or None,
                                               cwd=d.cwd, timeout=d.timeout, uid=d.uid,
                                               gid=d.gid, start_timeout=self._start_timeout)
                session._disk = self._disk
                session._image = self.image.id if self.image else None
            return session

    # -- files -------------------------------------------------------------------------------
    # put/get are commands through a spawner (``lxcbind.proc.files``): the init spawner of a
    # throwaway sandbox, else one Session attached on first use and kept.  Never an attach
    # per call, which forks the caller (its cost grows with the caller's memory).

    def _files_session(self, call: str) -> _session.Session:
        """The spawner put/get (and ``run(user=...)``) use: the container's init in a
        throwaway sandbox, the kept container's own (``_kept_session``) otherwise."""
        self._running(call)
        init = self._init_session
        if init is not None and init.alive:
            return init
        kept = self._kept_session(call)
        return kept if kept is not None else self.session()

    def put(self, path: str | os.PathLike[str], data: bytes | str, *, parents: bool = False,
            timeout: float | None = 60.0) -> None:
        """Write ``data`` (bytes; str is UTF-8 encoded) to the file ``path`` in the running
        sandbox, created or truncated, as the policy's user (``lxc.uid``, else container root),
        through a command in the container (``cat``, started by the sandbox's spawner: no
        attach): read-only and denied paths refuse it.  A relative ``path`` is taken against
        the policy's ``process.cwd`` (``/`` when unset).  ``parents``: create the missing
        parent directories first (``mkdir -p``); otherwise the parent must exist.  An
        existing ``path`` must be a regular file (a directory: ``EISDIR``; a denied file, a
        device or a FIFO: ``EPERM``).

        Raises ``FileTransferError`` (an ``OSError``: ``errno`` ``EROFS``, ``ENOENT``,
        ``EACCES`` ... as the container reported it; for ``ENOENT``, ``EACCES``/``EPERM``,
        ``EISDIR``, ``ENOTDIR`` and ``EEXIST`` also ``FileNotFoundError``,
        ``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``,
        ``FileExistsError``), ``TypeError``/``ValueError`` on bad arguments."""
        session = self._files_session("put")
        opts, where = _files.put_call(path, data, cwd=session.cwd, parents=bool(parents),
                                      timeout=timeout, call="Sandbox.put")
        _files.put_done(session._run(opts), where, opts.timeout)

    def get(self, path: str | os.PathLike[str], *, timeout: float | None = 60.0,
            max_size: int = 256 << 20) -> bytes:
        """The contents of the file ``path`` in the running sandbox (relative: against
        ``process.cwd``), read as the policy's user through a command in the container: a
        directory is refused (``EISDIR``), a denied file too (``EPERM``: it is not a regular
        file there), a denied directory has no files (the policy's masks).  At most
        ``max_size`` bytes (``FileTransferError`` ``EFBIG`` beyond: a workload can leave a
        huge file where the caller expects a small one); a FIFO swapped in after the check is
        cut by ``timeout``.

        Raises ``FileTransferError`` (``ENOENT``, ``EACCES``, ``EISDIR`` ..., with the builtin
        subclasses ``put`` names)."""
        session = self._files_session("get")
        opts, where = _files.get_call(path, cwd=session.cwd, max_size=max_size,
                                      timeout=timeout, call="Sandbox.get")
        return _files.get_done(session._run(opts), where, max_size, opts.timeout)

    def put_file(self, path: str | os.PathLike[str], source: Any, *, parents: bool = False,
                 timeout: float | None = 600.0) -> None:
        """``put`` streamed from ``source`` (a binary file object with ``fileno()``, or an
        fd), in bounded memory: see ``Session.put_file``."""
        self._files_session("put_file").put_file(path, source, parents=parents,
                                                 timeout=timeout)

    def get_file(self, path: str | os.PathLike[str], destination: Any, *,
                 timeout: float | None = 600.0, max_size: int = 1 << 62) -> None:
        """``get`` streamed into ``destination`` (a binary file object with ``fileno()``, or
        an fd): see ``Session.get_file``."""
        self._files_session("get_file").get_file(path, destination, timeout=timeout,
                                                 max_size=max_size)

    def limit_events(self) -> security.Events:
        """The container's OOM-kill and refused-fork counters now (see ``with_limit_events``)."""
        if self._event_files is not None and self._container is not None \
                and not self._container.closed:
            return cgroups.read_events(self._event_files)
        return security.events(self._container.init_pid if self._container else None)

    def with_limit_events(self, result: CompletedRun, before: security.Events) -> CompletedRun:
        """``result`` with ``oom_killed``/``pids_limited`` set from what changed since
        ``before`` (read while the container still runs: the counters go with it), and
        ``disk_limited`` when the writable layer is full."""
        after = self.limit_events()
        return replace(result, oom_killed=after.oom_kills > before.oom_kills,
                       pids_limited=after.pids_max > before.pids_max,
                       disk_limited=self._disk is not None and self._disk.full(),
                       image=self.image.id if self.image is not None else None)

    def interact(self, *, timeout: float | None = None, tty: bool | None = None) -> CompletedRun:
        """Run the policy's command bridged to this process's stdio (see ``runner``)."""
        d = self.command_defaults()
        container = self._running("interact")
        init = self._init_session
        pipes = not tty if tty is not None else not (os.isatty(0) and os.isatty(1))
        if pipes and init is not None and init.alive:
            # Through the spawner that is the container's init (no attach).  A terminal
            # keeps liblxc's attach, and the runner's raw mode and window-size following.
            opts = CallOptions(self.policy_argv("interact"), d.env, d.cwd, None,
                               d.timeout if timeout is None else timeout, DEFAULT_MAX_OUTPUT,
                               None, "replace")
            return init._interact(opts)
        before = self.limit_events()
        result = _runner.interact_run(container, self.policy_argv("interact"),
                                      tty=tty, env=d.env, cwd=d.cwd,
                                      timeout=d.timeout if timeout is None else timeout,
                                      uid=d.uid, gid=d.gid)
        return self.with_limit_events(result, before)

    # -- teardown ----------------------------------------------------------------------------

    def _unpin(self) -> None:
        """A kept container keeps no proxy pin once its run is over (as under mxc); failing
        to remove it is only a warning: the next run removes it before anything starts."""
        from lxcbind.net import dns

        try:
            dns.unpin_hosts(self._rootfs_path)
        except (OSError, SandboxError) as exc:
            self._log(f"could not remove the proxy pin from /etc/hosts: {exc}")

    def _stop_workload(self, c: Container) -> bool:
        """Kill every process of the kept container ``c`` that was not there when this run
        started (its init and what the init had started stay): a daemon that ``setsid``'d
        or double-forked out of an attached command included.  The cgroup is frozen
        meanwhile, so nothing forks its way out.  False when that cannot be done (no
        freezer, the init changed, a process would not die): the caller stops the
        container instead, so that no workload process outlives the run either way."""
        spare = self._spare
        if spare is None or c.init_pid != spare[0]:
            return False
        try:
            return cgroups.kill_newcomers(*spare)
        except OSError:
            return False

    def close(self, failed: bool = False) -> None:
        """Tear down whatever was set up; idempotent; fatal signals wait until it is done.

        A container this run created is destroyed when the run failed even if the policy
        asked to keep it (a half-set-up container is not worth keeping)."""
        shield = self._signals.shielded() if self._signals else contextlib.nullcontext()
        with shield:
            if self._init_session is not None:
                self._sessions.append(self._init_session)
                self._init_session = None
            if self._kept is not None:
                self._sessions.append(self._kept)
                self._kept = None
            while self._sessions:   # their spawners run in the container: they go first
                try:
                    self._sessions.pop().close()
                except Exception as exc:  # noqa: BLE001 - the container must still go
                    self._log(f"closing a session failed: {exc}")
            if self._init_channel is not None:   # a failed start: nothing accepted
                self._init_channel.close()
                self._init_channel = None
            # Held until the container is gone, then let go off the caller's path: the last
            # reference to the layer shuts its filesystem and loop device down (~30 ms).
            layer, self._disk = self._disk, None
            settled = self._net is None  # True once nothing of the network is left to undo
            removed = False   # the container is gone (or kept on purpose): no record needed
            try:
                c = self._container
                if c is not None and not c.closed:
                    keep = not self.policy.lifecycle.destroy_on_exit and not (
                        failed and not self.reused)
                    try:
                        if keep:
                            c.kill_attached()  # the container stays, its workload does not
                            if self._net is None and not self._stop_workload(c):
                                c.stop()
                            if self._net is not None:
                                # Its rules are about to go: it must not run without them.
                                c.stop()
                                if self._net.eff.proxy is not None and self._rootfs_path:
                                    self._unpin()
                            self._log(f"keeping container {self.name!r}")
                        else:
                            self._log(f"destroying container {self.name!r}")
                            rootfs.remove_container(c, wait_layer=layer is None)
                    finally:
                        c.close()
                removed = True
                # Under the name's lock, also when a signal cut ``idmap.acquire`` short after
                # it recorded the range but before ``_ids`` was set (no other run of this name
                # can hold a range meanwhile: it would need the lock).
                acquiring = self._locked and not self.policy.lxc.privileged
                if (self._ids is not None or acquiring) and not os.path.isdir(
                        os.path.join(self.lxcpath, self.name)):
                    idmap.release(self.name, self.lxcpath)
                    self._ids = None
                if self._net is not None:
                    # Only now: no process of the container can send a packet any more.
                    self._net.teardown(preserve=self.policy.lifecycle.preserve_policy)
                    self._net = None
                    settled = True
            finally:
                if layer is not None:
                    layer.close(background=True)
                if self._record is not None and settled and removed:
                    self._record.remove()
                    self._record = None
                # else: the record stays, naming the container or the network state, for gc
                # to finish
                if self._locked:
                    self._lock.release()
                    self._locked = False
            if removed and self._snapshot is not None and self._snapshot.ephemeral:
                from lxcbind.image import snapshot  # a fork's: gone with its last user

                snapshot.prune(self.lxcpath, only=self._snapshot.id)
        if self._signals:
            self._signals.check()


def run(cmd: Command | PolicyLike | None = None, *, policy: PolicyLike | None = None,
        env: Mapping[str, str] | None = None, cwd: str | None = None,
        input: bytes | str | None = None, text: bool = False, encoding: str | None = None,
        errors: str | None = None, timeout: float | None = None, check: bool = False,
        max_output: MaxOutput = None, tty: bool = False,
        lxcpath: str | None = None, image: object = None, warm: bool = False) -> CompletedRun:
    """Run one command in a fresh sandbox and return what it did; the container is gone on
    return, whatever happened.

    ``cmd``: a str (``/bin/sh -c CMD``) or an argv list; None runs the policy's own
    ``process.commandLine``.  ``policy``: a ``Policy``, dict, JSON text or path; None is the
    embedded default (``policy.DEFAULT_POLICY``: schema 0.8, no network device, the host's
    root filesystem, default isolation).  The other keywords are ``Sandbox.run``'s: ``env``
    merged over ``process.env``, ``cwd`` and ``timeout`` (seconds) replacing ``process.cwd``
    and ``process.timeout``, ``input``, ``text``/``encoding``/``errors``, ``max_output``,
    ``tty``.  ``image``: the root filesystem (an image reference, a stored image or
    snapshot, or its id or name) instead of the policy's ``lxc.rootfs``.  A non-zero exit is
    a result, not an error, unless ``check`` (then ``lxcbind.CalledProcessError`` /
    ``lxcbind.TimeoutExpired``).

    ``warm``: run in a clone from the warm server for this policy (``python -m lxcbind warm
    POLICY``, ``lxcbind.sandbox.warm``) when one is running, else (said at the ``lxcbind``
    logger's INFO level) in a fresh container as without it: the same result either way
    (not with ``lxcpath``: a warm server uses the default one).

    The old form ``run(policy_like, ...)`` still works: a first argument that
    ``is_policy_like`` (a Policy, a mapping, bytes, a path object, JSON object text, or an
    existing ``*.json`` file's path) is the policy, and its own command runs.

    Raises ``TypeError``/``ValueError`` on bad keywords (before anything is set up),
    ``PolicyError`` for an invalid policy (or no command at all), ``SandboxError`` /
    ``LxcError`` when the sandbox cannot be set up.
    """
    if cmd is not None and is_policy_like(cmd):
        if policy is not None:
            raise TypeError("run() got a policy both as its first argument and as policy=; "
                            "use run(cmd, policy=policy)")
        policy, cmd = cmd, None   # type: ignore[assignment]
    opts = check_call(cmd, env=env, cwd=cwd, input=input, timeout=timeout,
                      max_output=max_output, text=text, encoding=encoding, errors=errors)
    resolved = default_policy() if policy is None else as_policy(policy, command_required=False)
    if opts.argv is None and not resolved.process.command_line and image is None \
            and resolved.lxc.rootfs.kind != "image":
        raise PolicyError("process.commandLine", "missing, and no command given: pass one, e.g. "
                          "lxcbind.run(\"echo hi\") or lxcbind.run([\"ls\", \"/\"])")
    if warm and lxcpath is None:
        from lxcbind.proc import warm as _warm

        def say(message: str) -> None:
            import logging

            logging.getLogger("lxcbind").info("%s", message)

        session = _warm.open_clone(imagefs.with_image(resolved, image), log=say)
        if session is not None:
            with session:
                return session.run_call(opts, check=check, tty=tty)
    with Sandbox(resolved, lxcpath=lxcpath, image=image) as box:
        result = box._run(opts, tty=tty)
    if check:
        result.check_returncode()
    return result


def delete_container(name: str, *, lxcpath: str | None = None, log: Log | None = None,
                     lock_timeout: float = 10.0) -> bool:
    """Destroy container ``name`` and the network state a run left for it (a preserved
    table, the lease of a dead runner), under its lock so a live run is never cut short
    (``SandboxError`` when one holds it past ``lock_timeout``).  mxc's ``lxc-exec --delete``.
    Returns whether there was anything to remove."""
    log = log or (lambda message: None)
    from lxcbind.net import leases, network

    lock = cleanup.ContainerLock(name, lock_timeout)
    lock.acquire()   # SandboxError when a live run keeps it
    try:
        lxcpath = lxcpath or default_lxcpath()
        with Container(name, lxcpath) as c:
            existed = c.defined
            if existed:
                log(f"destroying container {name!r}")
                rootfs.remove_container(c)
        if not os.path.isdir(os.path.join(lxcpath, name)):
            idmap.release(name, lxcpath)   # its user-namespace id range, if it had one
        leftover = name in leases.leases() or network.has_table(name)
        if leftover:
            log(f"removing the network state left for {name!r}")
            network.teardown_orphan(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(STATE_ROOT, "owners", f"{name}.json"))
        return existed or leftover
    finally:
        lock.release()


def gc(*, log: Log | None = None, warn: Log | None = None) -> list[str]:
    """Destroy what runners killed with SIGKILL left behind (containers, leases, tables),
    delete the tables ``preservePolicy`` kept, and prune cached root filesystem bases that are
    stale and unused; returns the names of the containers destroyed.  A leftover it cannot
    remove is one ``warn`` line (default: a ``logging`` warning) and is skipped."""
    from lxcbind.net import network

    log = log or (lambda message: None)
    removed = cleanup.collect_garbage(_remove_named, release=_release_orphan, log=log,
                                      warn=warn or _warning)
    _reap_stale_leases(log)
    for name in idmap.reap():
        log(f"gc: released the id range of {name!r}")
    for name in cleanup.remove_stale_temporaries():
        log(f"gc: removed {name!r}, a record a killed runner was writing")
    if (locks := cleanup.remove_stale_locks()):
        log(f"gc: removed {locks} unused lock files")
    network.prune_tables(log)
    for name in kept.prune():
        log(f"gc: dropped the kept-container record of {name!r} (the container is gone)")
    for base in rootfs.prune_bases():
        log(f"gc: removed stale base {base}")
    for image in disk.sweep():
        log(f"gc: removed disk image {image}, left by a killed runner")
    from lxcbind.proc import warm

    for path in warm.sweep():
        log(f"gc: removed {path}, left by a killed warm server")
    for image in disk.prune():
        log(f"gc: removed cached disk image {image}, of no use to this version")
    from lxcbind.image import snapshot
    from lxcbind.image import store as images

    for sid in snapshot.prune(default_lxcpath()):
        log(f"gc: removed snapshot {sid}, a fork's that no container uses any more")
    for path in images.prune(unused_for=float("inf")):   # images stay: only what is unused
        log(f"gc: removed {path}")                       # below them (copies, killed imports)
    return removed


class Session(_session.Session):
    """``lxcbind.proc.session.Session`` (many commands in one warm container), plus
    ``from_policy``: a session in a fresh sandbox of its own, and ``disk_limited`` in its
    results."""

    _disk: disk.Layer | None = None   # the sandbox's writable layer (the sandbox closes it)
    _image: str | None = None         # the id of the image the sandbox runs on

    def with_limit_events(self, result: CompletedRun, before: cgroups.Events) -> CompletedRun:
        result = super().with_limit_events(result, before)
        if self._disk is not None and self._disk.full():
            result = replace(result, disk_limited=True)
        return result if self._image is None else replace(result, image=self._image)

    @classmethod
    def from_policy(cls, policy: PolicyLike, *, start_timeout: float = 10.0,
                    image: object = None) -> Session:
        """A Session in a fresh container set up for ``policy`` (a ``Policy``, dict, JSON text
        or path), whose root filesystem, filesystem policy, isolation, limits and network rules
        apply to every command; the policy's ``process.env`` (plus, in proxy mode, the proxy
        variables) is each command's base environment, ``process.cwd`` and ``process.timeout``
        are the defaults of every call that names none, and ``lxc.uid``/``lxc.gid`` the
        commands' user.  Closing the session tears the container down like a one-shot run
        (``destroyOnExit``).  ``image``: the root filesystem (see ``Sandbox``)."""
        box = Sandbox(policy, start_timeout=start_timeout, image=image)
        try:
            box.open()
            session = box._init_session
            if session is not None:   # its init is a spawner already: no attach
                box._init_session = None
            else:
                d = box.command_defaults()
                session = cls(box.container, env=d.env or None, cwd=d.cwd, timeout=d.timeout,
                              uid=d.uid, gid=d.gid, start_timeout=start_timeout)
                session._disk = box._disk
                session._image = box.image.id if box.image else None
        except BaseException:
            box.close(failed=True)
            raise
        session._owner = box
        return session
