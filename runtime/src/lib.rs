//! The compute that runs next to Runnel's partitions: the wasmtime host, transforms, connectors
//! and the SQL engine.
//!
//! Nothing lives here yet: the broker (`runnel-broker`) lands first, and this crate is where
//! the WASM and SQL work attaches (see `docs/ARCHITECTURE.md`). It is kept in the workspace so
//! the layout that later issues build on is fixed from the start.
