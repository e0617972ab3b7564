//! Choosing and reaching a backend: the order to try a route's backends in,
//! passive health, and moving tunnels after a scale-out.

pub(crate) mod balance;
pub(crate) mod health;
pub(crate) mod rebalance;
