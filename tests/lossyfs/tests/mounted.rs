//! The `lossyfs` binary mounted for real (as root, with /dev/fuse): files
//! written through the kernel keep what was fsynced and lose the rest at
//! SIGUSR1. Skipped, with a message, where the machine allows no mount.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a mount cannot work here, if it cannot.
fn cannot_mount() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (the pure-Rust mount uses mount(2))");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    None
}

struct Lossy {
    mountpoint: PathBuf,
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Lossy {
    fn mount(mountpoint: &Path) -> Lossy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lossyfs"))
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("mounted"), "{line:?}");
        Lossy {
            mountpoint: mountpoint.to_path_buf(),
            child,
            stdout,
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// SIGUSR1, and the line saying what was lost.
    fn power_cut(&mut self) -> String {
        self.signal("-USR1");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("power cut:"), "{line:?}");
        line
    }
}

impl Lossy {
    /// SIGTERM; true if it unmounted and exited 0 within 5 s.
    fn stop(&mut self) -> bool {
        self.signal("-TERM");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Lossy {
    /// Never leaves a mount behind, even when a test fails with files open.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn mounted_at(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let point = mountpoint.to_string_lossy().into_owned();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(point.as_str()))
}

#[test]
fn through_the_kernel_a_power_cut_keeps_exactly_what_was_synced() {
    if let Some(reason) = cannot_mount() {
        eprintln!("skipped: lossyfs cannot be mounted here: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mnt");
    std::fs::create_dir(&root).unwrap();
    let mut fs = Lossy::mount(&root);
    assert!(mounted_at(&root));

    // Durable: a folder (root synced), a file in it (data and folder synced).
    let folder = root.join("spool");
    std::fs::create_dir(&folder).unwrap();
    sync_dir(&root);
    let kept = folder.join("kept");
    let mut file = File::create(&kept).unwrap();
    file.write_all(b"synced part").unwrap();
    file.sync_data().unwrap();
    sync_dir(&folder);
    let doomed = folder.join("removed");
    std::fs::write(&doomed, b"").unwrap();
    sync_dir(&folder);
    // Not durable: more data, a file whose data were synced but not its
    // name, a removal and a rename nobody synced.
    let mut appending = OpenOptions::new().append(true).open(&kept).unwrap();
    appending.write_all(b" + unsynced tail").unwrap();
    let unnamed = folder.join("unnamed");
    let mut other = File::create(&unnamed).unwrap();
    other.write_all(b"data synced, name not").unwrap();
    other.sync_all().unwrap();
    std::fs::remove_file(&doomed).unwrap();
    std::fs::rename(&kept, folder.join("renamed")).unwrap();
    // A Maildir delivery done right, in another folder: tmp, fsync,
    // rename, fsync new/.
    let maildir = root.join("mail");
    std::fs::create_dir(&maildir).unwrap();
    for sub in ["tmp", "new"] {
        std::fs::create_dir(maildir.join(sub)).unwrap();
    }
    sync_dir(&maildir);
    sync_dir(&root);
    let staged = maildir.join("tmp/m1");
    let mut message = File::create(&staged).unwrap();
    message.write_all(b"Subject: m1\r\n\r\nbody\r\n").unwrap();
    message.sync_all().unwrap();
    std::fs::rename(&staged, maildir.join("new/m1")).unwrap();
    sync_dir(&maildir.join("new"));
    assert_eq!(
        read(&folder.join("renamed")).unwrap(),
        b"synced part + unsynced tail"
    );

    let report = fs.power_cut();
    assert!(!report.contains(" 0 files reverted"), "{report}");

    assert_eq!(read(&kept).unwrap(), b"synced part", "{report}");
    assert_eq!(read(&folder.join("renamed")), None);
    assert_eq!(read(&unnamed), None);
    assert_eq!(read(&doomed).unwrap(), b"");
    assert_eq!(
        read(&maildir.join("new/m1")).unwrap(),
        b"Subject: m1\r\n\r\nbody\r\n"
    );
    assert_eq!(read(&staged), None);
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["kept", "removed"]);

    // A descriptor opened before the cut is dead: a late write cannot land
    // in the state after it.
    let mut stale = appending.write_all(b"late");
    if stale.is_ok() {
        stale = appending.sync_data();
    }
    assert!(
        stale.is_err(),
        "a write through a pre-cut descriptor landed"
    );
    let mut text = String::new();
    File::open(&kept)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "synced part");

    // Life goes on after the cut, and the next cut keeps what was synced.
    let mut after = OpenOptions::new().append(true).open(&kept).unwrap();
    after.write_all(b", then more").unwrap();
    after.sync_data().unwrap();
    fs.power_cut();
    assert_eq!(read(&kept).unwrap(), b"synced part, then more");

    // Unmounting waits for every open file to close.
    drop((file, appending, other, message, after));
    assert!(fs.stop(), "lossyfs did not unmount and exit at SIGTERM");
    assert!(!mounted_at(&root), "still mounted after SIGTERM");
}

#[test]
fn after_a_power_cut_a_remount_serves_what_survived() {
    if let Some(reason) = cannot_mount() {
        eprintln!("skipped: lossyfs cannot be mounted here: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mnt");
    std::fs::create_dir(&root).unwrap();
    let mounted = lossyfs::mount(&root).unwrap();
    let durable = root.join("durable");
    let mut file = File::create(&durable).unwrap();
    file.write_all(b"on disk").unwrap();
    file.sync_all().unwrap();
    sync_dir(&root);
    std::fs::write(root.join("volatile"), b"in the cache only").unwrap();
    // The process holding a file is "killed" at the cut: its handle dies.
    let lost = mounted.switch.cut();
    assert_eq!(lost.inodes_gone, 1, "{lost:?}");
    let mounted = mounted.remount(&root).unwrap();
    assert!(mounted_at(&root));
    assert_eq!(read(&durable).unwrap(), b"on disk");
    assert_eq!(read(&root.join("volatile")), None);
    assert!(file
        .write_all(b"late")
        .and_then(|()| file.sync_all())
        .is_err());
    drop(file);
    mounted.unmount().unwrap();
    assert!(!mounted_at(&root));
}
