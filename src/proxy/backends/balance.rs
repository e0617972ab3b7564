//! Backend choice: round robin, least connections, consistent hashing and cookie
//! affinity. Returns backends in order of preference, so a failed connect moves on
//! to the next one before anything is sent to the client.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use http::header::HeaderValue;
use http::request::Parts;

use super::BackendSet;
use crate::proxy::route::policy::{Balance, HashKey};
use crate::proxy::route::table::{fnv1a, Route};

/// The backends to try, best first, and whether the response must (re)set the
/// affinity cookie.
pub struct Choice {
    /// Indexes into `route.backends`.
    pub order: Vec<usize>,
    /// The request carried no valid affinity cookie.
    pub set_cookie: bool,
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `Set-Cookie` for the affinity cookie of the backend at `address`.
pub fn affinity_cookie(route: &Route, backend: usize) -> Option<HeaderValue> {
    let Balance::Cookie { name, ttl } = &route.balance else {
        return None;
    };
    let id = route.backends.get(backend)?.affinity_id();
    let max_age = ttl
        .map(|t| format!("; Max-Age={}", t.as_secs()))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={id}; Path=/; HttpOnly; SameSite=Lax{max_age}"
    ))
    .ok()
}

fn query<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn hash_key(parts: &Parts, client: IpAddr, key: &HashKey) -> Option<Vec<u8>> {
    match key {
        HashKey::ClientIp => Some(client.to_string().into_bytes()),
        HashKey::Header(h) => parts.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(c) => cookie(parts, c).map(|v| v.as_bytes().to_vec()),
        HashKey::Query(q) => query(parts, q).map(|v| v.as_bytes().to_vec()),
    }
}

/// Orders the route's backends for this request.
pub fn choose(route: &Route, set: &BackendSet, parts: &Parts, client: IpAddr) -> Choice {
    let eligible: Vec<usize> = (0..route.backends.len())
        .filter(|&i| route.backends[i].weight > 0)
        .collect();
    let eligible = if eligible.is_empty() {
        (0..route.backends.len()).collect()
    } else {
        eligible
    };
    let eligible = set.health.live(route, eligible);
    let mut set_cookie = false;
    let first = match &route.balance {
        // A rebalancing route sends new tunnels where load is lowest, or the
        // clients it moves could land back where they came from.
        Balance::RoundRobin if route.rebalance.is_some() => least_loaded(route, set, &eligible),
        Balance::RoundRobin => round_robin(route, set, &eligible),
        Balance::LeastConnections => least_loaded(route, set, &eligible),
        Balance::ConsistentHash(key) => match hash_key(parts, client, key) {
            Some(k) => rendezvous(route, &eligible, &k),
            None => round_robin(route, set, &eligible),
        },
        Balance::Cookie { name, .. } => {
            // A pinned backend that passive health took out is replaced (and the
            // cookie set anew) like a pinned backend that left the route.
            let pinned = cookie(parts, name)
                .and_then(|v| route.backends.iter().position(|b| b.affinity_id() == v))
                .filter(|i| eligible.contains(i));
            set_cookie = pinned.is_none();
            pinned.or_else(|| round_robin(route, set, &eligible))
        }
    };
    let mut order: Vec<usize> = first.into_iter().collect();
    // Failover in round-robin order from the first choice.
    let start = first
        .and_then(|f| eligible.iter().position(|&i| i == f))
        .unwrap_or(0);
    for k in 0..eligible.len() {
        let i = eligible[(start + k) % eligible.len()];
        if !order.contains(&i) {
            order.push(i);
        }
    }
    Choice { order, set_cookie }
}

/// The backend with the fewest open tunnels per unit of weight.
fn least_loaded(route: &Route, set: &BackendSet, eligible: &[usize]) -> Option<usize> {
    eligible.iter().copied().min_by(|&a, &b| {
        let load = |i: usize| {
            set.load(&route.backends[i].address) as f64 / f64::from(route.backends[i].weight.max(1))
        };
        load(a).total_cmp(&load(b))
    })
}

/// Weighted round robin over a shared counter.
fn round_robin(route: &Route, set: &BackendSet, eligible: &[usize]) -> Option<usize> {
    let total: u64 = eligible
        .iter()
        .map(|&i| u64::from(route.backends[i].weight.max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut n = set.rr.fetch_add(1, Relaxed) % total;
    for &i in eligible {
        let w = u64::from(route.backends[i].weight.max(1));
        if n < w {
            return Some(i);
        }
        n -= w;
    }
    eligible.first().copied()
}

/// Weighted rendezvous hashing: a key keeps its backend while that backend exists,
/// and only keys of a removed backend move.
fn rendezvous(route: &Route, eligible: &[usize], key: &[u8]) -> Option<usize> {
    eligible.iter().copied().max_by(|&a, &b| {
        let score = |i: usize| {
            let b = &route.backends[i];
            let mut bytes = key.to_vec();
            bytes.push(0);
            bytes.extend_from_slice(b.address.as_bytes());
            // Map the hash to (0,1) and weight it: -w / ln(u).
            let u = ((fnv1a(&bytes) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            -f64::from(b.weight.max(1)) / u.ln()
        };
        score(a).total_cmp(&score(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(balance: Balance, backends: &[(&str, u32)]) -> Route {
        Route::for_test("r", balance, backends)
    }

    fn parts(uri: &str, cookie: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn weighted_round_robin() {
        let r = route(Balance::RoundRobin, &[("a:1", 3), ("b:1", 1), ("c:1", 0)]);
        let rt = BackendSet::default();
        let picks: Vec<_> = (0..8)
            .map(|_| choose(&r, &rt, &parts("/", None), [127, 0, 0, 1].into()).order[0])
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
        assert!(!picks.contains(&2));
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little() {
        let key = HashKey::Query("room".into());
        let r = route(
            Balance::ConsistentHash(key.clone()),
            &[("a:1", 1), ("b:1", 1), ("c:1", 1)],
        );
        let rt = BackendSet::default();
        let pick = |r: &Route, room: u32| {
            let i = choose(
                r,
                &rt,
                &parts(&format!("/?room={room}"), None),
                [127, 0, 0, 1].into(),
            )
            .order[0];
            r.backends[i].address.clone()
        };
        let before: Vec<_> = (0..300).map(|k| pick(&r, k)).collect();
        assert_eq!(before, (0..300).map(|k| pick(&r, k)).collect::<Vec<_>>());
        let smaller = route(Balance::ConsistentHash(key), &[("a:1", 1), ("b:1", 1)]);
        for (k, b) in before.iter().enumerate() {
            if &**b != "c:1" {
                assert_eq!(
                    &pick(&smaller, k as u32),
                    b,
                    "a key moved although its backend stayed"
                );
            }
        }
    }

    #[test]
    fn cookie_affinity_honoured_and_set() {
        let r = route(
            Balance::Cookie {
                name: "aff".into(),
                ttl: None,
            },
            &[("a:1", 1), ("b:1", 1)],
        );
        let rt = BackendSet::default();
        let first = choose(&r, &rt, &parts("/", None), [127, 0, 0, 1].into());
        assert!(first.set_cookie);
        let id = r.backends[1].affinity_id();
        for _ in 0..4 {
            let c = choose(
                &r,
                &rt,
                &parts("/", Some(&format!("x=1; aff={id}"))),
                [127, 0, 0, 1].into(),
            );
            assert_eq!((c.order[0], c.set_cookie), (1, false));
        }
        let stale = choose(
            &r,
            &rt,
            &parts("/", Some("aff=0000")),
            [127, 0, 0, 1].into(),
        );
        assert!(stale.set_cookie);
    }
}
