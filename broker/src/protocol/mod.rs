//! The sans-I/O protocol layer: bytes in, messages out, no sockets.

pub mod batch;
pub mod frame;
pub mod versions;
