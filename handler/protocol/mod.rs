//! The Azure Functions custom-handler protocol and the Event Grid events it carries.

pub mod event_grid;
pub mod invocation;
