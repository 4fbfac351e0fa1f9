//! understudy: the replication and failover sidecar of a clustered job
//! scheduler. See ARCHITECTURE.md for the map of modules.

pub mod agent;
pub mod bench;
pub mod capture;
pub mod certs;
pub mod config;
pub mod control;
pub mod divergence;
pub mod drill;
pub mod hooks;
pub mod localcluster;
pub mod model;
pub mod progress;
pub mod replication;
pub mod status;
pub mod store;
pub mod tables;
pub mod tables_cmd;
pub mod transport;
pub mod verify;
pub mod wire;
pub mod workload;
