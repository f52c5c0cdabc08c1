"""FileBackedStreamStore: the default store, one directory of segments per stream.

Layout of a data directory (default ``.onepipe/streams/``)::

    <data dir>/
      flows%2Forders/              one folder per stream (layout.stream_dir_name)
        meta.msgpack               path, content type, TTL/expiry, fork, soft delete
        00000000000000000000.seg   the stream's SegmentedLog
      .tmp-<id>/                   a stream being created (removed at open)
      .trash-<id>/                 a stream being removed (removed at open)
      .lock                        flock'ed by the open store (its pid): one store per directory

A stream is never half-created: its log (initial data included) and meta are
written and synced in a temporary folder, which is then renamed into place and
the data directory synced. Producer state, Stream-Seq and closure live in the
log's records and are rebuilt from them on open, so they can never disagree
with the data.

Opening a data directory recovers every stream (torn tails cut, indexes
rebuilt) and reports what it found in :attr:`FileBackedStreamStore.recovery`;
a damaged stream is reported and refused (its operations raise the
:class:`~unbroken_engine.errors.CorruptSegment` found), the others are served.

Blocking work at creation (fsyncs) runs in a worker thread; appends write into
the mapped segment on the event loop and, under ``Durability.ALWAYS``, wait for
their flush in a worker thread (group commit); under ``INTERVAL`` and
``NEVER`` they are acknowledged without a flush (see
:mod:`unbroken_engine.stores.base`). Creating a stream, a soft delete and closing
the store sync their files under every policy.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path

import anyio
import msgpack

from .. import _testhooks, errors
from ..log import layout
from ..log.segmented import LogConfig, SegmentedLog
from ..protocol.rules import Requested
from .base import BaseStreamStore, Stream
from .interface import StoreRecovery

log = logging.getLogger("unbroken")

DEFAULT_DATA_DIR = ".onepipe/streams"
#: the file a store holds an exclusive lock on while it has the directory open
LOCK_NAME = ".lock"
META_VERSION = 1
SNAPSHOT_NAME = "state.snapshot"


class FileBackedStreamStore(BaseStreamStore):
    """Streams in segment files under ``data_dir``; recovers them on construction.

    :param data_dir: created if missing
    :param config: segment size, index interval and durability of every stream
        (``Durability.ALWAYS`` by default: an append returns once on disk;
        ``INTERVAL``: at once, on disk within ``flush_interval``; ``NEVER``:
        at once, on disk when the OS writes it back)
    :param clock: wall-clock seconds, injectable for tests
    """

    kind = "file"

    def __init__(self, data_dir=DEFAULT_DATA_DIR, config: LogConfig | None = None, *,
                 clock=time.time):
        super().__init__(clock=clock)
        self.data_dir = Path(data_dir)
        self.config = config or LogConfig()
        self._damaged: dict[str, errors.UnbrokenError] = {}  # by stream path
        self._damaged_dirs: dict[str, errors.UnbrokenError] = {}  # by folder name
        self._lock_fd = lock_data_dir(self.data_dir)
        try:
            self.recovery = self._recover()
        except BaseException:
            self._unlock()
            raise
        log.info("unbroken: %s: %s", self.data_dir, self.recovery.summary())

    # ---- recovery -------------------------------------------------------------------

    def _recover(self) -> StoreRecovery:
        t0 = time.perf_counter()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.data_dir.iterdir():
            if entry.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
        cut = rebuilt = 0
        metas: dict[str, dict] = {}
        for entry in sorted(self.data_dir.iterdir()):
            if not entry.is_dir() or not layout.is_stream_dir_name(entry.name):
                continue
            slog = None
            try:
                meta = _read_meta(entry)
                slog = SegmentedLog.open(entry, self.config)
                s = self._stream_from(meta, slog, entry)  # replays records: CRCs checked
            except (errors.UnbrokenError, OSError, ValueError, KeyError, TypeError) as exc:
                # one damaged stream is refused; the others are served
                damage = _as_unbroken(exc, entry)
                path = _path_hint(entry)
                if path is None:  # no readable meta: known by its folder name
                    self._damaged_dirs[entry.name] = damage
                else:
                    self._damaged[path] = damage
                if slog is not None:
                    slog.close()
                continue
            cut += slog.recovery.bytes_cut
            rebuilt += slog.recovery.indexes_rebuilt
            self._streams[s.path] = s
            metas[s.path] = meta
        self._link_forks(metas)
        return StoreRecovery(len(self._streams), cut, rebuilt,
                             {**{f"[folder {n}]": str(e) for n, e in self._damaged_dirs.items()},
                              **{p: str(e) for p, e in self._damaged.items()}},
                             time.perf_counter() - t0)

    def _stream_from(self, meta: dict, slog: SegmentedLog, folder: Path) -> Stream:
        req = meta["requested"]
        fork = meta.get("fork")
        expires = _parse_time(meta["expires_at"])
        requested = Requested(req["content_type"], req["ttl"], _parse_time(req["expires_at"]),
                               fork["from"] if fork else None, fork["offset"] if fork else None,
                               fork["sub_offset"] if fork else 0)
        s = Stream(meta["path"], meta["content_type"], slog, ttl=meta["ttl"], expires_at=expires,
                   created_at=meta["created_at"], requested=requested,
                   fork_offset=fork["offset"] if fork else None, handle=folder)
        s.soft_deleted = bool(meta.get("soft_deleted"))
        # sliding TTL: the last access saved at a clean shutdown, else the last
        # write the segment files prove (reads since the last shutdown are lost)
        s.last_access = max(s.created_at, meta.get("last_access") or 0.0,
                            _newest_mtime(folder))
        for rec in slog.records(_snapshot_offset(s, slog, folder)):
            s.apply(rec.type, rec.attrs, rec.next_offset, start=rec.offset,
                    msg_count=rec.msg_count)
        return s

    def _link_forks(self, metas: dict[str, dict]) -> None:
        for path, meta in metas.items():
            fork = meta.get("fork")
            if not fork:
                continue
            s, source = self._streams[path], self._streams.get(fork["from"])
            if source is None:
                self._streams.pop(path)
                self._damaged[path] = errors.CorruptSegment(
                    s.handle, 0, f"fork source {fork['from']!r} is missing")
                s.log.close()
                continue
            s.source = source
            source.forks.add(s)
        for s in list(self._streams.values()):
            if s.soft_deleted and not s.forks and not s.removed:
                self._remove(s)

    # ---- hooks ------------------------------------------------------------------------

    def _lookup(self, path: str, *, touch: bool = False, soft_ok: bool = False) -> Stream:
        damage = self._damaged.get(path)
        if damage is None and self._damaged_dirs:
            # a folder whose meta is unreadable is known by its name only
            damage = self._damaged_dirs.get(layout.stream_dir_name(path))
        if damage is not None:
            raise damage
        return super()._lookup(path, touch=touch, soft_ok=soft_ok)

    async def _build(self, path, content_type, base_offset, records, meta):
        folder = self.data_dir / layout.stream_dir_name(path)
        await anyio.to_thread.run_sync(self._build_files, folder, base_offset, records, meta)
        return SegmentedLog.open(folder, self.config), folder

    def _build_files(self, folder: Path, base_offset: int, records, meta: dict) -> None:
        tmp = self.data_dir / f".tmp-{uuid.uuid4().hex}"
        try:
            with SegmentedLog.open(tmp, self.config, base_offset=base_offset) as slog:
                for payload, attrs, kind, count in records:
                    slog.write(payload, attrs, kind, count)
                slog.sync()
            _testhooks.maybe_kill("create.log")
            _write_meta(tmp, meta)
            _testhooks.maybe_kill("create.meta")
            if folder.exists():  # left by a crash before its removal finished
                self._trash(folder)
            os.rename(tmp, folder)
            _testhooks.maybe_kill("create.renamed")
            layout.fsync_dir(self.data_dir)
            _testhooks.maybe_kill("create.synced")
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_plain_os_error(exc):  # e.g. the meta file met a full disk
                raise _storage_error(exc, "create stream") from exc
            raise

    def _save_meta(self, s: Stream) -> None:
        meta = _read_meta(s.handle)
        meta["soft_deleted"] = s.soft_deleted
        meta["last_access"] = s.last_access
        try:
            _write_meta(s.handle, meta)
        except OSError as exc:
            if _is_plain_os_error(exc):
                raise _storage_error(exc, "save stream meta") from exc
            raise

    async def aclose(self) -> None:
        if not self._closed:
            for s in list(self._streams.values()):
                if s.ttl is not None and not s.removed:
                    try:  # reads renewed it: keep that across a restart
                        self._save_meta(s)
                    except errors.UnbrokenError as exc:  # best effort: a full disk
                        # must not stop the flush and close of every stream below
                        log.warning("unbroken: could not save the TTL renewal of %s: %s",
                                    s.path, exc)
        try:
            await super().aclose()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _destroy(self, s: Stream) -> None:
        s.log.close()
        self._trash(s.handle)

    def _snapshot(self, s: Stream) -> None:
        """Write ``state.snapshot`` (no fsync: a torn or stale snapshot is only
        ignored, and the state is replayed from the log instead)."""
        if s.removed or s.log.end_offset == s.fork_offset:
            return
        data = msgpack.packb(s.state(s.log.end_offset))
        tmp = s.handle / (SNAPSHOT_NAME + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, s.handle / SNAPSHOT_NAME)
            s.since_snapshot = 0
        except OSError as exc:
            log.warning("unbroken: could not write a state snapshot for %s: %s", s.path, exc)

    def _trash(self, folder: Path) -> None:
        trash = self.data_dir / f".trash-{uuid.uuid4().hex}"
        os.rename(folder, trash)
        layout.fsync_dir(self.data_dir)
        shutil.rmtree(trash, ignore_errors=True)


# ---- meta file ------------------------------------------------------------------------

def _write_meta(folder: Path, meta: dict) -> None:
    """Write ``meta.msgpack`` atomically and durably (temp file, fsync, rename)."""
    data = msgpack.packb({"version": META_VERSION, **meta})
    tmp = folder / (layout.META_NAME + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / layout.META_NAME)
    layout.fsync_dir(folder)


def _read_meta(folder: Path) -> dict:
    meta_file = folder / layout.META_NAME
    with open(meta_file, "rb") as f:
        raw = f.read()
    try:
        meta = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"{meta_file}: meta file is not valid msgpack "
                         f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})") from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        raise ValueError(f"unsupported or damaged meta file in {folder}")
    if layout.stream_dir_name(meta["path"]) != folder.name:
        raise ValueError(f"meta file in {folder} names another stream ({meta['path']!r})")
    return meta


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _snapshot_offset(s: Stream, slog: SegmentedLog, folder: Path) -> int | None:
    """Restore ``s`` from its state snapshot if that is trustworthy (a record
    boundary within the recovered log); :return: where to replay from.

    A snapshot is used by one open only and then removed: it describes the
    log as it was, so after later crashes an old snapshot could land on a
    boundary of different records."""
    path = folder / SNAPSHOT_NAME
    try:
        state = msgpack.unpackb(path.read_bytes())
        path.unlink()
        offset = state["offset"]
        if not isinstance(offset, int) or offset > slog.end_offset or offset < slog.start_offset:
            return None
        slog.check_offset(offset)
        s.restore(state)
        return offset
    except (OSError, ValueError, KeyError, TypeError, errors.UnbrokenError,
            msgpack.UnpackException):
        return None


def lock_data_dir(data_dir: Path) -> int | None:
    """Create ``data_dir`` if needed and take an exclusive lock on its
    ``.lock`` file (which then holds this process's pid), so that no other
    store opens the directory meanwhile. :return: the file descriptor
    holding the lock (None where ``fcntl`` does not exist).

    :raises DataDirInUse: another store holds it
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise errors.DataDirInUse(str(data_dir), holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _newest_mtime(folder: Path) -> float:
    return max((e.stat().st_mtime for e in folder.iterdir() if e.name.endswith(".seg")),
               default=0.0)


def _path_hint(folder: Path) -> str | None:
    """The stream path of a damaged folder, from its meta if readable (and
    matching the folder), else None."""
    try:
        with open(folder / layout.META_NAME, "rb") as f:
            path = msgpack.unpackb(f.read())["path"]
    except Exception:  # noqa: BLE001 - damaged: no path to go by
        return None
    return path if isinstance(path, str) and layout.stream_dir_name(path) == folder.name \
        else None


def _is_plain_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, errors.UnbrokenError)


def _storage_error(exc: OSError, what: str) -> errors.UnbrokenError:
    """A failed system call outside the C core (meta files, folders), as the
    C core would report it: ``StorageFull`` (507) for ENOSPC/EDQUOT,
    ``StorageIOError`` (503) for anything else -- never a bare OSError (500)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cls = errors.StorageFull if full else errors.StorageIOError
    where = f" [{exc.filename}]" if exc.filename else ""
    return cls(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}{where}")


def _as_unbroken(exc: Exception, folder: Path) -> errors.UnbrokenError:
    if isinstance(exc, errors.UnbrokenError):
        return exc
    return errors.CorruptSegment(folder, 0, f"unreadable stream folder: "
                                         f"{exc or type(exc).__name__}")
