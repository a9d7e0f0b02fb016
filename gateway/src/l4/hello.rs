//! Reading a TLS ClientHello without terminating TLS: enough of it to route by SNI
//! (passthrough, or which certificate and client-certificate settings a terminated
//! connection gets). A pure parser over the bytes the client sent first; the caller
//! peeks them (they stay in the stream for whoever handles the connection next).

/// The most a ClientHello may take, across records. Real ones are under 2 KiB (a few
/// KiB with post-quantum key shares); more is refused.
pub const MAX_HELLO: usize = 16 * 1024;

/// What a ClientHello says that routing needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, lower-cased, without a trailing dot; `None` when the client
    /// sent none.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// The outcome of reading the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The whole ClientHello is there.
    Hello(ClientHello),
    /// Not enough bytes yet: read until there are this many (in all, from the start).
    Need(usize),
    /// Not a TLS ClientHello (or a malformed one, or longer than [`MAX_HELLO`]).
    NotTls(&'static str),
}

/// Reads the ClientHello at the start of `buf` (the connection's first bytes).
pub fn parse(buf: &[u8]) -> Parse {
    // Gather the handshake bytes from as many records as it takes.
    let mut hs: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        if buf.len() < at + 5 {
            return Parse::Need(at + 5);
        }
        if buf[at] != 0x16 {
            return Parse::NotTls("not a TLS handshake record");
        }
        if buf[at + 1] != 0x03 {
            return Parse::NotTls("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        if len == 0 {
            return Parse::NotTls("an empty TLS record");
        }
        let end = at + 5 + len;
        if end > MAX_HELLO + 5 * 4 {
            return Parse::NotTls("a ClientHello longer than the limit");
        }
        if buf.len() < end {
            return Parse::Need(end);
        }
        hs.extend_from_slice(&buf[at + 5..end]);
        at = end;
        if hs.len() >= 4 {
            if hs[0] != 0x01 {
                return Parse::NotTls("the first handshake message is not a ClientHello");
            }
            let body = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
            if body > MAX_HELLO {
                return Parse::NotTls("a ClientHello longer than the limit");
            }
            if hs.len() >= 4 + body {
                return match hello_body(&hs[4..4 + body]) {
                    Some(h) => Parse::Hello(h),
                    None => Parse::NotTls("a malformed ClientHello"),
                };
            }
        }
    }
}

/// A cursor over a byte slice; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn hello_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello); // no extensions (TLS 1.2 and below may omit them)
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            0 => hello.server_name = server_name(data),
            16 => {
                let mut list = Reader(Reader(data).vec16()?);
                while !list.0.is_empty() {
                    hello.alpn.push(list.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// The `host_name` of a `server_name` extension.
fn server_name(data: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok()?;
            let name = name.strip_suffix('.').unwrap_or(name);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            return Some(name.to_ascii_lowercase());
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls for `name`, offering `alpn`.
    fn hello_bytes(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let bytes = hello_bytes("Db.Example.COM", &[b"h2", b"http/1.1"]);
        assert_eq!(
            parse(&bytes),
            Parse::Hello(ClientHello {
                server_name: Some("db.example.com".into()),
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            })
        );
    }

    #[test]
    fn asks_for_more_until_the_hello_is_whole() {
        let bytes = hello_bytes("a.example.com", &[]);
        assert_eq!(parse(&bytes[..3]), Parse::Need(5));
        assert_eq!(parse(&bytes[..5]), Parse::Need(bytes.len()));
        assert_eq!(parse(&bytes[..bytes.len() - 1]), Parse::Need(bytes.len()));
        assert!(matches!(parse(&bytes), Parse::Hello(_)));
    }

    #[test]
    fn a_hello_split_over_two_records_is_read() {
        let bytes = hello_bytes("split.example.com", &[]);
        let payload = &bytes[5..];
        let (a, b) = payload.split_at(40);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(parse(&two[..5 + 40]), Parse::Need(5 + 40 + 5));
        match parse(&two) {
            Parse::Hello(h) => assert_eq!(h.server_name.as_deref(), Some("split.example.com")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_http_and_garbage_are_not_tls() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parse::NotTls(_)));
        assert!(matches!(
            parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
            Parse::NotTls(_)
        ));
        // A record that claims to be huge.
        assert!(matches!(parse(&[0x16, 0x03, 0x01, 0xff, 0xff]), Parse::NotTls(_)));
        // Truncated inside the body: lengths that run past the end.
        let mut bad = hello_bytes("x.example.com", &[]);
        let n = bad.len();
        bad[n - 20] = 0xff;
        bad[n - 21] = 0xff;
        assert!(!matches!(parse(&bad), Parse::Need(_)));
    }

    #[test]
    fn a_hello_without_sni_has_no_name() {
        // An IP address is never sent as SNI.
        let bytes = hello_bytes("127.0.0.1", &[]);
        assert_eq!(parse(&bytes), Parse::Hello(ClientHello::default()));
    }
}
