//! A tiny authoritative DNS responder on loopback UDP, for the discovery plane's
//! re-resolution tests: it answers A queries for every name with the addresses the test
//! sets (TTL 1 s), AAAA with no records, and SERVFAIL for everything while failing.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the responder answers.
#[derive(Debug, Clone)]
enum Answer {
    Addresses(Vec<Ipv4Addr>),
    ServFail,
}

/// A running responder. Dropping it stops it.
pub struct TestDns {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Starts a responder on `127.0.0.1:0` answering with `addrs`.
    pub async fn start(addrs: &[Ipv4Addr]) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the test DNS server");
        let addr = socket.local_addr().expect("local address of a bound socket");
        let answer = Arc::new(Mutex::new(Answer::Addresses(addrs.to_vec())));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let current = a.lock().clone();
                if let Some(reply) = respond(&buf[..n], &current) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns {
            addr,
            answer,
            queries,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers with `addrs` from now on.
    pub fn set(&self, addrs: &[Ipv4Addr]) {
        *self.answer.lock() = Answer::Addresses(addrs.to_vec());
    }

    /// Answers SERVFAIL from now on.
    pub fn fail(&self) {
        *self.answer.lock() = Answer::ServFail;
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query, or `None` for a packet that is not a query.
fn respond(query: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += 1 + usize::from(query[at]);
    }
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let question = &query[12..at + 5];
    let records: Vec<Ipv4Addr> = match answer {
        Answer::Addresses(a) if qtype == 1 => a.clone(),
        _ => Vec::new(),
    };
    let rcode = match answer {
        Answer::ServFail => 2,
        Answer::Addresses(_) => 0,
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied; RA; rcode.
    out.push(0x84 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
