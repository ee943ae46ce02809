//! Readiness for systemd (`Type=notify`, see `examples/mailcall.service`):
//! `READY=1` once the listeners are bound, `STOPPING=1` when shutting
//! down, sent to the datagram socket `$NOTIFY_SOCKET` names, as
//! sd_notify(3) does. Without that variable (not under systemd) nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send(&socket, state) {
        tracing::warn!(socket = ?socket, "cannot tell systemd {state:?}: {error}");
    }
}

fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    // A leading `@` names a socket in the abstract namespace.
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &address)?;
        }
        None => {
            sender.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}
