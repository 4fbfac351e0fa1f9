//! understudy: the replication and failover sidecar of a clustered job
//! scheduler. See ARCHITECTURE.md for the map of modules.

pub mod certs;
pub mod config;
pub mod model;
pub mod store;
pub mod transport;
pub mod wire;
