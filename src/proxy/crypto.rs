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
