//! `spec.fleetLimits`: limits that hold across every wsgate replica, counted in the
//! store named by `--limits-store` (Redis). The per-replica `limits` still apply.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// Caps and budgets shared by all replicas; `0` = none. A route with
/// `fleetLimits` is refused unless wsgate runs with `--limits-store`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetLimits {
    /// Open tunnels of the route across the fleet; more get 503.
    #[serde(default)]
    pub max_connections: u64,
    /// Open tunnels per effective client address (IPv6 by its /64) across the
    /// fleet; more get 429 with `Retry-After`.
    #[serde(default, rename = "maxConnectionsPerClientIP")]
    pub max_connections_per_client_ip: u64,
    /// Open tunnels per JWT `sub` (stored hashed) across the fleet; more get 429
    /// with `Retry-After`. Needs `auth`.
    #[serde(default)]
    pub max_connections_per_subject: u64,
    /// Messages and bytes, client to backend, per subject or for the whole route,
    /// per window, across the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_budget: Option<MessageBudget>,
}

/// A fleet-wide budget of client-to-backend data messages and payload bytes per
/// window. It is never exceeded: replicas take leases of it from the store.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageBudget {
    /// `Subject` (one budget per JWT `sub`; needs `auth`) or `Route` (one for all).
    #[serde(default)]
    pub scope: BudgetScope,
    /// Data messages per window; `0` = no message budget.
    #[serde(default)]
    pub messages: u64,
    /// Payload bytes per window; `0` = no byte budget.
    #[serde(default)]
    pub bytes: u64,
    /// The window (fixed, aligned to the store's clock).
    #[serde(default = "default_window")]
    pub window: Duration,
    /// What a tunnel over the budget gets: `Close` (1008 to both sides).
    #[serde(default)]
    pub on_exceed: BudgetExceed,
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

impl Default for MessageBudget {
    fn default() -> Self {
        MessageBudget {
            scope: BudgetScope::default(),
            messages: 0,
            bytes: 0,
            window: default_window(),
            on_exceed: BudgetExceed::default(),
        }
    }
}

/// Whose budget a message is charged to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum BudgetScope {
    /// One budget per JWT subject.
    #[default]
    Subject,
    /// One budget for the whole route.
    Route,
}

/// What happens to a tunnel over its fleet budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum BudgetExceed {
    /// Close 1008 (Policy Violation) to both sides, like `limits.onExceed: Close`.
    #[default]
    Close,
}
