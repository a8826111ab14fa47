//! Command-line helpers of the `handler` binary besides running the functions.

pub mod summary;
