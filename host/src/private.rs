//! Files and folders only their owner may read: mail, the TLS key, the
//! history, the pid file. Modes are set explicitly (0600 and 0700, as
//! Postfix and Dovecot use), never left to the umask, which an operator's
//! shell or a service manager may have set to 000.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file mailcall writes with private content.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every folder mailcall keeps private content in.
pub const FOLDER_MODE: u32 = 0o700;

/// Makes `path` (and any missing parent) a folder with mode 0700, and sets
/// it to 0700 if it had another mode: one made by an older version, or a
/// umask that took the owner's own rights away. Narrowing a folder also
/// hides the files already in it, whatever their modes. A folder we may
/// use but not change (someone else owns it) is logged and left as it is:
/// its owner chose its mode.
pub fn folder(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(FOLDER_MODE)
        .create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != FOLDER_MODE {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FOLDER_MODE)) {
            Ok(()) => {
                tracing::info!(path = %path.display(), was = format!("{mode:o}"), "folder made private (0700)")
            }
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "folder not ours to make private: {error}")
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Options that create a file with mode 0600: the umask can only narrow
/// that, so the file is never readable by others, not even for a moment.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// 0600, for a file that may exist with another mode.
pub fn file_permissions() -> std::fs::Permissions {
    std::fs::Permissions::from_mode(FILE_MODE)
}

/// Writes `bytes` to a file only its owner can read (replacing its content)
/// and syncs it. A file that existed with a wider mode is narrowed.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_permissions(file_permissions())?;
    file.write_all(bytes)?;
    file.sync_all()
}
