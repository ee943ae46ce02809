//! The file system's semantics, without FUSE: a tree of inodes where every
//! file and folder has a current state and a durable one, and a power cut
//! throws away everything that was not made durable.
//!
//! - A file's data (and size) become durable at `fsync`/`fdatasync` of that
//!   file ([`Tree::sync_file`]).
//! - A folder's entries (creations, removals, renames in it) become durable
//!   at an `fsync` of that folder ([`Tree::sync_dir`]). A rename between two
//!   folders is atomic, as in a journaling file system: once either folder
//!   is synced, the file is durable at its new name and gone from the old.
//! - [`Tree::power_cut`] reverts every file to its durable data and every
//!   folder to its durable entries; what is then unreachable is gone.
//!
//! This is the model of Jepsen's LazyFS, made stricter on metadata: nothing
//! but an fsync makes anything durable (no periodic writeback, no journal
//! commit by another file's fsync).

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number; [`ROOT`] is the root folder.
pub type Ino = u64;

/// The root folder's inode number (FUSE's).
pub const ROOT: Ino = 1;

/// A refused operation, as the errno the caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such file or folder")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("not a folder")]
    NotDir,
    #[error("is a folder")]
    IsDir,
    #[error("folder not empty")]
    NotEmpty,
    #[error("invalid argument")]
    Invalid,
}

impl Error {
    /// The errno for the kernel.
    pub fn errno(self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::Invalid => libc::EINVAL,
        }
    }
}

/// What `stat` shows of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub mtime: SystemTime,
}

/// What a power cut threw away, for the log of whoever pulled the plug.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Files whose data went back to their last fsync.
    pub files_reverted: usize,
    /// Bytes of unsynced data dropped from those files.
    pub bytes_dropped: u64,
    /// Folders whose entries went back to their last fsync.
    pub folders_reverted: usize,
    /// Inodes that no longer exist.
    pub inodes_gone: usize,
}

#[derive(Debug, Clone)]
enum Content {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, Ino>,
        durable: BTreeMap<OsString, Ino>,
    },
}

#[derive(Debug, Clone)]
struct Node {
    content: Content,
    /// Permission bits; metadata is kept as is across a power cut.
    mode: u32,
    mtime: SystemTime,
}

/// A rename between two folders not yet made durable by syncing either.
#[derive(Debug, Clone)]
struct PendingRename {
    from_dir: Ino,
    from_name: OsString,
    to_dir: Ino,
    to_name: OsString,
    ino: Ino,
}

/// The whole file system.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    /// In the order they were made, so making one durable makes every
    /// earlier one durable too (a journal commits in order).
    renames: Vec<PendingRename>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// An empty file system: a root folder, durable.
    pub fn new() -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::dir(0o755));
        Tree {
            nodes,
            next_ino: ROOT + 1,
            renames: Vec::new(),
        }
    }

    fn node(&self, ino: Ino) -> Result<&Node, Error> {
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Error> {
        self.nodes.get_mut(&ino).ok_or(Error::NotFound)
    }

    fn entries(&self, dir: Ino) -> Result<&BTreeMap<OsString, Ino>, Error> {
        match &self.node(dir)?.content {
            Content::Dir { entries, .. } => Ok(entries),
            Content::File { .. } => Err(Error::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> Result<&mut BTreeMap<OsString, Ino>, Error> {
        let node = self.node_mut(dir)?;
        node.mtime = SystemTime::now();
        match &mut node.content {
            Content::Dir { entries, .. } => Ok(entries),
            Content::File { .. } => Err(Error::NotDir),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Vec<u8>, Error> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        match &mut node.content {
            Content::File { data, .. } => Ok(data),
            Content::Dir { .. } => Err(Error::IsDir),
        }
    }

    /// The inode `name` in folder `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Error> {
        self.entries(parent)?
            .get(name)
            .copied()
            .ok_or(Error::NotFound)
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr, Error> {
        let node = self.node(ino)?;
        let (is_dir, size) = match &node.content {
            Content::File { data, .. } => (false, data.len() as u64),
            Content::Dir { entries, .. } => (true, entries.len() as u64),
        };
        Ok(Attr {
            ino,
            is_dir,
            size,
            mode: node.mode,
            mtime: node.mtime,
        })
    }

    fn add(&mut self, parent: Ino, name: &OsStr, node: Node) -> Result<Ino, Error> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(Error::Invalid);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Error::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Creates an empty file (not durable until `parent` is synced).
    pub fn create(&mut self, parent: Ino, name: &OsStr, mode: u32) -> Result<Ino, Error> {
        self.add(parent, name, Node::file(mode))
    }

    /// Creates an empty folder (not durable until `parent` is synced).
    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, mode: u32) -> Result<Ino, Error> {
        self.add(parent, name, Node::dir(mode))
    }

    /// Writes `bytes` at `offset`, zero-filling a gap; returns the count.
    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<usize, Error> {
        let data = self.file_mut(ino)?;
        let start = usize::try_from(offset).map_err(|_| Error::Invalid)?;
        let end = start.checked_add(bytes.len()).ok_or(Error::Invalid)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Up to `size` bytes from `offset` (fewer at the end of the file).
    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> Result<&[u8], Error> {
        match &self.node(ino)?.content {
            Content::File { data, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size).min(data.len());
                Ok(&data[start..end])
            }
            Content::Dir { .. } => Err(Error::IsDir),
        }
    }

    /// Truncates or extends (with zeros) to `size`.
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Result<(), Error> {
        let size = usize::try_from(size).map_err(|_| Error::Invalid)?;
        self.file_mut(ino)?.resize(size, 0);
        Ok(())
    }

    pub fn set_mode(&mut self, ino: Ino, mode: u32) -> Result<(), Error> {
        self.node_mut(ino)?.mode = mode & 0o7777;
        Ok(())
    }

    /// Removes the file `name` (its inode lives on while durable entries
    /// still name it).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Error> {
        let ino = self.lookup(parent, name)?;
        if self.attr(ino)?.is_dir {
            return Err(Error::IsDir);
        }
        self.entries_mut(parent)?.remove(name);
        Ok(())
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Error> {
        let ino = self.lookup(parent, name)?;
        if !self.entries(ino)?.is_empty() {
            return Err(Error::NotEmpty);
        }
        self.entries_mut(parent)?.remove(name);
        Ok(())
    }

    /// Renames, replacing a file (or an empty folder) at the new name
    /// unless `no_replace`.
    pub fn rename(
        &mut self,
        from_dir: Ino,
        from_name: &OsStr,
        to_dir: Ino,
        to_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Error> {
        let ino = self.lookup(from_dir, from_name)?;
        self.entries(to_dir)?;
        if to_name.is_empty() || to_name == "." || to_name == ".." {
            return Err(Error::Invalid);
        }
        if from_dir == to_dir && from_name == to_name {
            return Ok(());
        }
        let moving_dir = self.attr(ino)?.is_dir;
        if moving_dir && self.is_within(to_dir, ino) {
            return Err(Error::Invalid); // a folder into itself
        }
        if let Ok(replaced) = self.lookup(to_dir, to_name) {
            if no_replace {
                return Err(Error::Exists);
            }
            match (moving_dir, self.attr(replaced)?.is_dir) {
                (false, true) => return Err(Error::IsDir),
                (true, false) => return Err(Error::NotDir),
                (true, true) if !self.entries(replaced)?.is_empty() => return Err(Error::NotEmpty),
                _ => {}
            }
        }
        self.entries_mut(from_dir)?.remove(from_name);
        self.entries_mut(to_dir)?.insert(to_name.to_owned(), ino);
        if from_dir != to_dir {
            self.renames.push(PendingRename {
                from_dir,
                from_name: from_name.to_owned(),
                to_dir,
                to_name: to_name.to_owned(),
                ino,
            });
        }
        Ok(())
    }

    /// True if `dir` is `ancestor` or inside it.
    fn is_within(&self, dir: Ino, ancestor: Ino) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![ancestor];
        while let Some(ino) = stack.pop() {
            if ino == dir {
                return true;
            }
            if seen.insert(ino) {
                if let Ok(entries) = self.entries(ino) {
                    stack.extend(entries.values());
                }
            }
        }
        false
    }

    /// The folder's current entries, with whether each is a folder.
    pub fn read_dir(&self, dir: Ino) -> Result<Vec<(OsString, Ino, bool)>, Error> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, &ino)| (name.clone(), ino, self.attr(ino).is_ok_and(|a| a.is_dir)))
            .collect())
    }

    /// `fsync` of a file: its data become durable.
    pub fn sync_file(&mut self, ino: Ino) -> Result<(), Error> {
        match &mut self.node_mut(ino)?.content {
            Content::File { data, durable } => {
                durable.clone_from(data);
                Ok(())
            }
            // fsync on a folder opened as a file: the kernel sends FSYNCDIR,
            // but be lenient.
            Content::Dir { .. } => self.sync_dir(ino),
        }
    }

    /// `fsync` of a folder: its entries become durable, and so does every
    /// rename between folders up to the last one that touched it.
    pub fn sync_dir(&mut self, dir: Ino) -> Result<(), Error> {
        self.entries(dir)?;
        if let Some(last) = self
            .renames
            .iter()
            .rposition(|r| r.from_dir == dir || r.to_dir == dir)
        {
            let committed: Vec<PendingRename> = self.renames.drain(..=last).collect();
            for rename in committed {
                self.commit_rename(&rename);
            }
        }
        if let Some(Node {
            content: Content::Dir { entries, durable },
            ..
        }) = self.nodes.get_mut(&dir)
        {
            durable.clone_from(entries);
        }
        Ok(())
    }

    /// Applies a rename to both folders' durable entries.
    fn commit_rename(&mut self, rename: &PendingRename) {
        if let Some(Node {
            content: Content::Dir { durable, .. },
            ..
        }) = self.nodes.get_mut(&rename.from_dir)
        {
            if durable.get(&rename.from_name) == Some(&rename.ino) {
                durable.remove(&rename.from_name);
            }
        }
        if let Some(Node {
            content: Content::Dir { durable, .. },
            ..
        }) = self.nodes.get_mut(&rename.to_dir)
        {
            durable.insert(rename.to_name.clone(), rename.ino);
        }
    }

    /// The power cut: everything not durable is lost.
    pub fn power_cut(&mut self) -> Lost {
        let mut lost = Lost::default();
        for node in self.nodes.values_mut() {
            match &mut node.content {
                Content::File { data, durable } => {
                    if data != durable {
                        lost.files_reverted += 1;
                        lost.bytes_dropped += data.len().abs_diff(durable.len()) as u64;
                        data.clone_from(durable);
                    }
                }
                Content::Dir { entries, durable } => {
                    if entries != durable {
                        lost.folders_reverted += 1;
                        entries.clone_from(durable);
                    }
                }
            }
        }
        self.renames.clear();
        // Only what the durable tree reaches from the root survives.
        let mut reachable = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if reachable.insert(ino) {
                if let Ok(entries) = self.entries(ino) {
                    stack.extend(entries.values().filter(|ino| self.nodes.contains_key(ino)));
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reachable.contains(ino));
        lost.inodes_gone = before - self.nodes.len();
        // A folder may name an inode that is gone (it never existed
        // durably): drop those names too.
        let nodes: HashSet<Ino> = self.nodes.keys().copied().collect();
        for node in self.nodes.values_mut() {
            if let Content::Dir { entries, durable } = &mut node.content {
                entries.retain(|_, ino| nodes.contains(ino));
                durable.retain(|_, ino| nodes.contains(ino));
            }
        }
        lost
    }
}

impl Node {
    fn file(mode: u32) -> Node {
        Node {
            content: Content::File {
                data: Vec::new(),
                durable: Vec::new(),
            },
            mode: mode & 0o7777,
            mtime: SystemTime::now(),
        }
    }

    fn dir(mode: u32) -> Node {
        Node {
            content: Content::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            mode: mode & 0o7777,
            mtime: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> &OsStr {
        OsStr::new(text)
    }

    /// The file at `path` (`/`-separated from the root), if it exists.
    fn content(tree: &Tree, path: &str) -> Option<Vec<u8>> {
        let mut ino = ROOT;
        for part in path.split('/') {
            ino = tree.lookup(ino, name(part)).ok()?;
        }
        Some(tree.read(ino, 0, usize::MAX).ok()?.to_vec())
    }

    /// A durable folder `name` under the root.
    fn durable_dir(tree: &mut Tree, folder: &str) -> Ino {
        let dir = tree.mkdir(ROOT, name(folder), 0o700).unwrap();
        tree.sync_dir(ROOT).unwrap();
        dir
    }

    #[test]
    fn unsynced_data_is_lost_synced_data_stays() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.sync_dir(ROOT).unwrap();
        tree.write(file, 0, b"synced").unwrap();
        tree.sync_file(file).unwrap();
        tree.write(file, 6, b" and not").unwrap();
        assert_eq!(content(&tree, "f").unwrap(), b"synced and not");
        let lost = tree.power_cut();
        assert_eq!(content(&tree, "f").unwrap(), b"synced");
        assert_eq!(lost.files_reverted, 1);
        assert_eq!(lost.bytes_dropped, 8);
    }

    #[test]
    fn an_overwrite_and_a_truncation_revert_too() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.sync_dir(ROOT).unwrap();
        tree.write(file, 0, b"abcdef").unwrap();
        tree.sync_file(file).unwrap();
        tree.write(file, 1, b"XY").unwrap();
        tree.set_size(file, 2).unwrap();
        tree.power_cut();
        assert_eq!(content(&tree, "f").unwrap(), b"abcdef");
    }

    #[test]
    fn a_synced_file_in_an_unsynced_folder_vanishes() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.write(file, 0, b"data").unwrap();
        tree.sync_file(file).unwrap();
        let lost = tree.power_cut();
        assert_eq!(content(&tree, "f"), None);
        assert_eq!(lost.inodes_gone, 1);
        assert!(tree.read_dir(ROOT).unwrap().is_empty());
    }

    #[test]
    fn a_durable_name_without_synced_data_is_an_empty_file() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.write(file, 0, b"data").unwrap();
        tree.sync_dir(ROOT).unwrap();
        tree.power_cut();
        assert_eq!(content(&tree, "f").unwrap(), b"");
    }

    #[test]
    fn a_folder_needs_its_parent_synced() {
        let mut tree = Tree::new();
        let outer = tree.mkdir(ROOT, name("outer"), 0o700).unwrap();
        let inner = tree.create(outer, name("f"), 0o600).unwrap();
        tree.write(inner, 0, b"x").unwrap();
        tree.sync_file(inner).unwrap();
        tree.sync_dir(outer).unwrap();
        // `outer` itself was never made durable in the root.
        tree.power_cut();
        assert_eq!(content(&tree, "outer/f"), None);
        assert_eq!(tree.lookup(ROOT, name("outer")), Err(Error::NotFound));
    }

    #[test]
    fn an_unsynced_removal_comes_back() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.write(file, 0, b"kept").unwrap();
        tree.sync_file(file).unwrap();
        tree.sync_dir(ROOT).unwrap();
        tree.unlink(ROOT, name("f")).unwrap();
        assert_eq!(content(&tree, "f"), None);
        tree.power_cut();
        assert_eq!(content(&tree, "f").unwrap(), b"kept");
        // Synced, the removal stays.
        tree.unlink(ROOT, name("f")).unwrap();
        tree.sync_dir(ROOT).unwrap();
        tree.power_cut();
        assert_eq!(content(&tree, "f"), None);
    }

    #[test]
    fn the_maildir_sequence_is_durable_once_the_target_folder_is_synced() {
        let mut tree = Tree::new();
        let tmp = durable_dir(&mut tree, "tmp");
        let new = durable_dir(&mut tree, "new");
        let file = tree.create(tmp, name("m"), 0o600).unwrap();
        tree.write(file, 0, b"message").unwrap();
        tree.sync_file(file).unwrap();
        tree.rename(tmp, name("m"), new, name("m"), false).unwrap();
        // Before the folder's fsync, a power cut loses the message.
        let mut copy = tree.clone();
        copy.power_cut();
        assert_eq!(content(&copy, "new/m"), None);
        assert_eq!(content(&copy, "tmp/m"), None);
        // After it, the message is in new/ and only there.
        tree.sync_dir(new).unwrap();
        tree.power_cut();
        assert_eq!(content(&tree, "new/m").unwrap(), b"message");
        assert_eq!(content(&tree, "tmp/m"), None);
    }

    #[test]
    fn a_rename_between_folders_is_atomic_whichever_folder_is_synced() {
        let mut tree = Tree::new();
        let a = durable_dir(&mut tree, "a");
        let b = durable_dir(&mut tree, "b");
        let file = tree.create(a, name("f"), 0o600).unwrap();
        tree.write(file, 0, b"one").unwrap();
        tree.sync_file(file).unwrap();
        tree.sync_dir(a).unwrap();
        tree.rename(a, name("f"), b, name("g"), false).unwrap();
        // Syncing the source makes the removal durable, and with it the
        // new name: the file is never lost in between.
        tree.sync_dir(a).unwrap();
        tree.power_cut();
        assert_eq!(content(&tree, "a/f"), None);
        assert_eq!(content(&tree, "b/g").unwrap(), b"one");
    }

    #[test]
    fn an_unsynced_rename_reverts_and_a_replaced_file_returns() {
        let mut tree = Tree::new();
        for (file, text) in [("old", b"old".as_slice()), ("staged", b"new".as_slice())] {
            let ino = tree.create(ROOT, name(file), 0o600).unwrap();
            tree.write(ino, 0, text).unwrap();
            tree.sync_file(ino).unwrap();
        }
        tree.sync_dir(ROOT).unwrap();
        tree.rename(ROOT, name("staged"), ROOT, name("old"), false)
            .unwrap();
        assert_eq!(content(&tree, "old").unwrap(), b"new");
        tree.power_cut();
        assert_eq!(content(&tree, "old").unwrap(), b"old");
        assert_eq!(content(&tree, "staged").unwrap(), b"new");
    }

    #[test]
    fn syncing_a_folder_commits_earlier_renames_in_order() {
        let mut tree = Tree::new();
        let a = durable_dir(&mut tree, "a");
        let b = durable_dir(&mut tree, "b");
        let c = durable_dir(&mut tree, "c");
        let file = tree.create(a, name("f"), 0o600).unwrap();
        tree.sync_file(file).unwrap();
        tree.sync_dir(a).unwrap();
        tree.rename(a, name("f"), b, name("f"), false).unwrap();
        tree.rename(b, name("f"), c, name("f"), false).unwrap();
        tree.sync_dir(c).unwrap();
        tree.power_cut();
        let names: Vec<bool> = ["a/f", "b/f", "c/f"]
            .iter()
            .map(|path| content(&tree, path).is_some())
            .collect();
        assert_eq!(names, [false, false, true]);
    }

    #[test]
    fn refusals_name_the_right_errno() {
        let mut tree = Tree::new();
        let dir = tree.mkdir(ROOT, name("d"), 0o700).unwrap();
        let file = tree.create(dir, name("f"), 0o600).unwrap();
        assert_eq!(tree.create(dir, name("f"), 0o600), Err(Error::Exists));
        assert_eq!(tree.rmdir(ROOT, name("d")), Err(Error::NotEmpty));
        assert_eq!(tree.unlink(ROOT, name("d")), Err(Error::IsDir));
        assert_eq!(tree.lookup(file, name("x")), Err(Error::NotDir));
        assert_eq!(
            tree.rename(ROOT, name("d"), dir, name("inside"), false),
            Err(Error::Invalid)
        );
        tree.create(ROOT, name("g"), 0o600).unwrap();
        assert_eq!(
            tree.rename(ROOT, name("g"), dir, name("f"), true),
            Err(Error::Exists)
        );
        assert_eq!(tree.mkdir(ROOT, name(".."), 0o700), Err(Error::Invalid));
        assert_eq!(tree.read(dir, 0, 1), Err(Error::IsDir));
    }

    #[test]
    fn writes_past_the_end_fill_with_zeros_and_reads_stop_at_the_end() {
        let mut tree = Tree::new();
        let file = tree.create(ROOT, name("f"), 0o600).unwrap();
        tree.write(file, 3, b"x").unwrap();
        assert_eq!(tree.read(file, 0, 100).unwrap(), b"\0\0\0x");
        assert_eq!(tree.read(file, 2, 1).unwrap(), b"\0");
        assert_eq!(tree.read(file, 10, 1).unwrap(), b"");
        assert_eq!(tree.attr(file).unwrap().size, 4);
    }
}
