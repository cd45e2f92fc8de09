//! Live forecast accuracy: actuals scored against each store's active model, per-store error
//! statistics and drift verdicts, for `/partitions`, the metrics and the drift topic.
//!
//! | module | owns |
//! |---|---|
//! | [`stats`] | one store's recent error (moving averages) and its verdict |
//! | [`table`] | every tracked store's row, compact; pages sorted by drift |
//! | [`report`] | the JSON of a store's accuracy (`/partitions`, drift records) |
//! | [`actuals`] | the actor that reads actuals and owns the table, and its handle |

pub mod actuals;
pub mod report;
pub mod stats;
pub mod table;

pub use actuals::AccuracyHandle;
