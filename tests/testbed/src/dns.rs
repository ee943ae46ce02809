//! An authoritative name server on loopback (UDP and TCP, one port)
//! answering from a fixed zone, so tests resolve names without the
//! internet. Unknown names get NXDOMAIN, known names without the asked
//! type an empty NOERROR answer. Stops when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NAPTR, SRV};
use hickory_proto::rr::{Name, RData, RecordType};

/// How often the serving threads look whether they should stop.
const POLL: Duration = Duration::from_millis(50);

/// One resource record of the zone.
#[derive(Debug, Clone)]
pub struct Record {
    /// Owner name; case and a trailing dot do not matter.
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// The record types the server knows.
#[derive(Debug, Clone)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Preference, exchange ("." for a null MX).
    Mx(u16, String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Naptr {
        order: u16,
        preference: u16,
        flags: String,
        services: String,
        regexp: String,
        /// "." when the record has a regexp instead.
        replacement: String,
    },
    Cname(String),
}

/// The TTL of records made by the shorthands below.
const TTL: u32 = 60;

impl Record {
    pub fn a(name: &str, address: [u8; 4]) -> Record {
        Record::of(name, Data::A(address.into()))
    }

    pub fn aaaa(name: &str, address: Ipv6Addr) -> Record {
        Record::of(name, Data::Aaaa(address))
    }

    pub fn mx(name: &str, preference: u16, exchange: &str) -> Record {
        Record::of(name, Data::Mx(preference, exchange.into()))
    }

    pub fn srv(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
        let target = target.into();
        Record::of(
            name,
            Data::Srv {
                priority,
                weight,
                port,
                target,
            },
        )
    }

    /// An NAPTR record; `replacement` is "." when `regexp` is used.
    pub fn naptr(
        name: &str,
        (order, preference): (u16, u16),
        flags: &str,
        services: &str,
        regexp: &str,
        replacement: &str,
    ) -> Record {
        Record::of(
            name,
            Data::Naptr {
                order,
                preference,
                flags: flags.into(),
                services: services.into(),
                regexp: regexp.into(),
                replacement: replacement.into(),
            },
        )
    }

    pub fn cname(name: &str, target: &str) -> Record {
        Record::of(name, Data::Cname(target.into()))
    }

    /// `data` at `name`, with the usual TTL.
    fn of(name: &str, data: Data) -> Record {
        Record {
            name: name.into(),
            ttl: TTL,
            data,
        }
    }

    fn record_type(&self) -> RecordType {
        match self.data {
            Data::A(_) => RecordType::A,
            Data::Aaaa(_) => RecordType::AAAA,
            Data::Mx(..) => RecordType::MX,
            Data::Srv { .. } => RecordType::SRV,
            Data::Naptr { .. } => RecordType::NAPTR,
            Data::Cname(_) => RecordType::CNAME,
        }
    }

    fn to_wire(&self) -> Option<hickory_proto::rr::Record> {
        let data = match &self.data {
            Data::A(address) => RData::A(A(*address)),
            Data::Aaaa(address) => RData::AAAA(AAAA(*address)),
            Data::Mx(preference, exchange) => RData::MX(MX::new(*preference, name(exchange)?)),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
            Data::Naptr {
                order,
                preference,
                flags,
                services,
                regexp,
                replacement,
            } => RData::NAPTR(NAPTR::new(
                *order,
                *preference,
                flags.as_bytes().into(),
                services.as_bytes().into(),
                regexp.as_bytes().into(),
                name(replacement)?,
            )),
            Data::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        };
        Some(hickory_proto::rr::Record::from_rdata(
            name(&self.name)?,
            self.ttl,
            data,
        ))
    }
}

/// A fully qualified name from zone text.
fn name(text: &str) -> Option<Name> {
    let text = text.trim_end_matches('.');
    Name::from_ascii(format!("{text}.")).ok()
}

/// The zone's names compare without case and trailing dot.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The running server; stops when dropped.
pub struct NameServer {
    /// Where it answers, UDP and TCP.
    pub address: SocketAddr,
    /// Every question asked so far, as "TYPE name" (lower case, no
    /// trailing dot): tests assert what was, or was not, looked up.
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NameServer {
    /// Serves `zone` on a free loopback port.
    pub fn start(zone: Vec<Record>) -> NameServer {
        let (udp, tcp) = bind_pair();
        udp.set_read_timeout(Some(POLL)).expect("a read timeout");
        tcp.set_nonblocking(true).expect("a non-blocking listener");
        let address = udp.local_addr().expect("its address");
        let zone = Arc::new(zone);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = (zone.clone(), asked.clone(), stop.clone());
        std::thread::spawn(move || serve_udp(udp, shared));
        let shared = (zone, asked.clone(), stop.clone());
        std::thread::spawn(move || serve_tcp(tcp, shared));
        NameServer {
            address,
            asked,
            stop,
        }
    }

    /// The questions asked so far, in order, as "TYPE name".
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What both serving threads share: the zone, the questions, the stop flag.
type Shared = (Arc<Vec<Record>>, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>);

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
        let port = udp.local_addr().expect("its address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no free loopback port for UDP and TCP");
}

fn serve_udp(socket: UdpSocket, (zone, asked, stop): Shared) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        if let Some(answer) = answer(&buffer[..length], &zone, &asked) {
            let _ = socket.send_to(&answer, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, (zone, asked, stop): Shared) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client may keep its connection open for more queries.
                let (zone, asked) = (zone.clone(), asked.clone());
                std::thread::spawn(move || answer_stream(stream, &zone, &asked));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Answers the length-prefixed queries of one TCP connection (RFC 1035
/// §4.2.2) until the client closes it.
fn answer_stream(
    mut stream: TcpStream,
    zone: &[Record],
    asked: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    loop {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length)?;
        let mut query = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut query)?;
        if let Some(answer) = answer(&query, zone, asked) {
            stream.write_all(&(answer.len() as u16).to_be_bytes())?;
            stream.write_all(&answer)?;
        }
    }
}

/// The response to one query, or None if it is not one.
fn answer(query: &[u8], zone: &[Record], asked: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let asked_name = question.name().to_ascii();
    let asked_type = question.query_type();
    asked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!(
            "{asked_type} {}",
            asked_name.trim_end_matches('.').to_lowercase()
        ));
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question);
    // Follow CNAMEs within the zone, as an authoritative server does.
    let mut owner = asked_name;
    for _ in 0..8 {
        let mut records = zone
            .iter()
            .filter(|r| same_name(&r.name, &owner))
            .peekable();
        if records.peek().is_none() {
            if response.answers.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            break;
        }
        let records: Vec<&Record> = records.collect();
        let alias = records.iter().find_map(|r| match &r.data {
            Data::Cname(target) if asked_type != RecordType::CNAME => Some(target.clone()),
            _ => None,
        });
        let matching = records.iter().filter(|r| {
            r.record_type() == asked_type
                || (alias.is_some() && r.record_type() == RecordType::CNAME)
        });
        response.add_answers(matching.filter_map(|r| r.to_wire()));
        match alias {
            Some(target) => owner = target,
            None => break,
        }
    }
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;

    use super::*;

    fn question(name: &str, record_type: RecordType) -> Vec<u8> {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_str(name).unwrap(), record_type));
        query.to_vec().unwrap()
    }

    fn over_udp(server: &NameServer, name: &str, record_type: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
            .send_to(&question(name, record_type), server.address)
            .unwrap();
        let mut buffer = [0u8; 4096];
        let length = socket.recv(&mut buffer).unwrap();
        Message::from_vec(&buffer[..length]).unwrap()
    }

    fn over_tcp(server: &NameServer, name: &str, record_type: RecordType) -> Message {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let query = question(name, record_type);
        stream
            .write_all(&(query.len() as u16).to_be_bytes())
            .unwrap();
        stream.write_all(&query).unwrap();
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).unwrap();
        let mut answer = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).unwrap();
        Message::from_vec(&answer).unwrap()
    }

    #[test]
    fn answers_nxdomain_no_data_and_follows_cnames_over_udp_and_tcp() {
        let server = NameServer::start(vec![
            Record::a("host.test", [127, 0, 0, 7]),
            Record::cname("alias.test", "HOST.test."),
        ]);
        for ask in [over_udp, over_tcp] {
            let found = ask(&server, "alias.test.", RecordType::A);
            assert_eq!(found.metadata.response_code, ResponseCode::NoError);
            let data: Vec<&RData> = found.answers.iter().map(|r| &r.data).collect();
            assert_eq!(
                data,
                [
                    &RData::CNAME(CNAME(Name::from_str("host.test.").unwrap())),
                    &RData::A(A([127, 0, 0, 7].into())),
                ]
            );
            let no_data = ask(&server, "host.test.", RecordType::MX);
            assert_eq!(no_data.metadata.response_code, ResponseCode::NoError);
            assert!(no_data.answers.is_empty());
            let unknown = ask(&server, "nowhere.test.", RecordType::A);
            assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
        }
        assert_eq!(
            server.asked()[..3],
            ["A alias.test", "MX host.test", "A nowhere.test"]
        );
    }
}
