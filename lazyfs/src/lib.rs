//! A "lazy" filesystem for the fault suite: file data written but not fsynced can be thrown
//! away, as a power cut throws away the page cache. LazyFS's idea (Ramos et al., "When
//! Amnesia Strikes", VLDB 2024), written here in Rust on FUSE.
//!
//! The mount passes everything through to a backing directory except file contents: writes
//! and truncations wait in memory, per file and in order, until `fsync`/`fdatasync` of that
//! file applies them to the backing file and syncs it. Reads see the backing file with the
//! waiting changes laid over it, so a running process sees its own writes as usual.
//! [`LazyFs::drop_unsynced`] forgets every waiting change: what a store had not fsynced is
//! gone, exactly what a crash of the machine would lose. Directory operations (create,
//! rename, link, unlink, mkdir) reach the backing directory at once, as LazyFS does by
//! default.
//!
//! Files are opened with direct I/O, so the kernel's own page cache never holds data the
//! mount has since forgotten. Mounting needs root (or `fusermount3`) and `/dev/fuse`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes are never cached by the kernel: sizes change with writes it does not see.
const TTL: Duration = Duration::ZERO;

/// A change to a file's contents not yet fsynced.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

/// What [`LazyFs::drop_unsynced`] threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub files: usize,
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    backing: PathBuf,
    /// Inode → path relative to the backing directory (the root is the empty path).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    /// Inode → how many lookups the kernel holds on it (entries it was given, less those it
    /// forgot). An inode the kernel forgot and that has no waiting writes leaves the table.
    lookups: HashMap<u64, u64>,
    next: u64,
    /// Inode → its waiting changes, oldest first.
    unsynced: HashMap<u64, Vec<Change>>,
    /// The disk is full: anything that needs new space fails with ENOSPC.
    full: bool,
    /// Hard links are refused with EPERM, as by a FUSE filesystem without `link`.
    no_links: bool,
}

impl State {
    fn real(&self, ino: u64) -> Option<PathBuf> {
        self.paths.get(&ino).map(|p| self.backing.join(p))
    }

    fn inode(&mut self, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.inodes.get(&rel) {
            return ino;
        }
        self.next += 1;
        let ino = self.next;
        self.paths.insert(ino, rel.clone());
        self.inodes.insert(rel, ino);
        ino
    }

    /// The kernel was given an entry for `ino`.
    fn looked_up(&mut self, ino: u64) {
        *self.lookups.entry(ino).or_default() += 1;
    }

    /// The kernel dropped `n` of its lookups of `ino`: once none is left, the inode goes
    /// unless writes wait on it (they must survive until synced or dropped).
    fn kernel_forgot(&mut self, ino: u64, n: u64) {
        let Some(count) = self.lookups.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            self.lookups.remove(&ino);
            self.release(ino);
        }
    }

    /// Takes an inode nobody refers to out of the table (never the root, never one with
    /// waiting writes or still looked up).
    fn release(&mut self, ino: u64) {
        if ino == 1 || self.unsynced.contains_key(&ino) || self.lookups.contains_key(&ino) {
            return;
        }
        if let Some(path) = self.paths.remove(&ino)
            && self.inodes.get(&path) == Some(&ino)
        {
            self.inodes.remove(&path);
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.paths.get(&parent).map(|p| p.join(name))
    }

    /// Where a new file or directory `name` under `parent` goes; ENOSPC when the disk is
    /// full.
    fn new_child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if self.full {
            return Err(Errno::ENOSPC);
        }
        self.child(parent, name).ok_or(Errno::ENOENT)
    }

    /// Forgets a path (and everything under it) that no longer exists.
    fn forget(&mut self, rel: &Path) {
        let gone: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(rel))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in gone {
            self.inodes.remove(&p);
            self.paths.remove(&i);
            self.unsynced.remove(&i);
            self.lookups.remove(&i);
        }
    }

    /// The size a reader sees: the backing file's, changed by what waits.
    fn size(&self, ino: u64, backing_len: u64) -> u64 {
        self.unsynced.get(&ino).map_or(backing_len, |changes| {
            changes.iter().fold(backing_len, |size, c| match c {
                Change::Write { offset, data } => size.max(offset + data.len() as u64),
                Change::Truncate(to) => *to,
            })
        })
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let real = self.real(ino).ok_or(Errno::ENOENT)?;
        let m = std::fs::symlink_metadata(&real).map_err(Errno::from)?;
        let kind = if m.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        let size = if m.is_dir() { m.len() } else { self.size(ino, m.len()) };
        let time = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime()),
            mtime: time(m.mtime()),
            ctime: time(m.ctime()),
            crtime: time(m.ctime()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Applies `ino`'s waiting changes to the backing file and syncs it.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let real = self.real(ino).ok_or(Errno::ENOENT)?;
        let changes = self.unsynced.remove(&ino).unwrap_or_default();
        let file = OpenOptions::new().write(true).open(&real).map_err(Errno::from)?;
        for c in changes {
            match c {
                Change::Write { offset, data } => file.write_all_at(&data, offset).map_err(Errno::from)?,
                Change::Truncate(to) => file.set_len(to).map_err(Errno::from)?,
            }
        }
        file.sync_all().map_err(Errno::from)
    }
}

/// The mounted filesystem; unmounted on drop.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    _session: BackgroundSession,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` (created if missing) at `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, String> {
        std::fs::create_dir_all(backing).map_err(|e| format!("{}: {e}", backing.display()))?;
        std::fs::create_dir_all(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
        let mut state = State {
            backing: backing.to_path_buf(),
            next: 1,
            ..State::default()
        };
        state.paths.insert(1, PathBuf::new());
        state.inodes.insert(PathBuf::new(), 1);
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("lodestone-lazyfs".into())];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs(state.clone()), mountpoint, &config).map_err(|e| {
            format!(
                "cannot mount the lazy filesystem at {} ({e}); it needs root and /dev/fuse",
                mountpoint.display()
            )
        })?;
        Ok(LazyFs {
            state,
            _session: session,
        })
    }

    /// Forgets every write not yet fsynced, in every file. Call it with the process that
    /// wrote them dead, as after a power cut.
    pub fn drop_unsynced(&self) -> Dropped {
        let mut s = self.state.lock().expect("lazyfs state");
        let dropped = Dropped {
            files: s.unsynced.len(),
            bytes: s
                .unsynced
                .values()
                .flatten()
                .map(|c| match c {
                    Change::Write { data, .. } => data.len() as u64,
                    Change::Truncate(_) => 0,
                })
                .sum(),
        };
        let waited: Vec<u64> = s.unsynced.drain().map(|(ino, _)| ino).collect();
        // Inodes the kernel forgot were kept only for their waiting writes.
        for ino in waited {
            s.release(ino);
        }
        dropped
    }

    /// How many inodes the filesystem keeps (the root included): those the kernel holds, and
    /// those with waiting writes.
    pub fn inodes(&self) -> usize {
        self.state.lock().expect("lazyfs state").paths.len()
    }

    /// Makes the disk full (`true`: writes, new files and directories fail with ENOSPC) or
    /// gives the space back.
    pub fn set_full(&self, full: bool) {
        self.state.lock().expect("lazyfs state").full = full;
    }

    /// Refuses hard links with EPERM (`false`), as a filesystem without them does, or
    /// makes them again.
    pub fn set_links(&self, links: bool) {
        self.state.lock().expect("lazyfs state").no_links = !links;
    }
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("lazyfs state")
    }

    /// Unlink or rmdir: `remove` on the backing path, then forget the path and its waiting
    /// writes.
    fn remove(&self, parent: INodeNo, name: &OsStr, reply: ReplyEmpty, remove: fn(&Path) -> std::io::Result<()>) {
        let mut s = self.state();
        let Some(rel) = s.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        match remove(&s.backing.join(&rel)) {
            Ok(()) => {
                s.forget(&rel);
                reply.ok()
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        let Some(rel) = s.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        if std::fs::symlink_metadata(s.backing.join(&rel)).is_err() {
            return reply.error(Errno::ENOENT);
        }
        let ino = s.inode(rel);
        match s.attr(ino) {
            Ok(a) => {
                s.looked_up(ino);
                reply.entry(&TTL, &a, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    // (fuser's batch_forget comes here once per inode.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state().kernel_forgot(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let Some(real) = s.real(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode
            && let Err(e) = std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode & 0o7777))
        {
            return reply.error(Errno::from(e));
        }
        if let Some(size) = size {
            s.unsynced.entry(ino.0).or_default().push(Change::Truncate(size));
        }
        match s.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let mut s = self.state();
        let rel = match s.new_child(parent.0, name) {
            Ok(rel) => rel,
            Err(e) => return reply.error(e),
        };
        let real = s.backing.join(&rel);
        if let Err(e) = std::fs::create_dir(&real) {
            return reply.error(Errno::from(e));
        }
        let _ = std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode & 0o7777));
        let ino = s.inode(rel);
        match s.attr(ino) {
            Ok(a) => {
                s.looked_up(ino);
                reply.entry(&TTL, &a, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let (Some(from), Some(to)) = (s.child(parent.0, name), s.child(newparent.0, newname)) else {
            return reply.error(Errno::ENOENT);
        };
        if let Err(e) = std::fs::rename(s.backing.join(&from), s.backing.join(&to)) {
            return reply.error(Errno::from(e));
        }
        // The target's old contents are replaced; the moved inodes keep their waiting writes.
        s.forget(&to);
        let moved: Vec<(PathBuf, u64)> = s
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            let rest = p.strip_prefix(&from).expect("under the renamed path");
            // (Joining an empty path would add a trailing slash, which a file does not take.)
            let new = if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
            s.inodes.remove(&p);
            s.inodes.insert(new.clone(), i);
            s.paths.insert(i, new);
        }
        reply.ok()
    }

    /// A hard link is a directory operation, made in the backing directory at once. The new
    /// name gets an inode of its own here (waiting writes are kept per name), so a file
    /// with writes waiting is not linked: ENOTSUP, on which a caller copies instead (as
    /// RocksDB's checkpoint does), reading the file as it stands.
    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        if s.no_links {
            return reply.error(Errno::EPERM);
        }
        if s.unsynced.contains_key(&ino.0) {
            return reply.error(Errno::ENOTSUP);
        }
        let Some(from) = s.real(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let rel = match s.new_child(newparent.0, newname) {
            Ok(rel) => rel,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = std::fs::hard_link(&from, s.backing.join(&rel)) {
            return reply.error(Errno::from(e));
        }
        let new = s.inode(rel);
        match s.attr(new) {
            Ok(a) => {
                s.looked_up(new);
                reply.entry(&TTL, &a, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.state().real(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let rel = match s.new_child(parent.0, name) {
            Ok(rel) => rel,
            Err(e) => return reply.error(e),
        };
        let real = s.backing.join(&rel);
        let mut options = OpenOptions::new();
        options.write(true);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        if let Err(e) = options.open(&real) {
            return reply.error(Errno::from(e));
        }
        let _ = std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode & 0o7777));
        let ino = s.inode(rel);
        if flags & libc::O_TRUNC != 0 {
            s.unsynced.entry(ino).or_default().push(Change::Truncate(0));
        }
        match s.attr(ino) {
            Ok(a) => {
                s.looked_up(ino);
                reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let Some(real) = s.real(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match File::open(&real) {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let backing_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let end = (offset + size as u64).min(s.size(ino.0, backing_len));
        if end <= offset {
            return reply.data(&[]);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let from_backing = backing_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if from_backing > 0
            && let Err(e) = file.read_exact_at(&mut buf[..from_backing], offset)
        {
            return reply.error(Errno::from(e));
        }
        // Lay the waiting changes over it, in order.
        for c in s.unsynced.get(&ino.0).into_iter().flatten() {
            match c {
                Change::Truncate(to) => {
                    let cut = to.saturating_sub(offset).min(buf.len() as u64) as usize;
                    buf[cut..].fill(0);
                }
                Change::Write { offset: at, data } => {
                    let (lo, hi) = ((*at).max(offset), (at + data.len() as u64).min(end));
                    if lo < hi {
                        buf[(lo - offset) as usize..(hi - offset) as usize]
                            .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
                    }
                }
            }
        }
        reply.data(&buf)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        if s.real(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if s.full {
            return reply.error(Errno::ENOSPC);
        }
        s.unsynced.entry(ino.0).or_default().push(Change::Write {
            offset,
            data: data.to_vec(),
        });
        reply.written(data.len() as u32)
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok()
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut s = self.state();
        let Some(rel) = s.paths.get(&ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        let list = match std::fs::read_dir(s.backing.join(&rel)) {
            Ok(l) => l,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let mut names: Vec<(std::ffi::OsString, bool)> = list
            .flatten()
            .map(|e| (e.file_name(), e.file_type().is_ok_and(|t| t.is_dir())))
            .collect();
        names.sort();
        for (name, dir) in names {
            // A listing gives the kernel no reference, so it adds nothing to the table: a
            // child not looked up yet gets a number of its own for this listing only.
            let child = match s.inodes.get(&rel.join(&name)) {
                Some(&ino) => ino,
                None => {
                    s.next += 1;
                    s.next
                }
            };
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            entries.push((child, kind, name));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: this filesystem tests crashes, not space.
        reply.statfs(1 << 28, 1 << 27, 1 << 27, 1 << 20, 1 << 19, 4096, 255, 4096)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Reserving space changes nothing a crash could lose; growing the size is a change
        // like a truncation.
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            let mut s = self.state();
            let Some(real) = s.real(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            let len = std::fs::metadata(real).map(|m| m.len()).unwrap_or(0);
            let size = s.size(ino.0, len);
            if offset + length > size && s.full {
                return reply.error(Errno::ENOSPC);
            }
            if offset + length > size {
                s.unsynced
                    .entry(ino.0)
                    .or_default()
                    .push(Change::Truncate(offset + length));
            }
        }
        reply.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
    }

    /// A lazy filesystem mounted at `<dir>/mnt` over `<dir>/backing`.
    fn mounted() -> (tempfile::TempDir, LazyFs) {
        assert!(
            root(),
            "the lazy filesystem test needs root (FUSE mount); run the suite as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        (dir, fs)
    }

    /// A synced file links (a checkpoint's table files), and both names survive a drop
    /// with its contents; a file with writes waiting does not link (ENOTSUP, so callers
    /// copy it); with links off, nothing links (EPERM).
    #[test]
    fn synced_files_link_and_files_with_waiting_writes_do_not() {
        let (dir, fs) = mounted();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(mnt.join("ckpt")).unwrap();
        let mut table = File::create(mnt.join("table")).unwrap();
        table.write_all(b"sorted").unwrap();
        table.sync_all().unwrap();
        std::fs::hard_link(mnt.join("table"), mnt.join("ckpt/table")).unwrap();
        let mut pending = File::create(mnt.join("pending")).unwrap();
        pending.write_all(b"waiting").unwrap();
        let refused = std::fs::hard_link(mnt.join("pending"), mnt.join("ckpt/pending")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENOTSUP), "{refused}");
        drop((table, pending));

        fs.drop_unsynced();
        assert_eq!(std::fs::read(mnt.join("table")).unwrap(), b"sorted");
        assert_eq!(std::fs::read(mnt.join("ckpt/table")).unwrap(), b"sorted");
        assert_eq!(std::fs::metadata(mnt.join("table")).unwrap().nlink(), 2);
        std::fs::remove_file(mnt.join("table")).unwrap();
        assert_eq!(std::fs::read(mnt.join("ckpt/table")).unwrap(), b"sorted");
        assert!(!mnt.join("ckpt/pending").exists());

        fs.set_links(false);
        let refused = std::fs::hard_link(mnt.join("ckpt/table"), mnt.join("again")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
        fs.set_links(true);
        std::fs::hard_link(mnt.join("ckpt/table"), mnt.join("again")).unwrap();
    }

    /// Unsynced writes, truncations and new files' contents vanish; synced ones stay.
    #[test]
    fn only_fsynced_data_survives_a_drop() {
        let (dir, fs) = mounted();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(mnt.join("d")).unwrap();

        let mut synced = File::create(mnt.join("d/synced")).unwrap();
        synced.write_all(b"durable").unwrap();
        synced.sync_data().unwrap();
        synced.write_all(b" and lost").unwrap();

        let mut lost = File::create(mnt.join("lost")).unwrap();
        lost.write_all(b"never synced").unwrap();
        let read = |p: &str| {
            let mut s = String::new();
            File::open(mnt.join(p)).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        // Before the drop, readers see everything.
        assert_eq!(read("d/synced"), "durable and lost");
        assert_eq!(read("lost"), "never synced");
        std::fs::rename(mnt.join("lost"), mnt.join("renamed")).unwrap();
        assert_eq!(read("renamed"), "never synced");
        drop((synced, lost));

        let dropped = fs.drop_unsynced();
        assert_eq!(dropped, Dropped { files: 2, bytes: 21 });
        assert_eq!(read("d/synced"), "durable");
        // The file exists (metadata is passed through) but its data is gone.
        assert_eq!(read("renamed"), "");
        assert_eq!(std::fs::metadata(mnt.join("renamed")).unwrap().len(), 0);

        // A full disk refuses new data and new files, until space comes back.
        fs.set_full(true);
        let mut f = OpenOptions::new().append(true).open(mnt.join("d/synced")).unwrap();
        assert_eq!(f.write_all(b"x").unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            File::create(mnt.join("new")).unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
        fs.set_full(false);
        f.write_all(b"!").unwrap();
        assert_eq!(read("d/synced"), "durable!");
        fs.drop_unsynced();

        // A truncation waits like a write.
        let f = OpenOptions::new().write(true).open(mnt.join("d/synced")).unwrap();
        f.set_len(3).unwrap();
        assert_eq!(read("d/synced"), "dur");
        fs.drop_unsynced();
        assert_eq!(read("d/synced"), "durable");
    }

    /// Inodes the kernel forgets leave the table, except those whose writes still wait; a
    /// long run does not grow the table with every file it ever touched.
    #[test]
    fn forgotten_inodes_leave_the_table_unless_writes_wait() {
        let (dir, fs) = mounted();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(mnt.join("d")).unwrap();
        for i in 0..200 {
            let mut f = File::create(mnt.join(format!("d/f{i}"))).unwrap();
            f.write_all(b"synced").unwrap();
            f.sync_data().unwrap();
        }
        let mut pending = File::create(mnt.join("d/pending")).unwrap();
        pending.write_all(b"waiting").unwrap();
        drop(pending);
        // A listing adds nothing.
        assert_eq!(std::fs::read_dir(mnt.join("d")).unwrap().count(), 201);
        assert!(fs.inodes() >= 202, "{} inodes", fs.inodes());

        // The kernel evicts what nothing uses and tells the filesystem (FUSE forget).
        let evict = || {
            std::fs::write("/proc/sys/vm/drop_caches", "2")
                .expect("writing /proc/sys/vm/drop_caches (the test evicts the kernel's inodes as root)")
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs.inodes() > 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} inodes left after the kernel forgot them",
                fs.inodes()
            );
            evict();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // What was kept is the root and the file whose write waits (and maybe its directory,
        // still held by the kernel for a moment); the waiting write is still there.
        let mut text = String::new();
        File::open(mnt.join("d/pending"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "waiting");
        text.clear();
        File::open(mnt.join("d/f7")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "synced");
        // Once its write is dropped and the kernel forgets it, it goes too.
        assert_eq!(fs.drop_unsynced().files, 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs.inodes() > 1 {
            assert!(std::time::Instant::now() < deadline, "{} inodes left", fs.inodes());
            evict();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(std::fs::metadata(mnt.join("d/pending")).unwrap().len(), 0);
    }
}
