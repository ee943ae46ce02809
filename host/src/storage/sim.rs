//! A simulated file system that loses what was not synced, for crash tests.
//!
//! Every file keeps what was written and what was synced; every folder
//! keeps its entries as they are and as they were at its last sync. A crash
//! can be armed at any fault point (each write, sync, truncate, create,
//! rename, remove and folder sync counts one): that operation fails — a
//! write may leave a torn prefix — and so does everything after it, as if
//! the power went. [`SimStorage::restart`] then brings the "disk" back as a
//! real one would after a power cut: synced data and synced folder entries
//! stay, unsynced entries vanish, and of the unsynced tail of a file some
//! prefix may have reached the disk (torn at any byte, perhaps with a
//! zeroed hole, as page write-back in any order leaves it).
//!
//! A byte budget simulates a full disk: a write that passes it writes what
//! fits and fails with `ENOSPC`, and the file system goes on.
//!
//! Folders themselves are always durable (the server makes them once, at
//! start), which keeps the model small.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{AppendFile, Storage};

/// `ENOSPC`.
const NO_SPACE: i32 = 28;

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    inodes: Vec<Inode>,
    /// The namespace as processes see it.
    names: BTreeMap<PathBuf, usize>,
    /// The namespace as it is on the disk (as of each folder's last sync).
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    /// Fault points passed so far.
    points: u64,
    /// The fault point at which the power goes.
    crash_at: Option<u64>,
    crashed: bool,
    /// Bytes that may still be written before the disk is full.
    space: Option<u64>,
    rng: Option<fastrand::Rng>,
}

/// The simulated file system; clone the `Arc` to share it.
pub struct SimStorage {
    state: Mutex<State>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimStorage {
    /// An empty disk; `seed` drives how a crash tears unsynced data.
    pub fn new(seed: u64) -> Arc<SimStorage> {
        Arc::new(SimStorage {
            state: Mutex::new(State {
                rng: Some(fastrand::Rng::with_seed(seed)),
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fault points passed so far (to choose where to crash).
    pub fn points(&self) -> u64 {
        self.lock().points
    }

    /// The power goes at fault point number `point` (counted from the
    /// start), i.e. that operation and every later one fail.
    pub fn crash_at(&self, point: u64) {
        self.lock().crash_at = Some(point);
    }

    /// True once the armed crash happened.
    pub fn has_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Leaves `bytes` of free space (`None`: unlimited).
    pub fn set_space(&self, bytes: Option<u64>) {
        self.lock().space = bytes;
    }

    /// The power comes back: what was not synced is lost or torn.
    pub fn restart(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut rng = state.rng.take().unwrap_or_default();
        state.names = state.durable_names.clone();
        for inode in &mut state.inodes {
            let durable = inode.durable.clone();
            let extends = inode.data.len() > durable.len() && inode.data.starts_with(&durable);
            let mut after = durable.clone();
            if extends && rng.bool() {
                // Some of the unsynced tail reached the disk.
                let tail = &inode.data[durable.len()..];
                let kept = rng.usize(0..=tail.len());
                after.extend_from_slice(&tail[..kept]);
                if kept > 1 && rng.u8(..) < 32 {
                    let start = durable.len() + rng.usize(0..kept);
                    let end = rng.usize(start..=durable.len() + kept);
                    after[start..end].fill(0);
                }
            }
            inode.data = after.clone();
            inode.durable = after;
        }
        state.crash_at = None;
        state.crashed = false;
        state.space = None;
        state.rng = Some(rng);
    }

    /// Passes one fault point: fails if the power is gone or goes now.
    fn point(state: &mut State) -> io::Result<()> {
        if state.crashed {
            return Err(crashed());
        }
        state.points += 1;
        if state.crash_at == Some(state.points) {
            state.crashed = true;
            return Err(crashed());
        }
        Ok(())
    }

    fn inode_of(state: &State, path: &Path) -> io::Result<usize> {
        state
            .names
            .get(path)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn new_file(self: &Arc<Self>, path: &Path, exclusive: bool) -> io::Result<Arc<dyn AppendFile>> {
        let mut state = self.lock();
        if let Some(&inode) = state.names.get(path) {
            if exclusive {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: exists", path.display()),
                ));
            }
            return Ok(Arc::new(SimFile {
                storage: self.clone(),
                inode,
            }));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !state.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        SimStorage::point(&mut state)?;
        state.inodes.push(Inode::default());
        let inode = state.inodes.len() - 1;
        state.names.insert(path.to_path_buf(), inode);
        Ok(Arc::new(SimFile {
            storage: self.clone(),
            inode,
        }))
    }
}

/// A file of the simulated disk: it refers to its inode, so it keeps
/// working after a rename or removal, as on Unix.
struct SimFile {
    storage: Arc<SimStorage>,
    inode: usize,
}

impl AppendFile for SimFile {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.storage.lock();
        let state = &mut *state;
        if state.crashed {
            return Err(crashed());
        }
        state.points += 1;
        if state.crash_at == Some(state.points) {
            state.crashed = true;
            // The power went mid-write: a torn prefix may be in the cache.
            let kept = state
                .rng
                .as_mut()
                .map_or(0, |rng| rng.usize(0..=bytes.len()));
            state.inodes[self.inode]
                .data
                .extend_from_slice(&bytes[..kept]);
            return Err(crashed());
        }
        let fits = state
            .space
            .map_or(bytes.len(), |space| bytes.len().min(space as usize));
        state.inodes[self.inode]
            .data
            .extend_from_slice(&bytes[..fits]);
        if let Some(space) = state.space.as_mut() {
            *space -= fits as u64;
        }
        if fits < bytes.len() {
            return Err(io::Error::from_raw_os_error(NO_SPACE));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.storage.lock();
        SimStorage::point(&mut state)?;
        let inode = &mut state.inodes[self.inode];
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn truncate(&self, length: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        SimStorage::point(&mut state)?;
        let data = &mut state.inodes[self.inode].data;
        let freed = (data.len() as u64).saturating_sub(length);
        data.resize(length as usize, 0);
        if let Some(space) = state.space.as_mut() {
            *space += freed;
        }
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        let state = self.storage.lock();
        if state.crashed {
            return Err(crashed());
        }
        Ok(state.inodes[self.inode].data.len() as u64)
    }
}

impl Storage for Arc<SimStorage> {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>> {
        self.new_file(path, true)
    }

    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>> {
        self.new_file(path, false)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        if state.crashed {
            return Err(crashed());
        }
        let inode = SimStorage::inode_of(&state, path)?;
        Ok(state.inodes[inode].data.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, length: u64) -> io::Result<Vec<u8>> {
        let data = self.read(path)?;
        let end = offset
            .checked_add(length)
            .filter(|&end| end <= data.len() as u64);
        match end {
            Some(end) => Ok(data[offset as usize..end as usize].to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past the end", path.display()),
            )),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = state.names.keys().filter(|p| p.parent() == Some(dir));
        let dirs = state.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(dirs)
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.names.contains_key(path) || state.dirs.contains(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let inode = SimStorage::inode_of(&state, from)?;
        SimStorage::point(&mut state)?;
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        SimStorage::inode_of(&state, path)?;
        SimStorage::point(&mut state)?;
        state.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        SimStorage::point(&mut state)?;
        let state = &mut *state;
        state.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (path, &inode) in &state.names {
            if path.parent() == Some(dir) {
                state.durable_names.insert(path.clone(), inode);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_entries_are_lost_at_a_crash() {
        let sim = SimStorage::new(1);
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let kept = sim.create_new(&dir.join("kept")).unwrap();
        kept.write_all(b"synced").unwrap();
        kept.sync().unwrap();
        sim.sync_dir(dir).unwrap();
        kept.write_all(b" and not").unwrap();
        let lost = sim.create_new(&dir.join("lost")).unwrap();
        lost.write_all(b"x").unwrap();
        lost.sync().unwrap();
        sim.crash_at(sim.points() + 1);
        assert!(kept.sync().is_err(), "the power is gone");
        assert!(sim.has_crashed());
        sim.restart();
        let after = sim.read(&dir.join("kept")).unwrap();
        assert!(after.starts_with(b"synced") && after.len() <= b"synced and not".len());
        assert!(
            !sim.exists(&dir.join("lost")),
            "its folder was never synced"
        );
    }

    #[test]
    fn a_rename_is_durable_only_after_the_folder_sync() {
        let sim = SimStorage::new(2);
        let dir = Path::new("/m");
        sim.create_dir_all(dir).unwrap();
        let file = sim.create_new(&dir.join("tmp")).unwrap();
        file.write_all(b"mail").unwrap();
        file.sync().unwrap();
        sim.sync_dir(dir).unwrap();
        sim.rename(&dir.join("tmp"), &dir.join("new")).unwrap();
        sim.restart();
        assert!(sim.exists(&dir.join("tmp")) && !sim.exists(&dir.join("new")));
        sim.rename(&dir.join("tmp"), &dir.join("new")).unwrap();
        sim.sync_dir(dir).unwrap();
        sim.restart();
        assert_eq!(sim.read(&dir.join("new")).unwrap(), b"mail");
    }

    #[test]
    fn a_full_disk_writes_what_fits_and_says_enospc() {
        let sim = SimStorage::new(3);
        sim.create_dir_all(Path::new("/f")).unwrap();
        let file = sim.create_new(Path::new("/f/a")).unwrap();
        sim.set_space(Some(3));
        let error = file.write_all(b"abcdef").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(NO_SPACE));
        assert_eq!(sim.read(Path::new("/f/a")).unwrap(), b"abc");
        file.truncate(0).unwrap();
        file.write_all(b"xyz").unwrap();
        assert_eq!(sim.read(Path::new("/f/a")).unwrap(), b"xyz");
    }
}
