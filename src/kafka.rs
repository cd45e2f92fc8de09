//! Kafka plumbing: the consumer and its rebalances, the producer and its acknowledgements,
//! the offset tracker that connects the two, the commits of at-least-once mode and the
//! transactions of exactly-once mode.

pub mod client_log;
pub mod commit;
pub mod connection;
pub mod consumer;
pub mod headers;
pub mod offsets;
pub mod position;
pub mod producer;
pub mod transaction;
