//! Spate's one integration-test binary. Modules group tests by subsystem; every test goes
//! through the small helpers in `support` so it reads as data.

mod assignors;
mod broker_lifecycle;
mod cli;
mod cluster;
mod crash_soak;
mod disk_faults;
mod fault_proxy;
mod fuzz_corpora;
mod groups;
mod hostile;
mod kafka;
mod kafka_tools;
mod memory;
mod metrics;
mod replication;
mod server;
mod storage_faults;
mod storage_log;
mod storage_model;
mod storage_recovery;
mod support;
mod topic_admin;
