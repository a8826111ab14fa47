//! The Azure Functions custom-handler protocol, the Event Grid events it carries, and the one
//! type of HTTP answer (`reply`) given both under the host and in `serve`.

pub mod event_grid;
pub mod invocation;
pub mod reply;
