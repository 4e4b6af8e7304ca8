//! The command-line client (binary only): `spate topic ...`, `spate produce`,
//! `spate consume`, `spate group ...`, `spate broker describe`, following Kafka's console
//! tools and kcat. Every command exits 0 on
//! success and 1 with one clear line on stderr otherwise.

pub mod broker;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;

use spate::client::{ClientError, Connection};

pub const DEFAULT_BROKER: &str = "127.0.0.1:7070";

pub fn connect(broker: &str) -> Result<Connection, String> {
    Connection::connect(broker, "spate-cli").map_err(describe)
}

pub fn describe(error: ClientError) -> String {
    error.to_string()
}
