"""A power-cut file system for tests (Jepsen's LazyFS idea), and the API that drives it.

`python -m mirrord_testing.nemesis.lazyfs BACKING MOUNT --control SOCKET` mounts a FUSE
passthrough of BACKING at MOUNT. Every write and truncate is kept in this
process's memory (`unsynced.Unsynced`, per file) and reaches BACKING only when
the file is fsynced or fdatasynced; reads see the memory over BACKING. A "power
cut" drops the memory: BACKING then holds exactly what was synced, which is what
a disk holds after the power goes.

Metadata (create, mkdir, rename, unlink, link, chmod, utimens) is applied to
BACKING at once, so it is durable without a directory fsync: a documented
simplification. A cut therefore never loses a file, only its unsynced
content (a file created and never synced comes back empty). Directory fsyncs
are accepted and do nothing. The disk itself is BACKING on a real file system
that keeps its power: a sync writes there without a real fsync.

SQLite works on the mount in WAL mode: the `-shm` file is mmap'd (the mount is
not direct_io, so shared writable maps go through the page cache and reach us
as writes); its content needs no durability, and after a cut SQLite rebuilds
it from the WAL.

The control channel is a Unix socket; one command a connection, one JSON line
back: `report` (what a cut would drop now, counts of writes and syncs),
`cut` (drop every unsynced write, then refuse every operation with EIO until
the process exits: the machine is off), and `full` / `space` (the disk is full:
creating a file or growing one fails with ENOSPC and statfs shows nothing
free, while overwrites in place and SQLite's shared-memory `-shm` go on, as on
a real full disk; `space` frees it again). `LazyFS` below mounts, reports, cuts
and remounts (a new process and a new mount, so no page the kernel cached
survives a cut either).

This module imports mfusepy only in the child process (`serve`): the API works,
and says why not, where FUSE is missing.
"""

from __future__ import annotations

import argparse
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mirrord_testing.nemesis.unsynced import Unsynced

MOUNT_DEADLINE = 10.0
FUSERMOUNT = "fusermount3"


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why the file system cannot run here (None if it can): what is missing, or a trial mount's failure."""
    reason = _missing()
    if reason:
        return reason
    with tempfile.TemporaryDirectory(prefix="lazyfs-probe-") as tmp:
        fs = LazyFS(Path(tmp) / "disk", Path(tmp) / "mnt")
        try:
            fs.mount()
            probe = fs.mount_point / "probe"
            probe.write_bytes(b"ok")
            if probe.read_bytes() != b"ok":
                return "a trial mount did not read back what was written"
        except (RuntimeError, OSError) as exc:
            return f"a trial mount failed: {str(exc)[:300]}"
        finally:
            fs.unmount()
    return None


def _missing() -> str | None:
    """What the file system needs and this machine lacks, if anything."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which(FUSERMOUNT) is None:
        return f"no {FUSERMOUNT} (Debian package fuse3)"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    try:
        import mfusepy  # noqa: F401  (loads libfuse3 as well)
    except (ImportError, OSError, EnvironmentError) as exc:
        return f"the mfusepy binding or libfuse3 is missing ({exc}); pip install mfusepy"
    return None


# ---------------------------------------------------------------- the file system (child process)


class _Files:
    """Per inode of BACKING: its unsynced state and a descriptor to read and write the disk."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.states: dict[int, tuple[Unsynced, int]] = {}
        self.syncs = 0
        self.dead = False
        self.full = False  # the disk is full: nothing may grow

    def state(self, fd: int) -> tuple[Unsynced, int] | None:
        return self.states.get(os.fstat(fd).st_ino)

    def state_for_change(self, fd: int) -> tuple[Unsynced, int]:
        """The inode's state, created on its first unsynced change (with a descriptor of its own)."""
        st = os.fstat(fd)
        found = self.states.get(st.st_ino)
        if found is None:
            found = (Unsynced(st.st_size), os.dup(fd))
            self.states[st.st_ino] = found
        return found

    def forget(self, ino: int) -> None:
        """The inode is gone (last link removed and closed): its number may be reused."""
        found = self.states.pop(ino, None)
        if found is not None:
            os.close(found[1])

    def report(self) -> dict:
        pending = [u for u, _ in self.states.values() if not u.is_clean()]
        return {"files_unsynced": len(pending), "bytes_unsynced": sum(u.pending_bytes() for u in pending),
                "writes_unsynced": sum(u.writes for u in pending), "syncs": self.syncs, "cut": self.dead,
                "full": self.full}

    def check_growth(self, path: str | None, new_size: int, size: int) -> None:
        """A full disk refuses to grow a file (SQLite's shared memory aside: it is memory, not disk)."""
        if self.full and new_size > size and not (path or "").endswith("-shm"):
            raise OSError(errno.ENOSPC, "No space left on device (lazyfs: full)")

    def cut(self) -> dict:
        """Drop every unsynced change; from now on every operation fails (the power is off)."""
        dropped = self.report()
        self.dead = True
        for ino in list(self.states):
            self.forget(ino)
        return dropped


def _disk_reader(fd: int):
    return lambda offset, size: os.pread(fd, size, offset)


def make_operations(backing: str, files: _Files):
    """The mfusepy Operations of a lazy passthrough of `backing`."""
    import mfusepy

    def real(path: str | None) -> str:
        if path is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return os.path.join(backing, path.lstrip("/"))

    class LazyOperations(mfusepy.Operations):
        use_ns = True
        flag_nullpath_ok = True

        def __getattribute__(self, name):
            method = super().__getattribute__(name)
            if callable(method) and not name.startswith("_") and name not in ("init", "destroy", "init_with_config"):
                if files.dead:
                    raise mfusepy.FuseOSError(errno.EIO)
            return method

        # ---- metadata: applied to the disk at once (see the module docstring)

        def getattr(self, path, fh=None):
            with files.lock:
                st = os.fstat(fh) if fh is not None else os.lstat(real(path))
                attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
                attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
                found = files.states.get(st.st_ino) if stat.S_ISREG(st.st_mode) else None
                if found is not None:
                    attrs["st_size"] = found[0].size
                return attrs

        def access(self, path, amode):
            if not os.access(real(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(real(path))]

        def mkdir(self, path, mode):
            os.mkdir(real(path), mode)
            return 0

        def rmdir(self, path):
            os.rmdir(real(path))
            return 0

        def chmod(self, path, mode):
            os.chmod(real(path), mode)
            return 0

        def chown(self, path, uid, gid):
            os.chown(real(path), uid, gid)
            return 0

        def utimens(self, path, times=None):
            os.utime(real(path), ns=times) if times else os.utime(real(path))
            return 0

        def symlink(self, target, source):
            os.symlink(source, real(target))
            return 0

        def readlink(self, path):
            return os.readlink(real(path))

        def link(self, target, source):
            os.link(real(source), real(target))
            return 0

        def statfs(self, path):
            sv = os.statvfs(real(path))
            found = {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                 "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}
            if files.full:
                found.update(f_bavail=0, f_bfree=0)
            return found

        def unlink(self, path):
            with files.lock:
                gone = _last_link(real(path))
                os.unlink(real(path))
                if gone is not None:
                    files.forget(gone)
            return 0

        def rename(self, old, new):
            with files.lock:
                gone = _last_link(real(new))
                os.rename(real(old), real(new))
                if gone is not None and gone != os.lstat(real(new)).st_ino:
                    files.forget(gone)
            return 0

        # ---- file content: kept in memory until fsync

        def create(self, path, mode, flags=os.O_RDWR):
            if files.full and not path.endswith("-shm"):
                raise mfusepy.FuseOSError(errno.ENOSPC)
            fd = os.open(real(path), os.O_CREAT | os.O_RDWR | (flags & os.O_EXCL), mode)
            if flags & os.O_TRUNC:
                self.truncate(None, 0, fd)
            return fd

        def open(self, path, flags):
            fd = os.open(real(path), os.O_RDWR if os.access(real(path), os.W_OK) else os.O_RDONLY)
            if flags & os.O_TRUNC:
                self.truncate(None, 0, fd)
            return fd

        def read(self, path, size, offset, fh):
            with files.lock:
                found = files.state(fh)
                if found is None:
                    return os.pread(fh, size, offset)
                return found[0].read(offset, size, _disk_reader(found[1]))

        def write(self, path, data, offset, fh):
            with files.lock:
                unsynced, disk = files.state_for_change(fh)
                try:
                    files.check_growth(path, offset + len(data), unsynced.size)
                except OSError as exc:
                    raise mfusepy.FuseOSError(exc.errno) from None
                return unsynced.write(offset, data, _disk_reader(disk))

        def truncate(self, path, length, fh=None):
            with files.lock:
                fd = fh if fh is not None else os.open(real(path), os.O_RDWR)
                try:
                    unsynced, disk = files.state_for_change(fd)
                    try:
                        files.check_growth(path, length, unsynced.size)
                    except OSError as exc:
                        raise mfusepy.FuseOSError(exc.errno) from None
                    unsynced.truncate(length, _disk_reader(disk))
                finally:
                    if fh is None:
                        os.close(fd)
            return 0

        def fsync(self, path, datasync, fh):
            with files.lock:
                files.syncs += 1
                found = files.state(fh)
                if found is not None:
                    unsynced, disk = found
                    unsynced.sync(lambda offset, data: os.pwrite(disk, data, offset),
                                  lambda size: os.ftruncate(disk, size))
            return 0

        def fsyncdir(self, path, datasync, fh):
            return 0  # metadata is durable at once

        def flush(self, path, fh):
            return 0  # close() is no sync

        def release(self, path, fh):
            with files.lock:
                st = os.fstat(fh)
                os.close(fh)
                if st.st_nlink == 0:
                    files.forget(st.st_ino)
            return 0

    return LazyOperations()


def _last_link(path: str) -> int | None:
    """The inode of path if removing path removes the file's last link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else None


def _serve_control(sock_path: str, files: _Files) -> None:
    """Answer `report` and `cut` on a Unix socket, one command a connection."""
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(8)
    while True:
        conn, _ = server.accept()
        with conn:
            command = conn.makefile("r").readline().strip()
            with files.lock:
                if command == "report":
                    answer = files.report()
                elif command == "cut":
                    answer = files.cut()
                elif command in ("full", "space"):
                    files.full = command == "full"
                    answer = files.report()
                else:
                    answer = {"error": f"unknown command {command!r}; known: report, cut, full, space"}
            conn.sendall((json.dumps(answer) + "\n").encode())


def serve(backing: str, mount: str, control: str) -> None:
    """Mount and serve until unmounted (foreground, several threads)."""
    import mfusepy

    files = _Files()
    threading.Thread(target=_serve_control, args=(control, files), daemon=True, name="control").start()
    mfusepy.FUSE(make_operations(os.path.abspath(backing), files), mount, foreground=True,
                 fsname="lazyfs", hard_remove=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirrord_testing.nemesis.lazyfs", description=__doc__.split("\n")[0])
    parser.add_argument("backing", help="the directory that plays the disk")
    parser.add_argument("mount", help="where programs see it")
    parser.add_argument("--control", required=True, help="Unix socket for the report and cut commands")
    args = parser.parse_args(argv)
    reason = _missing()
    if reason:
        print(f"lazyfs: cannot run: {reason}", file=sys.stderr)
        return 2
    serve(args.backing, args.mount, args.control)
    return 0


# ---------------------------------------------------------------- the API (test process)


class LazyFS:
    """A lazyfs process over `backing`, mounted at `mount`: mount, report, power_cut, unmount."""

    def __init__(self, backing: Path, mount: Path, log_path: Path | None = None) -> None:
        self.backing, self.mount_point = Path(backing), Path(mount)
        self.control = self.backing.parent / f".{self.backing.name}.lazyfs.sock"
        if len(str(self.control)) > 100:  # a Unix socket's path must fit in 108 bytes
            digest = hashlib.sha1(str(self.backing.resolve()).encode()).hexdigest()[:16]
            self.control = Path(tempfile.gettempdir()) / f"lazyfs-{digest}.sock"
        self.log_path = Path(log_path) if log_path else self.backing.parent / f"{self.backing.name}.lazyfs.log"
        self.proc: subprocess.Popen | None = None
        self.cuts = 0

    def is_mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and os.path.ismount(self.mount_point)

    def mount(self) -> None:
        """Start the process and return once the mount and its control socket answer."""
        if self.is_mounted():
            raise RuntimeError(f"{self.mount_point} is already mounted by lazyfs pid {self.proc.pid}")
        reason = _missing()
        if reason:
            raise RuntimeError(f"lazyfs cannot run here: {reason}")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        _unmount(self.mount_point)  # a mount left by a process that died
        if self.control.exists():
            self.control.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mirrord_testing.nemesis.lazyfs", str(self.backing), str(self.mount_point),
                 "--control", str(self.control)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + MOUNT_DEADLINE
        while not (os.path.ismount(self.mount_point) and self.control.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop_process()
                raise RuntimeError(f"lazyfs did not mount {self.mount_point}; log {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-2000:])
            time.sleep(0.02)

    def report(self) -> dict:
        """What a cut would drop now: files_unsynced, bytes_unsynced, writes_unsynced; and syncs so far."""
        return self._command("report")

    def power_cut(self) -> dict:
        """Drop every unsynced write, unmount, mount again; what was dropped.

        Whoever still has files open on the mount sees EIO (the machine is off);
        stop them first, as a power cut would.
        """
        dropped = self._command("cut")
        self.unmount()
        self.cuts += 1
        self.mount()
        return dropped

    def fill(self) -> dict:
        """The disk is full from now on (ENOSPC for anything that grows), until make_space()."""
        return self._command("full")

    def make_space(self) -> dict:
        """The disk has room again."""
        return self._command("space")

    def unmount(self) -> None:
        """Unmount (lazily if something still holds it) and end the process."""
        if self.proc is None:
            return
        _unmount(self.mount_point)
        self._stop_process()
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _command(self, command: str) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.control))
            sock.sendall(command.encode() + b"\n")
            answer = json.loads(sock.makefile("r").readline())
        if "error" in answer:
            raise RuntimeError(f"lazyfs {command}: {answer['error']}")
        return answer


def _unmount(mount: Path) -> None:
    """fusermount3 -u, and -z (lazy) if the mount is busy; nothing if not mounted."""
    if not os.path.ismount(mount):
        subprocess.run([FUSERMOUNT, "-u", "-q", str(mount)], capture_output=True)  # a dead mount, if any
        return
    proc = subprocess.run([FUSERMOUNT, "-u", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run([FUSERMOUNT, "-u", "-z", str(mount)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
