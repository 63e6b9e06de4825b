//! The sans-I/O protocol layer: bytes in, messages out, no sockets.

pub mod batch;
pub mod fetch_frame;
pub mod frame;
pub mod versions;
