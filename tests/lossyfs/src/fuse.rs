//! The [`Tree`] served over FUSE, and the switch that cuts its power.
//!
//! The kernel is told to cache nothing (entries and attributes expire at
//! once, files are opened for direct I/O), so after a power cut every
//! process sees the reverted tree. File handles opened before a cut are
//! dead after it: a write the kernel still delivers late for a killed
//! process is refused instead of landing in the state after the cut.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Attr, Error, Ino, Lost, Tree};

/// Nothing is cached by the kernel.
const TTL: Duration = Duration::ZERO;

/// File handles carry the power epoch they were opened in, above this bit.
const EPOCH_SHIFT: u32 = 40;

#[derive(Debug)]
struct State {
    tree: Tree,
    /// Counts power cuts; handles from an earlier epoch are dead.
    epoch: u64,
    next_handle: u64,
}

/// Shared between the FUSE session and whoever holds the [`PowerSwitch`].
type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Cuts the power of a mounted [`LossyFs`].
#[derive(Clone, Debug)]
pub struct PowerSwitch(Shared);

impl PowerSwitch {
    /// Drops everything not durable; handles opened before are dead.
    pub fn cut(&self) -> Lost {
        let mut state = lock(&self.0);
        state.epoch += 1;
        state.tree.power_cut()
    }
}

/// The FUSE file system.
#[derive(Debug)]
pub struct LossyFs(Shared);

impl LossyFs {
    /// An empty file system and the switch that cuts its power.
    pub fn new() -> (LossyFs, PowerSwitch) {
        let shared = Arc::new(Mutex::new(State {
            tree: Tree::new(),
            epoch: 0,
            next_handle: 1,
        }));
        (LossyFs(shared.clone()), PowerSwitch(shared))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }
}

/// A mounted [`LossyFs`]; unmounted when dropped (if nothing keeps it
/// busy).
pub struct Mounted {
    pub switch: PowerSwitch,
    session: fuser::BackgroundSession,
    mountpoint: PathBuf,
}

impl Mounted {
    /// Unmounts and waits for the serving thread; fails (EBUSY) while a
    /// process still has a file open in it.
    ///
    /// A file closed a moment ago can hold the mount for a little longer:
    /// the kernel keeps its path until this file system has answered the
    /// RELEASE it sends after the close returned. So a busy mount is tried
    /// again for up to two seconds before the error is returned.
    pub fn unmount(self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error.into()),
                // The kernel ends the session, and its thread with it.
                Ok(()) => return self.session.join(),
            }
        }
    }

    /// Unmounts and mounts what survived at `mountpoint` again, as after a
    /// reboot: nothing of the kernel's view of the old mount is left. The
    /// old mount is detached lazily, so a process killed a moment ago that
    /// is still closing its files (with dead handles) does not hold it up.
    pub fn remount(self, mountpoint: &Path) -> std::io::Result<Mounted> {
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)?;
        let Mounted {
            switch, session, ..
        } = self;
        // Its own unmount now finds nothing to do; its thread ends when the
        // kernel closes the detached connection.
        drop(session);
        mount_tree(LossyFs(switch.0.clone()), switch, mountpoint)
    }
}

/// Mounts an empty [`LossyFs`] at `mountpoint` (as root: no fusermount
/// needed) and serves it on a background thread.
pub fn mount(mountpoint: &Path) -> std::io::Result<Mounted> {
    let (fs, switch) = LossyFs::new();
    mount_tree(fs, switch, mountpoint)
}

fn mount_tree(fs: LossyFs, switch: PowerSwitch, mountpoint: &Path) -> std::io::Result<Mounted> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("lossyfs".into()),
        fuser::MountOption::Subtype("lossyfs".into()),
    ];
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    Ok(Mounted {
        switch,
        session,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl State {
    fn open_handle(&mut self) -> FileHandle {
        let handle = (self.epoch << EPOCH_SHIFT) | self.next_handle;
        self.next_handle = (self.next_handle + 1) % (1 << EPOCH_SHIFT);
        FileHandle(handle)
    }

    /// Refuses a handle opened before the last power cut.
    fn live(&self, fh: FileHandle) -> Result<(), Errno> {
        if fh.0 >> EPOCH_SHIFT == self.epoch {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }
}

fn errno(error: Error) -> Errno {
    Errno::from_i32(error.errno())
}

fn file_attr(attr: Attr, request: &Request) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: UNIX_EPOCH,
        kind: if attr.is_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: attr.mode as u16,
        nlink: if attr.is_dir { 2 } else { 1 },
        uid: request.uid(),
        gid: request.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn ino(number: INodeNo) -> Ino {
    number.0
}

impl Filesystem for LossyFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        match state
            .tree
            .lookup(ino(parent), name)
            .and_then(|found| state.tree.attr(found))
        {
            Ok(attr) => reply.entry(&TTL, &file_attr(attr, req), Generation(0)),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn getattr(&self, req: &Request, number: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().tree.attr(ino(number)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(attr, req)),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        number: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(Err(dead)) = fh.map(|fh| state.live(fh)) {
            return reply.error(dead);
        }
        let inode = ino(number);
        let result = (|| {
            if let Some(mode) = mode {
                state.tree.set_mode(inode, mode)?;
            }
            if let Some(size) = size {
                state.tree.set_size(inode, size)?;
            }
            state.tree.attr(inode)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(attr, req)),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        match state
            .tree
            .mkdir(ino(parent), name, mode & !umask)
            .and_then(|made| state.tree.attr(made))
        {
            Ok(attr) => reply.entry(&TTL, &file_attr(attr, req), Generation(0)),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        match state
            .tree
            .create(ino(parent), name, mode & !umask)
            .and_then(|made| state.tree.attr(made))
        {
            Ok(attr) => {
                let fh = state.open_handle();
                reply.created(
                    &TTL,
                    &file_attr(attr, req),
                    Generation(0),
                    fh,
                    FopenFlags::FOPEN_DIRECT_IO,
                )
            }
            Err(error) => reply.error(errno(error)),
        }
    }

    fn open(&self, _req: &Request, number: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.tree.attr(ino(number)) {
            Ok(attr) if attr.is_dir => reply.error(Errno::EISDIR),
            Ok(_) => {
                let fh = state.open_handle();
                reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(error) => reply.error(errno(error)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        number: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        if let Err(dead) = state.live(fh) {
            return reply.error(dead);
        }
        match state.tree.read(ino(number), offset, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        number: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        if let Err(dead) = state.live(fh) {
            return reply.error(dead);
        }
        match state.tree.write(ino(number), offset, data) {
            Ok(written) => reply.written(written as u32),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _number: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        number: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Err(dead) = state.live(fh) {
            return reply.error(dead);
        }
        match state.tree.sync_file(ino(number)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn opendir(&self, _req: &Request, number: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.tree.attr(ino(number)) {
            Ok(attr) if attr.is_dir => {
                let fh = state.open_handle();
                reply.opened(fh, FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        number: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        if let Err(dead) = state.live(fh) {
            return reply.error(dead);
        }
        let entries = match state.tree.read_dir(ino(number)) {
            Ok(entries) => entries,
            Err(error) => return reply.error(errno(error)),
        };
        let dots = [
            (".".into(), ino(number), true),
            ("..".into(), ino(number), true),
        ];
        // An entry's offset is its position + 1: where the next read goes on.
        for (position, (name, entry, is_dir)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            let kind = if is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(entry), position as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        number: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Err(dead) = state.live(fh) {
            return reply.error(dead);
        }
        match state.tree.sync_dir(ino(number)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().tree.unlink(ino(parent), name) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().tree.rmdir(ino(parent), name) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .state()
            .tree
            .rename(ino(parent), name, ino(newparent), newname, no_replace)
        {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn access(
        &self,
        _req: &Request,
        number: INodeNo,
        _mask: fuser::AccessFlags,
        reply: ReplyEmpty,
    ) {
        match self.state().tree.attr(ino(number)) {
            Ok(_) => reply.ok(),
            Err(error) => reply.error(errno(error)),
        }
    }

    fn statfs(&self, _req: &Request, _number: INodeNo, reply: ReplyStatfs) {
        // Memory-backed: report plenty of room.
        reply.statfs(1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}
