//! ReadDoS: a handler that reads whatever path the client names.
//!
//! **Crate:** std (`std::fs::read`). **Issue:** directory traversal, the most
//! common EHP-capable vulnerability in the npm study of Davis et al. (266 of
//! 403): a handler that serves a client-named file can be pointed at
//! * a huge file: the read costs time and memory linear in its size (this is
//!   what [`payload`] builds, as a sparse file of n bytes);
//! * `/dev/zero` ([`DEV_ZERO`]): the read never reaches end of file and
//!   allocates without bound until the process runs out of memory;
//! * a FIFO with no writer ([`make_fifo`]): `open` blocks forever, holding a
//!   thread while using no CPU at all.
//!
//! **Growth:** linear in n for a regular file; unbounded for the other two.
//! The handler caps nothing: it is the vulnerable pattern.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::AttackError;

/// A path whose read never ends and allocates without bound.
pub const DEV_ZERO: &str = "/dev/zero";

/// The directory under [`std::env::temp_dir`] that holds payload files.
pub const DIR_NAME: &str = "curfew-attacks";

/// The path of a regular file of exactly `n` bytes (zeros), created on first
/// use as a sparse file under `temp_dir()/curfew-attacks/`, so even a huge one
/// costs no disk space and no time to make.
///
/// # Panics
///
/// If the file cannot be created (for example, the temporary directory is not
/// writable).
pub fn payload(n: usize) -> Vec<u8> {
    let path = sparse_file(n).unwrap_or_else(|e| panic!("creating a {n}-byte payload file: {e}"));
    path.into_os_string().into_encoded_bytes()
}

/// The path of a sparse file of `n` bytes under `temp_dir()/curfew-attacks/`,
/// created if missing.
pub fn sparse_file(n: usize) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(DIR_NAME);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("read-{n}.bin"));
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == n as u64) {
        return Ok(path);
    }
    // Build under a private name and rename, so a concurrent reader never sees
    // a half-made file.
    let tmp = dir.join(format!("read-{n}.bin.{}.{}", std::process::id(), unique()));
    let file = std::fs::File::create(&tmp)?;
    file.set_len(n as u64)?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Creates a FIFO (named pipe) in `dir` that nobody writes to, and returns
/// its path. Reading it with [`handle`] blocks forever in `open`: the
/// ReadDoS that costs no CPU.
///
/// Each call makes a new FIFO; the caller removes it when done.
pub fn make_fifo(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("curfew-fifo-{}-{}", std::process::id(), unique()));
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(path)
}

fn unique() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Reads the whole file named by the body (a path, as raw bytes) and reports
/// how many bytes it read.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let path = Path::new(OsStr::from_bytes(body));
    let data = std::fs::read(path).map_err(|e| {
        AttackError::with_source("read-path", format!("cannot read {}", path.display()), e)
    })?;
    Ok(format!("read {} bytes from {}", data.len(), path.display()))
}
