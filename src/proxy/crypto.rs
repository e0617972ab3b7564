//! The one TLS crypto provider every rustls config in wsgate uses: ring (which the
//! JWT checks use too), with the key-exchange groups in a fixed order. X25519 comes
//! first, as browsers offer it, then P-256 and P-384. rustls's own defaults have
//! moved between releases (0.23.48 puts a P-384 hybrid or plain share first), which
//! would change what the backend TLS client offers, and what a handshake costs, on
//! a lockfile update; stating the order here keeps it what it is.

use std::sync::Arc;

use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
use rustls::crypto::CryptoProvider;

/// ring, with X25519, P-256 and P-384 in that order.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    Arc::new(p)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::proxy::route::backend_tls::{server_name, BackendTls, Material};

    /// The ClientHello the backend TLS client writes: (cipher suites, extensions by type).
    fn backend_client_hello() -> (Vec<u16>, HashMap<u16, Vec<u8>>) {
        let tls = BackendTls::new(
            &Material::default(),
            Some(server_name("backend.test").unwrap()),
            HashMap::new(),
        )
        .unwrap();
        let mut conn = rustls::ClientConnection::new(
            tls.config().clone(),
            server_name("backend.test").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        // record header (5), handshake header (4), version (2), random (32)
        assert_eq!(
            (out[0], out[5]),
            (22, 1),
            "a handshake record with a ClientHello"
        );
        let body = &out[9..];
        let mut at = 34;
        let u16_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        at += 1 + body[at] as usize; // session id
        let suites_len = u16_at(at) as usize;
        let suites = (0..suites_len / 2)
            .map(|i| u16_at(at + 2 + 2 * i))
            .collect();
        at += 2 + suites_len;
        at += 1 + body[at] as usize; // compression methods
        let end = at + 2 + u16_at(at) as usize;
        at += 2;
        let mut extensions = HashMap::new();
        while at < end {
            let (kind, len) = (u16_at(at), u16_at(at + 2) as usize);
            extensions.insert(kind, body[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        (suites, extensions)
    }

    /// What the backend TLS client offers stays what it is, whatever a rustls update
    /// changes in its defaults: a backend (or the middlebox before it) sees the same
    /// ClientHello, and a handshake costs the same. Numbers from the IANA TLS registry.
    #[test]
    fn the_backend_client_offer_is_pinned() {
        let (suites, ext) = backend_client_hello();
        assert_eq!(
            suites,
            // TLS 1.3: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; TLS 1.2, ECDSA then
            // RSA: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; renegotiation info SCSV
            [0x1302, 0x1301, 0x1303, 0xc02c, 0xc02b, 0xcca9, 0xc030, 0xc02f, 0xcca8, 0x00ff,]
        );
        // supported_groups: X25519, P-256, P-384
        assert_eq!(ext[&10], [0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
        // supported_versions: TLS 1.3, then 1.2
        assert_eq!(ext[&43], [4, 0x03, 0x04, 0x03, 0x03]);
        // key_share: one share, X25519 (32 bytes)
        let share = &ext[&51];
        assert_eq!(&share[..6], [0, 36, 0x00, 0x1d, 0, 32]);
        assert_eq!(share.len(), 38);
        // ALPN: http/1.1
        assert_eq!(ext[&16], b"\x00\x09\x08http/1.1");
    }

    #[test]
    fn x25519_is_offered_first_then_p256_and_p384() {
        let names: Vec<_> = super::provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            names,
            [
                rustls::NamedGroup::X25519,
                rustls::NamedGroup::secp256r1,
                rustls::NamedGroup::secp384r1
            ]
        );
    }
}
