//! Task code kept on disk (`code_cache:`): compiled components, so a restarted server loads
//! in milliseconds what took seconds to compile, and at an edge the wasm it fetched from a
//! region, so a restart fetches nothing it had.
//!
//! Files are named by what they hold: `<digest>.wasm` for code (checked against its name when
//! read), `<digest>-<engine>.cwasm` for a component compiled by an engine whose settings
//! hash to `<engine>` ([`wasmtime::Engine::precompile_compatibility_hash`]), with a
//! `<digest>-<engine>.sum` beside it holding the BLAKE3 of the compiled bytes (hashed over a
//! memory map, on every core: a 37 MB artifact in milliseconds, where reading it into memory
//! and SHA-256 took 40 ms). Loading a
//! compiled component maps native code and runs it unchecked, so one whose sum does not
//! hold (a torn write, a flipped bit, a file replaced by hand) is deleted and compiled again,
//! never loaded. Every file is written to a temporary name and renamed into place: a file
//! that is mapped is never changed under its reader. The folder is bounded in bytes; the
//! least recently used files go first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The folder and its byte bound.
pub struct CodeStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Hex SHA-256 of the engine's compatibility hash: artifacts of another engine's
    /// settings (or another Wasmtime) have another name and are never tried.
    engine: String,
    /// One eviction at a time.
    evicting: Mutex<()>,
}

impl std::fmt::Debug for CodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeStore")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Feeds what `Hash` writes into SHA-256, whose output (unlike `DefaultHasher`'s) is the
/// same for every build of Poplar.
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `digest` is a hex SHA-256 (a file name made of it stays in the folder).
pub fn is_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl CodeStore {
    /// Opens (creating) `dir` for components compiled by `engine`.
    pub fn open(dir: &Path, max_bytes: u64, engine: &Engine) -> std::io::Result<CodeStore> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        Ok(CodeStore {
            dir: dir.to_path_buf(),
            max_bytes,
            engine: hex(&hasher.0.finalize())[..16].to_string(),
            evicting: Mutex::new(()),
        })
    }

    fn compiled_paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}-{}", self.engine);
        let dir = &self.dir;
        (
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.sum")),
        )
    }

    /// The component compiled from the code `digest`, if one is kept and whole. One that
    /// is not whole is deleted (and said so): the caller compiles the code again.
    pub fn compiled(&self, engine: &Engine, digest: &str) -> Option<Component> {
        if !is_digest(digest) {
            return None;
        }
        let (artifact, sum) = self.compiled_paths(digest);
        let expected = std::fs::read_to_string(&sum).ok()?;
        let found = match checksum_of(&artifact) {
            Ok(found) => found,
            Err(e) => {
                log::warn!("compiled code {} unreadable: {e}", artifact.display());
                self.discard(&[&artifact, &sum]);
                return None;
            }
        };
        if found != expected.trim() {
            log::warn!(
                "compiled code {} does not match its checksum: discarded, compiling again",
                artifact.display()
            );
            self.discard(&[&artifact, &sum]);
            return None;
        }
        // SAFETY: the file is the exact output of `Component::serialize` by an engine of
        // these settings (its name says which, its checksum that it is whole), written by
        // this store under a temporary name and renamed, so it never changes while mapped.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => {
                touch(&artifact);
                Some(component)
            }
            Err(e) => {
                log::warn!(
                    "compiled code {} cannot be loaded ({e:#}): discarded",
                    artifact.display()
                );
                self.discard(&[&artifact, &sum]);
                None
            }
        }
    }

    /// Keeps `component`, compiled from the code `digest`.
    pub fn keep_compiled(&self, digest: &str, component: &Component) {
        if !is_digest(digest) {
            return;
        }
        let bytes = match component.serialize() {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("cannot serialize compiled code {digest}: {e:#}");
                return;
            }
        };
        let (artifact, sum) = self.compiled_paths(digest);
        // The sum goes last: an artifact without one is never loaded.
        let checksum = format!("blake3:{}", blake3::hash(&bytes).to_hex());
        let written = write_atomically(&artifact, &bytes)
            .and_then(|()| write_atomically(&sum, checksum.as_bytes()));
        match written {
            Ok(()) => self.evict(),
            Err(e) => log::warn!("cannot keep compiled code in {}: {e}", self.dir.display()),
        }
    }

    /// The code `digest`, if it is kept and matches its digest.
    pub fn code(&self, digest: &str) -> Option<Vec<u8>> {
        if !is_digest(digest) {
            return None;
        }
        let path = self.dir.join(format!("{digest}.wasm"));
        let bytes = std::fs::read(&path).ok()?;
        if hex(&Sha256::digest(&bytes)) != digest {
            log::warn!("{} does not match its digest: discarded", path.display());
            self.discard(&[&path]);
            return None;
        }
        touch(&path);
        Some(bytes)
    }

    /// Keeps `code`, whose digest the caller checked.
    pub fn keep_code(&self, digest: &str, code: &[u8]) {
        if !is_digest(digest) {
            return;
        }
        match write_atomically(&self.dir.join(format!("{digest}.wasm")), code) {
            Ok(()) => self.evict(),
            Err(e) => log::warn!("cannot keep code in {}: {e}", self.dir.display()),
        }
    }

    /// Bytes of the files kept now.
    pub fn bytes(&self) -> u64 {
        self.files().iter().map(|f| f.2).sum()
    }

    fn files(&self) -> Vec<(SystemTime, PathBuf, u64)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(|m| m.is_file())?;
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                // A temporary file being written now is not the evictor's (one a crash
                // left behind is, after a minute).
                let writing = e.file_name().to_string_lossy().starts_with('.')
                    && used.elapsed().is_ok_and(|age| age.as_secs() < 60);
                (!writing).then(|| (used, e.path(), meta.len()))
            })
            .collect()
    }

    /// Deletes the least recently used files until the folder is within its bound. A file
    /// mapped by a loaded component stays mapped after its name is gone.
    fn evict(&self) {
        let _one = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        files.sort();
        for (_, path, len) in files {
            if total <= self.max_bytes {
                break;
            }
            // A compiled file's sum goes with it.
            let sum = path.with_extension("sum");
            let extra = match path.extension().is_some_and(|e| e == "cwasm") {
                true => std::fs::metadata(&sum).map_or(0, |m| m.len()),
                false => 0,
            };
            log::info!("code cache over its bound: {} removed", path.display());
            self.discard(&[&path, &sum]);
            total = total.saturating_sub(len + extra);
        }
    }

    fn discard(&self, paths: &[&Path]) {
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Files at least this large are hashed on the rayon pool, smaller ones on this thread. The
/// pool's threads spin (`sched_yield`) for a while after each job: at start-up, beside
/// the listeners being set up on a 2-core machine, that cost `hello`'s first answer more
/// than hashing its 1 MB artifact takes (docs/BENCHMARKS.md).
const HASH_ON_POOL: u64 = 16 << 20;

/// `blake3:<hex>` of a file's bytes, hashed over a memory map.
fn checksum_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    if std::fs::metadata(path)?.len() >= HASH_ON_POOL {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_mmap(path)?;
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// Marks a file used now, for the LRU order.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it to `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    /// The smallest component: `(component)`.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn a_compiled_component_is_kept_and_a_damaged_one_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let store = CodeStore::open(dir.path(), 1 << 30, &engine).unwrap();
        let digest = crate::wasm::digest(EMPTY_COMPONENT);
        assert!(store.compiled(&engine, &digest).is_none());
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        store.keep_compiled(&digest, &component);
        assert!(store.compiled(&engine, &digest).is_some());

        // One flipped byte: the sum no longer holds, and both files go.
        let (artifact, sum) = store.compiled_paths(&digest);
        let mut bytes = std::fs::read(&artifact).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&artifact, bytes).unwrap();
        assert!(store.compiled(&engine, &digest).is_none());
        assert!(!artifact.exists() && !sum.exists());
    }

    #[test]
    fn code_is_checked_against_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::open(dir.path(), 1 << 30, &engine()).unwrap();
        let digest = crate::wasm::digest(b"code");
        store.keep_code(&digest, b"code");
        assert_eq!(store.code(&digest).as_deref(), Some(&b"code"[..]));
        std::fs::write(dir.path().join(format!("{digest}.wasm")), b"other").unwrap();
        assert_eq!(store.code(&digest), None);
        assert_eq!(store.code("../../etc/passwd"), None);
    }

    #[test]
    fn the_least_recently_used_files_go_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::open(dir.path(), 2500, &engine()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let digests: Vec<String> = blobs.iter().map(|b| crate::wasm::digest(b)).collect();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        store.keep_code(&digests[0], &blobs[0]);
        store.keep_code(&digests[1], &blobs[1]);
        // The first is used after the second was written: the second is the older.
        for (i, age) in [(0, 10), (1, 20)] {
            let path = dir.path().join(format!("{}.wasm", digests[i]));
            let file = std::fs::File::options().append(true).open(path).unwrap();
            file.set_modified(old + std::time::Duration::from_secs(60 - age))
                .unwrap();
        }
        store.keep_code(&digests[2], &blobs[2]);
        assert!(store.bytes() <= 2500);
        assert!(store.code(&digests[0]).is_some());
        assert!(store.code(&digests[1]).is_none());
        assert!(store.code(&digests[2]).is_some());
    }
}
