//! understudy: the replication and failover sidecar of a clustered job
//! scheduler. See ARCHITECTURE.md for the map of modules.

pub mod config;
pub mod model;
pub mod store;
pub mod workload;
pub mod capture;
pub mod agent;
pub mod replication;
pub mod status;
pub mod bench;
pub mod localcluster;
