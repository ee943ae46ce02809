//! `lossyfs MOUNTPOINT`: mounts an empty lossy file system (as root) and
//! serves it until SIGTERM or SIGINT. Each SIGUSR1 is a power cut: every
//! write, creation, rename and removal not made durable by an fsync is
//! lost, and a line on stdout says what.

use std::io::Write;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), None) = (args.next(), args.next()) else {
        eprintln!("usage: lossyfs MOUNTPOINT");
        return ExitCode::from(2);
    };
    // Block the signals before any thread starts, so every thread
    // inherits the mask and only `wait` below receives them.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(signal);
    }
    if let Err(error) = signals.thread_block() {
        eprintln!("lossyfs: cannot block signals: {error}");
        return ExitCode::FAILURE;
    }
    let mounted = match lossyfs::mount(mountpoint.as_ref()) {
        Ok(mounted) => mounted,
        Err(error) => {
            eprintln!(
                "lossyfs: cannot mount {}: {error}",
                mountpoint.to_string_lossy()
            );
            return ExitCode::FAILURE;
        }
    };
    println!("mounted {}", mountpoint.to_string_lossy());
    let _ = std::io::stdout().flush();
    loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) => {
                let lost = mounted.switch.cut();
                println!(
                    "power cut: {} files reverted ({} bytes dropped), {} folders reverted, {} inodes gone",
                    lost.files_reverted, lost.bytes_dropped, lost.folders_reverted, lost.inodes_gone
                );
                let _ = std::io::stdout().flush();
            }
            Ok(_) => break,
            Err(error) => {
                eprintln!("lossyfs: waiting for signals: {error}");
                break;
            }
        }
    }
    match mounted.unmount() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lossyfs: cannot unmount: {error}");
            ExitCode::FAILURE
        }
    }
}
