"""The first process of every pod: build the pod's filesystem view, drop privileges, exec.

Started by the kubelet as `ip netns exec <pod-netns> python podinit.py '<json>'`, so it is
already inside the pod's network namespace and a private mount namespace (iproute2 makes
one). It then forks the container's PID 1 into a new PID namespace with its own /proc: as
in a container, the pod sees only its own processes (Ray's `address="auto"` scans the
process table for GCS addresses and would otherwise find other pods' — or other test
runs' — clusters), and when PID 1 dies the kernel kills everything else in the pod. This
parent stays outside, ignores SIGTERM (a container's PID 1 gets SIGTERM only if it handles
it), and exits with the container's code (128+N for death by signal N).

In the child, and only there, the pod's volumes appear at their real `mountPath`s through bind
mounts, so the product sees the paths it asked for and no path is rewritten:

* a per-pod directory over `/tmp` (a container has its own /tmp: Ray's default
  `/tmp/ray` session dir and its socket names never collide between pods);
* emptyDir → a per-pod host dir (medium Memory → a tmpfs with the sizeLimit),
  PVC → one shared host dir per claim (ReadWriteMany), readOnly honoured with a
  read-only remount;
* `terminationMessagePath` → a per-pod host file the kubelet reads after exit;
* `/etc/hosts` → a per-pod file (pod hostname + Service names, standing in for cluster DNS).

Mount points that do not exist on the host (e.g. `/mnt/kiln/pvc/<claim>`) are created on the
host as empty directories (an empty file for a missing terminationMessagePath): bind mounts
need a target, and creating it is the only trace a pod leaves outside its directories.
The "image" is this host's Python and virtualenv. When the pod runs as a non-root user and
the interpreter sits below a directory only root may enter (pyenv under /root here), a tmpfs
(0755) replaces that directory in the pod's view and the interpreter's tree is bind-mounted
back into it: the image is readable by its user, as a real trainer image is.
Then it sets the pod's uid/gid/groups (runAsUser, runAsGroup, fsGroup), sets no_new_privs
when `allowPrivilegeEscalation: false`, and execs the container's argv with its env.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
CLONE_NEWPID, CLONE_NEWUTS = 0x20000000, 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    if _libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def _ensure_target(target: str, is_file: bool) -> None:
    if is_file:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    else:
        os.makedirs(target, exist_ok=True)


def setup_mounts(spec: dict) -> None:
    # Stop anything below from propagating to the host, whatever the host's default is.
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    # Sources may live under the host's /tmp, which the pod's /tmp hides: hold them by fd first.
    fds = {m["source"]: os.open(m["source"], os.O_PATH) for m in spec["mounts"] if m.get("source")}
    # The "image" (interpreter, virtualenv, checkout) may live under /tmp too, e.g. a CI clone:
    # bind it back at its own path inside the pod's /tmp, as an image's files would be there.
    image_under_tmp = {p: os.open(p, os.O_PATH) for p in spec.get("imagePaths", []) if p.startswith("/tmp/")}
    _mount(spec["tmp"], "/tmp", None, MS_BIND)
    for path, fd in image_under_tmp.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for mount in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        target = mount["target"]
        _ensure_target(target, mount.get("file", False))
        if mount.get("tmpfs") is not None:
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, mount["tmpfs"])
            os.chmod(target, 0o1777)
            continue
        _mount(f"/proc/self/fd/{fds[mount['source']]}", target, None, MS_BIND | MS_REC)
        if mount.get("readOnly"):
            _mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for fd in fds.values():
        os.close(fd)


def closed_ancestor(path: str) -> str | None:
    """The top-most ancestor of `path` that others may not enter (None if all may)."""
    current = "/"
    for part in [p for p in path.split("/") if p][:-1]:
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def expose_image(paths: list[str]) -> None:
    for path in paths:
        closed = closed_ancestor(path)
        if closed is None:
            continue
        fd = os.open(path, os.O_PATH)
        _mount("tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def drop_privileges(spec: dict) -> None:
    user = spec.get("user")
    if user is None:
        return
    os.setgroups(spec.get("groups", []))
    os.setgid(spec.get("group", user))
    os.setuid(user)
    if spec.get("noNewPrivs") and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def container_main(spec: dict) -> None:
    """PID 1 of the pod: mounts, identity, then the container's command."""
    try:
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        setup_mounts(spec)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if spec.get("user"):
            expose_image(spec.get("imagePaths", []))
        drop_privileges(spec)
        if spec.get("workingDir"):
            os.chdir(spec["workingDir"])
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        # 128 is what container runtimes report for a container that could not start.
        print(f"kiln test kubelet: cannot start container: {exc}", file=sys.stderr, flush=True)
        os._exit(128)


def main() -> None:
    spec = json.loads(sys.argv[1])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Own hostname too (the pod's name, which its /etc/hosts maps to its IP): gloo and Ray
    # resolve the hostname to find the address to use.
    hostname = spec.get("hostname", "").encode()
    if _libc.unshare(CLONE_NEWPID | CLONE_NEWUTS) != 0 or (hostname and _libc.sethostname(hostname, len(hostname)) != 0):
        print(f"kiln test kubelet: unshare/sethostname: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(128)
    child = os.fork()
    if child == 0:
        container_main(spec)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
