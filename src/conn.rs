//! What a client connection is, as both the server that accepts it and the proxy that serves its
//! requests see it: where it comes from ([`ConnInfo`]), the places it holds under the connection
//! caps ([`ConnPermit`]), and which "address" a peer counts as for the per-address limits
//! ([`address_key`]). It sits below both `server` and `proxy`, so that neither imports the other
//! for it. [`stall`] holds the write-stall guard both use, on clients' connections and on the
//! gateway's own connections to Faspex.

pub mod stall;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// What the server knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `"https"` on the TLS listener, `"http"` on the plain one.
    pub scheme: &'static str,
}

/// A connection's places under `server.max_connections` and `server.max_connections_per_ip`,
/// shared by the connection task and any tunnel it upgrades into. The server puts it in the
/// extensions of each HTTP/1.1 request that carries `Upgrade` (only those can become tunnels);
/// the places are freed when the last holder is gone. The proxy only holds it: what the places
/// are is the server's business.
#[derive(Clone)]
pub struct ConnPermit {
    _places: Arc<dyn Send + Sync>,
}

impl ConnPermit {
    /// Share `places` among the holders of the connection.
    pub fn new(places: impl Send + Sync + 'static) -> Self {
        ConnPermit {
            _places: Arc::new(places),
        }
    }
}

/// What one address's connections and requests are counted under: an IPv4 address (an
/// IPv4-mapped IPv6 peer counts as its IPv4 address) or an IPv6 prefix of `ipv6_prefix_len` bits.
pub fn address_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                // Keep the leading `ipv6_prefix_len` bits. The config allows 1..=128; anything
                // outside is clamped rather than trusted, so the shift cannot overflow.
                let len = u32::from(ipv6_prefix_len.clamp(1, 128));
                let mask = u128::MAX << (128 - len);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}
