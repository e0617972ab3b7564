//! [`RouteMetrics`]: one route's series, each created the first time it is used
//! (see the pattern in the parent module's doc), and the bound on the close-code
//! label.

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock};

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{Histogram, IntCounter, IntGauge};

use super::{Initiator, Metrics};

/// Application close codes (3000–4999) a route exports by themselves; further
/// distinct ones are counted as `other`. A client picks the code it sends, so
/// without this bound one client could mint a series per code.
pub const APPLICATION_CODES_PER_ROUTE: usize = 20;

/// One route's metric series, created on first use and then resolved once.
pub struct RouteMetrics {
    /// The route's namespace label.
    pub namespace: String,
    /// The route's name label.
    pub route: String,
    pub(crate) all: Metrics,
    active: OnceLock<IntGauge>,
    messages_c2b: OnceLock<IntCounter>,
    messages_b2c: OnceLock<IntCounter>,
    bytes_c2b: OnceLock<IntCounter>,
    bytes_b2c: OnceLock<IntCounter>,
    pings_client: OnceLock<IntCounter>,
    pings_backend: OnceLock<IntCounter>,
    pong_timeouts_client: OnceLock<IntCounter>,
    pong_timeouts_backend: OnceLock<IntCounter>,
    rtt_client: OnceLock<Histogram>,
    rtt_backend: OnceLock<Histogram>,
    duration: OnceLock<Histogram>,
    /// Application close codes already exported by themselves (at most
    /// [`APPLICATION_CODES_PER_ROUTE`]); no allocation until the first one.
    application_codes: Mutex<Vec<u16>>,
}

impl Metrics {
    /// One route's view of the metrics. Creates no series: each appears when the
    /// route first uses it.
    pub fn route(&self, namespace: &str, route: &str) -> RouteMetrics {
        RouteMetrics {
            namespace: namespace.to_owned(),
            route: route.to_owned(),
            all: self.clone(),
            active: OnceLock::new(),
            messages_c2b: OnceLock::new(),
            messages_b2c: OnceLock::new(),
            bytes_c2b: OnceLock::new(),
            bytes_b2c: OnceLock::new(),
            pings_client: OnceLock::new(),
            pings_backend: OnceLock::new(),
            pong_timeouts_client: OnceLock::new(),
            pong_timeouts_backend: OnceLock::new(),
            rtt_client: OnceLock::new(),
            rtt_backend: OnceLock::new(),
            duration: OnceLock::new(),
            application_codes: Mutex::default(),
        }
    }
}

impl RouteMetrics {
    /// The series of `family` with this route's labels and `extra`, resolved into
    /// `cell` on first use.
    fn cell<'a, T: MetricVecBuilder>(
        &self,
        cell: &'a OnceLock<T::M>,
        family: &MetricVec<T>,
        extra: &[&str],
    ) -> &'a T::M {
        cell.get_or_init(|| {
            let mut labels = vec![self.namespace.as_str(), self.route.as_str()];
            labels.extend_from_slice(extra);
            family.with_label_values(&labels)
        })
    }

    /// `wsgate_connections_active`.
    pub fn active(&self) -> &IntGauge {
        self.cell(&self.active, &self.all.connections_active, &[])
    }

    /// `wsgate_messages_total{direction="client_to_backend"}`.
    pub fn messages_c2b(&self) -> &IntCounter {
        let family = &self.all.messages_total;
        self.cell(&self.messages_c2b, family, &["client_to_backend"])
    }

    /// `wsgate_messages_total{direction="backend_to_client"}`.
    pub fn messages_b2c(&self) -> &IntCounter {
        let family = &self.all.messages_total;
        self.cell(&self.messages_b2c, family, &["backend_to_client"])
    }

    /// `wsgate_bytes_total{direction="client_to_backend"}`.
    pub fn bytes_c2b(&self) -> &IntCounter {
        let family = &self.all.bytes_total;
        self.cell(&self.bytes_c2b, family, &["client_to_backend"])
    }

    /// `wsgate_bytes_total{direction="backend_to_client"}`.
    pub fn bytes_b2c(&self) -> &IntCounter {
        let family = &self.all.bytes_total;
        self.cell(&self.bytes_b2c, family, &["backend_to_client"])
    }

    /// `wsgate_pings_sent_total{peer="client"}`.
    pub fn pings_client(&self) -> &IntCounter {
        let family = &self.all.pings_sent_total;
        self.cell(&self.pings_client, family, &["client"])
    }

    /// `wsgate_pings_sent_total{peer="backend"}`.
    pub fn pings_backend(&self) -> &IntCounter {
        let family = &self.all.pings_sent_total;
        self.cell(&self.pings_backend, family, &["backend"])
    }

    /// `wsgate_pong_timeouts_total{peer="client"}`.
    pub fn pong_timeouts_client(&self) -> &IntCounter {
        let family = &self.all.pong_timeouts_total;
        self.cell(&self.pong_timeouts_client, family, &["client"])
    }

    /// `wsgate_pong_timeouts_total{peer="backend"}`.
    pub fn pong_timeouts_backend(&self) -> &IntCounter {
        let family = &self.all.pong_timeouts_total;
        self.cell(&self.pong_timeouts_backend, family, &["backend"])
    }

    /// `wsgate_ping_rtt_seconds{peer="client"}`.
    pub fn rtt_client(&self) -> &Histogram {
        let family = &self.all.ping_rtt_seconds;
        self.cell(&self.rtt_client, family, &["client"])
    }

    /// `wsgate_ping_rtt_seconds{peer="backend"}`.
    pub fn rtt_backend(&self) -> &Histogram {
        let family = &self.all.ping_rtt_seconds;
        self.cell(&self.rtt_backend, family, &["backend"])
    }

    /// `wsgate_connection_duration_seconds`.
    pub fn duration(&self) -> &Histogram {
        let family = &self.all.connection_duration_seconds;
        self.cell(&self.duration, family, &[])
    }

    /// Counts an upgrade attempt's outcome.
    pub fn outcome(&self, outcome: &str) {
        self.all
            .connections_total
            .with_label_values(&[self.namespace.as_str(), &self.route, outcome])
            .inc();
    }

    /// Counts a closed tunnel under its bounded code label.
    pub fn close(&self, code: u16, initiator: Initiator) {
        let code = close_code_label(code, &self.application_codes);
        self.all
            .closes_total
            .with_label_values(&[
                self.namespace.as_str(),
                &self.route,
                code.as_ref(),
                initiator.as_str(),
            ])
            .inc();
    }

    /// Counts a proxied plain HTTP request.
    pub fn http(&self, status: u16) {
        let code = status.to_string();
        self.all
            .http_requests_total
            .with_label_values(&[self.namespace.as_str(), &self.route, &code])
            .inc();
    }

    /// Counts a token check (`ok`, `missing`, `invalid`, `expired`, `forbidden`).
    pub fn auth(&self, result: &str) {
        self.all
            .auth_total
            .with_label_values(&[self.namespace.as_str(), &self.route, result])
            .inc();
    }

    /// Counts a rate-limit action (`close`, `throttle`); rare, so the series is
    /// looked up when it happens and appears only once it has.
    pub fn rate_limited(&self, action: &str) {
        self.all
            .rate_limited_total
            .with_label_values(&[self.namespace.as_str(), &self.route, action])
            .inc();
    }

    /// Counts a fleet-limit refusal (`route`, `client_ip`, `subject`, `budget`).
    pub fn fleet_rejected(&self, scope: &str) {
        self.all
            .fleet_limit_rejections_total
            .with_label_values(&[self.namespace.as_str(), &self.route, scope])
            .inc();
    }

    /// Counts a backend ejected by passive health.
    pub fn ejected(&self) {
        self.all
            .backend_ejections_total
            .with_label_values(&[self.namespace.as_str(), &self.route])
            .inc();
    }

    /// Counts a tunnel moved by the rebalancer.
    pub fn rebalanced(&self) {
        self.all
            .rebalanced_total
            .with_label_values(&[self.namespace.as_str(), &self.route])
            .inc();
    }
}

/// The `code` label of `wsgate_closes_total` (PRODUCT.md, Metrics): a code of the
/// IANA registry by itself; an application code (3000–4999) by itself if it is
/// one of the first [`APPLICATION_CODES_PER_ROUTE`] distinct ones `seen` on the
/// route, else `other`; anything else `invalid`.
///
/// The registry here is 1000–1003 and 1005–1015: 1004 is reserved without a
/// meaning; 1005 (no code in the Close frame), 1006 (no Close frame at all) and
/// 1015 (TLS failure) are never sent on the wire but are what a tunnel's end is
/// recorded as. 1016–2999 are unassigned or reserved for extensions: `invalid`.
pub fn close_code_label(code: u16, seen: &Mutex<Vec<u16>>) -> Cow<'static, str> {
    match code {
        1000..=1003 | 1005..=1015 => Cow::Owned(code.to_string()),
        3000..=4999 => {
            let mut seen = seen.lock().expect("lock");
            if seen.contains(&code) {
                Cow::Owned(code.to_string())
            } else if seen.len() < APPLICATION_CODES_PER_ROUTE {
                seen.push(code);
                Cow::Owned(code.to_string())
            } else {
                Cow::Borrowed("other")
            }
        }
        _ => Cow::Borrowed("invalid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_codes_are_themselves_and_invalid_codes_are_invalid() {
        let seen = Mutex::default();
        for code in [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1011, 1014, 1015] {
            assert_eq!(close_code_label(code, &seen), code.to_string());
        }
        for code in [0, 999, 1004, 1016, 2000, 2999, 5000, 65535] {
            assert_eq!(close_code_label(code, &seen), "invalid", "{code}");
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn application_codes_past_twenty_per_route_are_other() {
        let seen = Mutex::default();
        for code in 3000..3020 {
            assert_eq!(close_code_label(code, &seen), code.to_string());
        }
        assert_eq!(close_code_label(4999, &seen), "other");
        // The first twenty keep their own label.
        assert_eq!(close_code_label(3007, &seen), "3007");
        // Registry codes are not limited by the application bound.
        assert_eq!(close_code_label(1000, &seen), "1000");
    }

    #[test]
    fn a_route_exports_nothing_until_used() {
        let m = Metrics::new();
        let r = m.route("ns", "quiet");
        assert!(!m.render().contains("route=\"quiet\""));
        r.messages_c2b().inc_by(3);
        let text = m.render();
        assert!(text.contains(
            "wsgate_messages_total{direction=\"client_to_backend\",namespace=\"ns\",route=\"quiet\"} 3"
        ));
        assert!(!text.contains("backend_to_client"), "{text}");
        assert!(!text.contains("wsgate_ping_rtt_seconds_bucket"), "{text}");
    }

    #[test]
    fn forgotten_routes_lose_their_series_and_others_keep_theirs() {
        let m = Metrics::new();
        let (a, b) = (m.route("ns", "a"), m.route("ns", "b"));
        for r in [&a, &b] {
            r.active().inc();
            r.duration().observe(2.0);
            r.close(4000, Initiator::Client);
            r.outcome("upgraded");
        }
        let gone = [("ns".to_owned(), "a".to_owned())].into_iter().collect();
        m.forget_routes(&gone);
        let text = m.render();
        assert!(!text.contains("route=\"a\""), "{text}");
        assert!(text.contains("wsgate_closes_total{code=\"4000\",initiator=\"client\",namespace=\"ns\",route=\"b\"} 1"));
        assert!(text
            .contains("wsgate_connection_duration_seconds_count{namespace=\"ns\",route=\"b\"} 1"));
    }
}
