//! Mail stays private whatever the umask: every test here runs with a
//! umask of 000 (set for this whole test binary, which is why these tests
//! have a binary of their own), the worst an operator's shell or service
//! manager can leave, and checks the modes of what mailcall writes: mail
//! files and the history 0600, Maildir folders and the data folder 0700,
//! the TLS key 0600 in a 0700 folder.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mailcall::mailbox::maildir::Maildir;

mod common;
use common::server::*;

/// Sets this process's umask to 000; children started later inherit it.
fn open_umask() {
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn assert_mode(path: &Path, expected: u32) {
    assert_eq!(
        mode(path),
        expected,
        "{} is {:o}, not {expected:o}",
        path.display(),
        mode(path)
    );
}

#[test]
fn maildir_folders_are_0700_and_files_0600_under_umask_000() {
    open_umask();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail/taro");
    let maildir = Maildir::open(&root).unwrap();
    let unique = maildir.deliver(b"Subject: private\r\n\r\nx\r\n").unwrap();
    for folder in [
        "mail",
        "mail/taro",
        "mail/taro/tmp",
        "mail/taro/new",
        "mail/taro/cur",
    ] {
        assert_mode(&dir.path().join(folder), 0o700);
    }
    assert_mode(&root.join("new").join(unique), 0o600);
}

#[test]
fn a_wider_maildir_is_narrowed_at_open_and_a_stale_tmp_file_is_not_reused_wide() {
    open_umask();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("taro");
    for folder in ["", "tmp", "new", "cur"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        std::fs::set_permissions(root.join(folder), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    // A file a crash left in tmp/ under the name of the delivery repeated now.
    let stale = root.join("tmp/1795000000.Q1R0.host");
    std::fs::write(&stale, "half").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();

    let maildir = Maildir::open(&root).unwrap();
    for folder in ["", "tmp", "new", "cur"] {
        assert_mode(&root.join(folder), 0o700);
    }
    maildir
        .deliver_as("1795000000.Q1R0.host", b"whole")
        .unwrap();
    let delivered = root.join("new/1795000000.Q1R0.host");
    assert_mode(&delivered, 0o600);
    assert_eq!(std::fs::read(delivered).unwrap(), b"whole");
}

#[test]
fn a_server_under_umask_000_keeps_its_data_folder_mail_history_and_key_private() {
    open_umask();
    let dir = tempfile::tempdir().unwrap();
    // The server inherits the umask of 000.
    let server = start(dir.path(), free_port());
    let (ok, transcript) = swaks(&server, &["--to", "taro@local.test"]);
    assert!(ok, "{transcript}");
    let files = wait_for_files(dir.path(), "taro", 1);
    assert_eq!(files.len(), 1);
    wait_for_history(dir.path(), "taro@local.test", "delivered");

    let data = dir.path().join("data");
    assert_mode(&files[0], 0o600);
    for folder in [
        "",
        "mail",
        "mail/taro",
        "mail/taro/tmp",
        "mail/taro/new",
        "mail/taro/cur",
        "tls",
    ] {
        assert_mode(&data.join(folder), 0o700);
    }
    assert_mode(&data.join("tls/key.pem"), 0o600);
    assert_mode(&data.join(mailcall::history::HISTORY_FILE), 0o600);
    assert_mode(&data.join(mailcall::server::PID_FILE), 0o600);
}

#[test]
fn a_data_folder_left_world_readable_is_narrowed_at_start() {
    open_umask();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tls")).unwrap();
    for folder in [&data, &data.join("tls")] {
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _server = start(dir.path(), free_port());
    assert_mode(&data, 0o700);
    assert_mode(&data.join("tls"), 0o700);
}
