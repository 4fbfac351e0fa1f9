//! understudy: the replication and failover sidecar of a clustered job
//! scheduler. See ARCHITECTURE.md for the map of modules.

pub mod config;
pub mod control;
pub mod model;
pub mod store;
