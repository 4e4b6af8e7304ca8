//! Consumer groups: members of a group share the partitions of the topics they subscribe
//! to. `assignor`: pure partition assignment strategies (range, round-robin, sticky).

pub mod assignor;
