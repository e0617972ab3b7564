//! What a tunnel carries: the compiled route table (what `crate::compile` builds
//! from files or the Kubernetes API) and the policies it holds. Every stage reads
//! it; none changes it.

pub mod auth;
pub mod backend_tls;
pub mod gateway;
pub mod matching;
pub mod policy;
pub mod table;
