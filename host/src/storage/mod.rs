//! The file operations that durability depends on, behind one small trait.
//!
//! The spool, the Maildir store and the history promise that what they
//! acknowledged survives a crash. That promise rests on a few operations —
//! create, write, sync, truncate, rename, remove and sync a folder — so
//! those go through [`Storage`]: [`Disk`] is the real file system, and
//! [`sim::SimStorage`] a simulated one that forgets everything not synced
//! when it "crashes", so tests can cut the power at every write and sync
//! point and check what is left (as FoundationDB's and TigerBeetle's
//! simulators do).
//!
//! Everything created here is private to the server: files 0600, folders
//! 0700, whatever the umask (Postfix and Dovecot do the same).

pub mod sim;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// Mode of every file the server writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder the server makes.
pub const DIR_MODE: u32 = 0o700;

/// A file open for appending, shared between the writer and whoever syncs
/// it (group commit syncs outside the writer's lock).
pub trait AppendFile: Send + Sync {
    /// Appends all of `bytes`. On error some prefix may have been written.
    fn write_all(&self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    /// Cuts the file back to `length` bytes (after a failed write).
    fn truncate(&self, length: u64) -> io::Result<()>;
    /// The file's size now.
    fn size(&self) -> io::Result<u64>;
}

/// The durable file operations.
pub trait Storage: Send + Sync {
    /// Makes `path` and its parents (mode 0700).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new, empty file for appending (0600); fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>>;
    /// Opens a file for appending, created (0600) if missing.
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `length` bytes from `offset`.
    fn read_at(&self, path: &Path, offset: u64, length: u64) -> io::Result<Vec<u8>>;
    /// The names in a folder (files only matter here).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// True if `path` names a file or folder.
    fn exists(&self, path: &Path) -> bool;
    /// Renames a file (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the folder's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Disk {
    /// The real file system, shared.
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(Disk)
    }
}

struct DiskFile(File);

impl AppendFile for DiskFile {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        (&self.0).write_all(bytes)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&self, length: u64) -> io::Result<()> {
        self.0.set_len(length)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// Creates `dir` (and parents) 0700, and narrows it to 0700 if it exists
/// wider: mail folders must not be readable by other users. Each folder
/// made here is made durable in its parent (a power cut must not take a
/// new mailbox or the queue folder away with what was synced inside it).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    for made in missing.iter().rev() {
        if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    let metadata = std::fs::metadata(dir)?;
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

impl Storage for Disk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        private_dir(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn AppendFile>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)?;
        // Narrowed if an older version made it wider.
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(Arc::new(DiskFile(file)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, length: u64) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = vec![0; length as usize];
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
