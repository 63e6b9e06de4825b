//! The precompiled-module cache: a module is validated and compiled once, then loaded from
//! disk on every later deploy or restart.
//!
//! A file is `<sha256 of the wasm>-<engine fingerprint>.cwasm` holding wasmtime's serialized
//! module followed by the SHA-256 of those bytes. The fingerprint changes with the wasmtime
//! version and the engine configuration, so a stale artifact is never even opened; the
//! trailer catches torn or corrupted files. Any failure is a cache miss: the caller compiles.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

const DIGEST_BYTES: usize = 32;

#[derive(Debug)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
    fingerprint: String,
}

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl ModuleCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self { dir: dir.to_path_buf(), fingerprint: format!("{:016x}", hasher.finish()) })
    }

    pub(crate) fn path(&self, wasm_digest: &[u8; DIGEST_BYTES]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", hex(wasm_digest), self.fingerprint))
    }

    /// The cached module for `wasm_digest`, or `None` (a miss, or a file that failed its
    /// checks: it is removed so the next store replaces it).
    pub(crate) fn load(&self, engine: &Engine, wasm_digest: &[u8; DIGEST_BYTES]) -> Option<Module> {
        let path = self.path(wasm_digest);
        let file = match fs::read(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "module cache: cannot read; recompiling");
                return None;
            }
        };
        match verified_artifact(&file) {
            Some(artifact) => match deserialize_own_artifact(engine, artifact) {
                Ok(module) => return Some(module),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %error, "module cache: artifact refused by wasmtime; recompiling");
                }
            },
            None => {
                tracing::warn!(path = %path.display(), "module cache: checksum mismatch (torn or corrupted file); recompiling");
            }
        }
        let _ = fs::remove_file(&path);
        None
    }

    /// Writes `module` for `wasm_digest`: to a temporary file, then renamed into place, so a
    /// reader sees either no file or a whole one (and the trailer catches anything else).
    pub(crate) fn store(&self, module: &Module, wasm_digest: &[u8; DIGEST_BYTES]) -> io::Result<()> {
        let mut file = module.serialize().map_err(|error| io::Error::other(error.to_string()))?;
        let checksum = Sha256::digest(&file);
        file.extend_from_slice(&checksum);
        let path = self.path(wasm_digest);
        let temp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            hex(wasm_digest),
            std::process::id(),
            TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&temp, &file)?;
        fs::rename(&temp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }
}

/// The artifact inside a cache file whose SHA-256 trailer matches, else `None`.
fn verified_artifact(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(DIGEST_BYTES)?;
    let (artifact, trailer) = file.split_at(split);
    (Sha256::digest(artifact).as_slice() == trailer).then_some(artifact)
}

/// The only `unsafe` of the crate.
#[allow(unsafe_code)]
fn deserialize_own_artifact(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts that `artifact` is machine code wasmtime produced;
    // it checks the wasmtime version and engine configuration, not the code itself. Here
    // `artifact` comes only from our own cache directory (the broker's data directory, which
    // no one else writes), under a name keyed by the wasm's SHA-256 and this engine's
    // fingerprint, written by `ModuleCache::store` from `Module::serialize`, and the caller
    // has just checked the SHA-256 trailer `store` appended, so a torn, truncated or
    // bit-flipped file never reaches this call.
    unsafe { Module::deserialize(engine, artifact) }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_must_match() {
        let mut file = b"artifact".to_vec();
        file.extend_from_slice(&sha256(b"artifact"));
        assert_eq!(verified_artifact(&file), Some(&b"artifact"[..]));
        file[0] ^= 1;
        assert_eq!(verified_artifact(&file), None);
        assert_eq!(verified_artifact(b"short"), None);
    }
}
